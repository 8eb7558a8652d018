"""GLM's autoregressive blank infilling (Du et al. 2022).

Spans with Poisson(3) lengths (at least 1), about 15% of the tokens, are each replaced by one [MASK] in part A;
part B lists the spans in random order, each opened by [sop] and predicting its own tokens and then [eop]:

  A:  x1 [MASK] x4 [MASK] x7           positions 0 1 2 3 4, block positions 0
  B:  [sop] x5 x6  [sop] x2 x3          positions of their [MASK] (3 3 3, 1 1 1), block positions 1 2 3
  targets (B):  x5 x6 [eop]  x2 x3 [eop]

A attends bidirectionally within A; B sees all of A and B causally (the model's context_length = len(A)).
Each packed row is one example; the loss is over part B.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from zoo.data import tokenizer as tk
from zoo.objectives.base import Batch, TargetObjective


@dataclasses.dataclass
class BlankInfilling(TargetObjective):
  mask_ratio: float = 0.15  # fraction of tokens in spans
  poisson_lambda: float = 3.0  # span lengths ~ Poisson(lambda), at least 1

  name = 'blank_infilling'
  kinds = ('blank_infilling',)

  def max_spans(self, seq_len: int) -> int:
    return math.ceil(1.5 * self.mask_ratio * seq_len / self.poisson_lambda) + 1

  def spans(self, n: int, rng, max_spans: int) -> list[tuple[int, int]]:
    """Non-overlapping, non-adjacent (start, length) spans covering about mask_ratio of n tokens."""
    budget = max(1, int(round(self.mask_ratio * n))) if n > 2 else 0
    taken = np.zeros(n + 2, bool)  # padded by one on each side: spans keep a gap between them
    out, covered = [], 0
    for _ in range(4 * n):
      if covered >= budget or len(out) >= max_spans:
        break
      length = 0
      while length < 1:
        length = int(rng.poisson(self.poisson_lambda))
      length = min(length, budget - covered) if out else min(length, max(budget, 1))
      start = int(rng.integers(n - length + 1))
      if taken[start:start + length + 2].any():
        continue
      taken[start + 1:start + length + 1] = True
      out.append((start, length))
      covered += length
    return sorted(out)

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg = batch['tokens'], batch['segment_ids']
    b, t = tokens.shape
    k_max = self.max_spans(t)
    out = {k: np.zeros((b, t), np.int32) for k in ('tokens', 'positions', 'block_positions', 'targets')}
    weights = np.zeros((b, t), np.float32)
    context = np.zeros((b,), np.int32)
    for row in range(b):
      x = tokens[row][seg[row] > 0][:t - 2 * k_max]
      spans = self.spans(len(x), rng, k_max)
      a, span_pos, prev = [], [], 0
      for start, length in spans:
        a.extend(x[prev:start])
        span_pos.append(len(a))
        a.append(tk.MASK)
        prev = start + length
      a.extend(x[prev:])
      n_a = len(a)
      toks, pos, block, tgt = list(a), list(range(n_a)), [0] * n_a, [0] * n_a
      for j in rng.permutation(len(spans)):
        start, length = spans[j]
        piece = list(x[start:start + length])
        toks += [tk.SOP] + piece
        tgt += piece + [tk.EOP]
        pos += [span_pos[j]] * (length + 1)
        block += list(range(1, length + 2))
      n = len(toks)
      out['tokens'][row, :n] = toks
      out['positions'][row, :n] = pos
      out['block_positions'][row, :n] = block
      out['targets'][row, :n] = tgt
      weights[row, n_a:n] = 1.0
      context[row] = n_a
    out['segment_ids'] = (np.arange(t)[None] < (context + weights.sum(1).astype(np.int32))[:, None]).astype(
        np.int32)
    return {**out, 'context_length': context, 'weights': weights}

  def inputs(self, example):
    return {k: example[k] for k in ('tokens', 'positions', 'block_positions', 'context_length', 'segment_ids')}

"""GLM's autoregressive blank infilling (Du et al. 2022).

Spans with Poisson(3) lengths (at least 1), about 15% of the tokens, are each replaced by one [MASK] in part A;
part B lists the spans in random order, each opened by [sop] and predicting its own tokens and then [eop]:

  A:  x1 [MASK] x4 [MASK] x7           positions 0 1 2 3 4, block positions 0
  B:  [sop] x5 x6  [sop] x2 x3          positions of their [MASK] (3 3 3, 1 1 1), block positions 1 2 3
  targets (B):  x5 x6 [eop]  x2 x3 [eop]

A attends bidirectionally within A; B sees all of A and B causally (the model's context_length = len(A)).
A packed row holds several documents, each its own example (as if it were alone in the row): the row
is every document's part A, then every document's part B (context_length: all the parts A), with segment ids
naming each token's document (zoo.models.glm.training_mask). A document's part A sees only its own part A; its
spans see its own part A and, causally, its own spans; positions count from 0 in each document, and mask_ratio
applies per document. At most max_spans(seq_len) spans a row (a document past them keeps its text in part A),
so a row of input_length(seq_len) tokens of text (what the pipeline packs) always fits: none is dropped.
The loss is over part B.
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

  def input_length(self, seq_len: int) -> int:
    """Tokens of text a row may hold: part B adds a [sop] and an [eop] per span, at most max_spans a row."""
    n = seq_len - 2 * self.max_spans(seq_len)
    if n < 1:
      raise ValueError(f'train.seq_len={seq_len} leaves no room for text once blank infilling adds its '
                       f'{self.max_spans(seq_len)} spans\' [sop] and [eop]: use a longer seq_len')
    return n

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg = batch['tokens'], batch['segment_ids']
    b, t = tokens.shape
    k_max, room = self.max_spans(t), self.input_length(t)
    out = {k: np.zeros((b, t), np.int32)
           for k in ('tokens', 'positions', 'block_positions', 'targets', 'segment_ids')}
    weights = np.zeros((b, t), np.float32)
    context = np.zeros((b,), np.int32)
    for row in range(b):
      docs = [tokens[row][seg[row] == s] for s in np.unique(seg[row][seg[row] > 0])]
      if sum(len(x) for x in docs) > room:
        raise ValueError(f'a row of {sum(len(x) for x in docs)} tokens: blank infilling takes at most '
                         f'input_length({t})={room} (the pipeline packs rows to it), so that part B fits')
      toks, pos, doc_of = [], [], []  # part A of every document, then part B
      part_b, left = [], k_max
      for d, x in enumerate(docs, 1):  # each document its own example: positions from 0, its own spans
        spans = self.spans(len(x), rng, left)
        left -= len(spans)
        a, span_pos, prev = [], [], 0
        for start, length in spans:
          a.extend(x[prev:start])
          span_pos.append(len(a))
          a.append(tk.MASK)
          prev = start + length
        a.extend(x[prev:])
        toks += a
        pos += range(len(a))
        doc_of += [d] * len(a)
        part_b += [(d, span_pos[j], list(x[spans[j][0]:sum(spans[j])])) for j in rng.permutation(len(spans))]
      n_a = len(toks)
      block, tgt = [0] * n_a, [0] * n_a
      for d, at, piece in part_b:
        toks += [tk.SOP] + piece
        tgt += piece + [tk.EOP]
        pos += [at] * (len(piece) + 1)
        block += range(1, len(piece) + 2)
        doc_of += [d] * (len(piece) + 1)
      n = len(toks)
      for k, v in (('tokens', toks), ('positions', pos), ('block_positions', block), ('targets', tgt),
                   ('segment_ids', doc_of)):
        out[k][row, :n] = v
      weights[row, n_a:n] = 1.0
      context[row] = n_a
    return {**out, 'context_length': context, 'weights': weights}

  def inputs(self, example):
    return {k: example[k] for k in ('tokens', 'positions', 'block_positions', 'context_length', 'segment_ids')}

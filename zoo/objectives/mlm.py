"""Masked language modelling (BERT): 15% of the maskable tokens are chosen; of those 80% become [MASK],
10% a random token and 10% stay; the loss is over the chosen positions only.

Maskable: real tokens (segment > 0) that are not special tokens. The mask is drawn afresh each time a batch
is drawn (dynamic masking, as RoBERTa), from a generator seeded by (seed, step): a resumed run draws the same.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from zoo.data import tokenizer as tk
from zoo.objectives.base import Batch, Objective, cross_entropy


@dataclasses.dataclass
class Mlm(Objective):
  mask_rate: float = 0.15  # fraction of maskable tokens chosen for prediction
  mask_token_rate: float = 0.8  # of the chosen: replaced by [MASK]
  random_token_rate: float = 0.1  # of the chosen: replaced by a random (non-special) token; the rest stay

  name = 'mlm'

  def max_predictions(self, seq_len: int) -> int:
    return max(1, math.ceil(self.mask_rate * seq_len))

  def choose(self, maskable: np.ndarray, rng: np.random.Generator, seq_len: int) -> list[np.ndarray]:
    """Positions chosen in each row: round(mask_rate * maskable) of them, uniformly (BERT)."""
    limit = self.max_predictions(seq_len)
    chosen = []
    for row in maskable:
      idx = np.flatnonzero(row)
      n = min(limit, int(round(self.mask_rate * len(idx))))
      if len(idx) and n == 0 and rng.random() < self.mask_rate * len(idx):
        n = 1  # short rows: keep the expected rate
      chosen.append(np.sort(rng.choice(idx, n, replace=False)) if n else idx[:0])
    return chosen

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg = batch['tokens'], batch['segment_ids']
    b, t = tokens.shape
    maskable = (seg > 0) & (tokens >= self.num_special)
    p = self.max_predictions(t)
    inputs = tokens.copy()
    mlm_positions = np.zeros((b, p), np.int32)
    mlm_labels = np.zeros((b, p), np.int32)
    mlm_weights = np.zeros((b, p), np.float32)
    for row, chosen in enumerate(self.choose(maskable, rng, t)):
      n = len(chosen)
      u = rng.random(n)
      to_mask = chosen[u < self.mask_token_rate]
      to_random = chosen[(u >= self.mask_token_rate) & (u < self.mask_token_rate + self.random_token_rate)]
      inputs[row, to_mask] = tk.MASK
      inputs[row, to_random] = rng.integers(self.num_special, self.vocab_size, len(to_random))
      mlm_positions[row, :n] = chosen
      mlm_labels[row, :n] = tokens[row, chosen]
      mlm_weights[row, :n] = 1.0
    return {'tokens': inputs, 'segment_ids': seg, 'positions': batch['positions'],
            'mlm_positions': mlm_positions, 'mlm_labels': mlm_labels, 'mlm_weights': mlm_weights}

  def inputs(self, example):
    return {'tokens': example['tokens'], 'segment_ids': example['segment_ids'],
            'positions': example['positions'], 'mlm_positions': example['mlm_positions']}

  def terms(self, outputs, example):
    return {'mlm': cross_entropy(outputs['mlm_logits'], example['mlm_labels'], example['mlm_weights'])}

  def counts(self, example):
    return {'mlm': example['mlm_weights'].sum()}

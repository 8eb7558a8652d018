"""Causal language modelling: predict token t+1 from tokens <= t, inside each packed document."""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo.objectives.base import Batch, TargetObjective


@dataclasses.dataclass
class CausalLm(TargetObjective):
  """Next-token loss. The last token of a document (and of a row) has no target; padding has none."""
  name = 'causal_lm'
  kinds = ('decoder', 'blank_infilling')
  any_tokenizer = True

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    del rng
    tokens, seg = batch['tokens'], batch['segment_ids']
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    weights = np.zeros(tokens.shape, np.float32)
    weights[:, :-1] = (seg[:, :-1] > 0) & (seg[:, 1:] == seg[:, :-1])
    return {'tokens': tokens, 'segment_ids': seg, 'positions': batch['positions'], 'targets': targets,
            'weights': weights}

  def inputs(self, example):
    return {'tokens': example['tokens'], 'segment_ids': example['segment_ids'],
            'positions': example['positions']}

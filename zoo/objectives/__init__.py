"""Pretraining objectives by name: each turns a batch of token ids into an example and a loss.

>>> obj = make('causal_lm', vocab_size=100, num_special=9)
>>> ex = obj.example(obj.dummy_batch(2, 8), np.random.default_rng(0))
>>> ex['targets'].shape, float(ex['weights'].sum())
((2, 8), 14.0)
"""
from __future__ import annotations

import numpy as np

from zoo import registry
from zoo.objectives.base import Objective, cross_entropy
from zoo.objectives.blank_infilling import BlankInfilling
from zoo.objectives.causal_lm import CausalLm
from zoo.objectives.denoising import Denoising
from zoo.objectives.mlm import Mlm
from zoo.objectives.rtd import Rtd
from zoo.objectives.sentence_pairs import MlmNsp, MlmSop
from zoo.objectives.span_corruption import SpanCorruption

OBJECTIVES: dict[str, type[Objective]] = {
    'blank_infilling': BlankInfilling,  # GLM
    'causal_lm': CausalLm,
    'denoising': Denoising,  # BART: the decoder reconstructs a corrupted document
    'mlm': Mlm,
    'rtd': Rtd,  # ELECTRA: MLM generator + replaced-token detection
    'nsp': MlmNsp,  # MLM + next-sentence prediction (BERT)
    'sop': MlmSop,  # MLM + sentence-order prediction (ALBERT)
    'span_corruption': SpanCorruption,
}


def make(name: str, **fields) -> Objective:
  """The objective `name` with its fields (vocab_size and num_special, plus its own options)."""
  return registry.make(OBJECTIVES, name, 'objective', **fields)

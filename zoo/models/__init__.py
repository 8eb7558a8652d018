"""Model families by name, each with its size table.

>>> model = get_model('gpt', 'tiny', dropout_rate=0.0)
>>> count_params(model) > 0
True
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np

from zoo.models import albert, bert, encdec, glm, gpt, rnn


class Family(NamedTuple):
  cls: type
  sizes: dict
  published: dict  # size -> published parameter count
  doc: str


FAMILIES: dict[str, Family] = {
    'bert': Family(bert.Bert, bert.SIZES, bert.PUBLISHED_PARAMS, 'BERT encoder, MLM + NSP heads'),
    'albert': Family(albert.Albert, albert.SIZES, albert.PUBLISHED_PARAMS,
                     'ALBERT: factorized embeddings, shared layers, MLM + SOP heads'),
    'gpt': Family(gpt.Gpt, gpt.SIZES, gpt.PUBLISHED_PARAMS, 'GPT-2 causal decoder'),
    't5': Family(encdec.EncoderDecoder, encdec.T5_SIZES, encdec.T5_PUBLISHED_PARAMS,
                 'T5 encoder-decoder (relative bias, RMSNorm, pre-LN)'),
    'bart': Family(encdec.EncoderDecoder, encdec.BART_SIZES, encdec.BART_PUBLISHED_PARAMS,
                   'BART encoder-decoder (learned positions, post-LN)'),
    'glm': Family(glm.Glm, glm.SIZES, glm.PUBLISHED_PARAMS, 'GLM: blank infilling with 2-D positions'),
    'rnn_lm': Family(rnn.RnnLm, rnn.LM_SIZES, rnn.LM_PUBLISHED_PARAMS, 'RNN / GRU / LSTM language model'),
    'rnn_seq2seq': Family(rnn.RnnSeq2Seq, rnn.SEQ2SEQ_SIZES, {}, 'RNN encoder-decoder with attention'),
}


def get_model(family: str, size: str = 'tiny', **overrides) -> nn.Module:
  """The model of `family` at a named size, with any field overridden (e.g. dtype, dropout_rate)."""
  if family not in FAMILIES:
    raise ValueError(f'unknown model family {family!r}; choose one of {sorted(FAMILIES)}')
  fam = FAMILIES[family]
  if size not in fam.sizes:
    raise ValueError(f'unknown size {size!r} for {family}; choose one of {list(fam.sizes)}')
  fields = {f.name for f in dataclasses.fields(fam.cls)} - {'parent', 'name'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'{family} has no field(s) {unknown}; its fields are {sorted(fields)}')
  return fam.cls(**{**fam.sizes[size], **overrides})


def abstract_params(model: nn.Module, batch_size: int = 1, length: int = 16):
  """Parameter shapes from `jax.eval_shape(model.init)`: no memory spent, no compute."""
  batch = model.example_batch(batch_size, length)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), **batch))['params']


def count_params(model: nn.Module) -> int:
  """Number of parameters, from shapes only."""
  leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(model)))
  return int(sum(np.prod(leaf.shape) for leaf in leaves))


def scanned(model: nn.Module) -> nn.Module:
  """The same model with its layers under nn.scan (faster to trace: for counting big sizes)."""
  if hasattr(model, 'scan_layers') and not getattr(model, 'share_layers', False):
    return model.clone(scan_layers=True)
  return model


def table() -> list[dict]:
  """Every family and size with its parameter count (and the published count where there is one)."""
  rows = []
  for name, fam in FAMILIES.items():
    for size in fam.sizes:
      n = count_params(scanned(get_model(name, size)))
      row = dict(family=name, size=size, params=n)
      if size in fam.published:
        row['published'] = fam.published[size]
      rows.append(row)
  return rows

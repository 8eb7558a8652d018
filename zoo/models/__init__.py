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

from zoo.models import albert, bert, electra, encdec, glm, gpt, rnn


# What a family's model does with a sequence: how it is trained, fine-tuned and decoded follows from this.
ENCODER = 'encoder'  # bidirectional over the input (MLM heads, task heads); does not generate
DECODER = 'decoder'  # causal over one stream: continues a prompt
ENCODER_DECODER = 'encoder_decoder'  # reads a source, writes a target
BLANK_INFILLING = 'blank_infilling'  # bidirectional context, causal spans after it (GLM)
KINDS = (ENCODER, DECODER, ENCODER_DECODER, BLANK_INFILLING)


class Family(NamedTuple):
  cls: type
  sizes: dict
  published: dict  # size -> published parameter count
  doc: str
  kind: str  # one of KINDS
  recurrent: bool = False  # RNN cells instead of attention and MLP layers (no adapters, no attention masks)
  counted: tuple = ()  # (field, value) pairs of the model `published` counts (ELECTRA: the discriminator alone)
  objectives: tuple = ()  # the only pretraining objectives it takes (empty: any of its kind's)


FAMILIES: dict[str, Family] = {
    'bert': Family(bert.Bert, bert.SIZES, bert.PUBLISHED_PARAMS, 'BERT encoder, MLM + NSP heads', ENCODER),
    'roberta': Family(bert.Bert, bert.ROBERTA_SIZES, {}, 'RoBERTa: BERT with positions after the padding id, one '
                      'token type; dynamic MLM, no NSP', ENCODER),
    'albert': Family(albert.Albert, albert.SIZES, albert.PUBLISHED_PARAMS,
                     'ALBERT: factorized embeddings, shared layers, MLM + SOP heads', ENCODER),
    'electra': Family(electra.Electra, electra.SIZES, electra.PUBLISHED_PARAMS,
                      'ELECTRA: MLM generator + replaced-token-detection discriminator (shared embeddings)', ENCODER,
                      counted=(('head', 'discriminator'),), objectives=('rtd',)),
    'gpt': Family(gpt.Gpt, gpt.SIZES, gpt.PUBLISHED_PARAMS, 'GPT-2 causal decoder', DECODER),
    't5': Family(encdec.EncoderDecoder, encdec.T5_SIZES, encdec.T5_PUBLISHED_PARAMS,
                 'T5 encoder-decoder (relative bias, RMSNorm, pre-LN)', ENCODER_DECODER),
    'bart': Family(encdec.EncoderDecoder, encdec.BART_SIZES, encdec.BART_PUBLISHED_PARAMS,
                   'BART encoder-decoder (learned positions, post-LN)', ENCODER_DECODER),
    'transformer': Family(encdec.EncoderDecoder, encdec.TRANSFORMER_SIZES, encdec.TRANSFORMER_PUBLISHED_PARAMS,
                          'The Transformer (Vaswani et al.): sinusoidal positions, scaled embeddings, post-LN',
                          ENCODER_DECODER),
    'glm': Family(glm.Glm, glm.SIZES, glm.PUBLISHED_PARAMS, 'GLM: blank infilling with 2-D positions',
                  BLANK_INFILLING),
    'rnn_lm': Family(rnn.RnnLm, rnn.LM_SIZES, rnn.LM_PUBLISHED_PARAMS, 'RNN / GRU / LSTM language model', DECODER,
                     recurrent=True),
    'rnn_seq2seq': Family(rnn.RnnSeq2Seq, rnn.SEQ2SEQ_SIZES, {}, 'RNN encoder-decoder with attention',
                          ENCODER_DECODER, recurrent=True),
}


def get_family(name: str) -> Family:
  """The registry entry of model family `name`, or an error naming the families there are."""
  if name not in FAMILIES:
    raise ValueError(f'model.family={name!r} is not a family; choose one of {sorted(FAMILIES)}')
  return FAMILIES[name]


def kind(name: str) -> str:
  """'encoder', 'decoder', 'encoder_decoder' or 'blank_infilling'.

  >>> kind('t5'), kind('rnn_lm'), kind('glm')
  ('encoder_decoder', 'decoder', 'blank_infilling')
  """
  return get_family(name).kind


def is_encoder_decoder(name: str) -> bool:
  return get_family(name).kind == ENCODER_DECODER


def generates(name: str) -> bool:
  """Whether the family decodes text (everything but the encoders)."""
  return get_family(name).kind != ENCODER


def families_of(*kinds: str, recurrent: bool | None = None) -> tuple[str, ...]:
  """The families of the given kinds (and, if given, recurrent or not), in registry order.

  >>> families_of(ENCODER_DECODER, recurrent=False)
  ('t5', 'bart', 'transformer')
  """
  return tuple(n for n, f in FAMILIES.items()
               if f.kind in kinds and (recurrent is None or f.recurrent == recurrent))


def get_model(family: str, size: str = 'tiny', **overrides) -> nn.Module:
  """The model of `family` at a named size, with any field overridden (e.g. dtype, dropout_rate)."""
  fam = get_family(family)
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
  """Number of parameters, from shapes only: traced on 2 tokens (no parameter's shape depends on the length), and
  a model that shares its layers (ALBERT) one layer deep; the size table's 40 models count in 4 s instead of 10."""
  if getattr(model, 'share_layers', False):
    model = model.clone(num_layers=1)
  leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_params(model, length=2)))
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
      n = count_params(scanned(get_model(name, size, **dict(fam.counted))))
      row = dict(family=name, size=size, params=n, **dict(fam.counted))
      if size in fam.published:
        row['published'] = fam.published[size]
      rows.append(row)
  return rows

"""What every part of zoo.convert shares: the errors, the `Converter` a family module fills in, the helpers its
config and weight mappings are written with, and params-tree helpers (plain numpy trees, layers stacked or
unrolled)."""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, NamedTuple

import numpy as np
from flax import traverse_util


class ConversionError(ValueError):
  """A checkpoint or config zoo cannot convert faithfully (the message names the field and what to do)."""


class UnsafeCheckpointError(ConversionError):
  """A PyTorch pickle that holds objects other than tensors: refused, never unpickled."""


# HF activation name (transformers' ACT2FN) -> zoo activation. 'gelu' is the exact (erf) GELU in both.
HF_ACT = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
          'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
ZOO_ACT = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}


class Converter(NamedTuple):
  """One family's conversion, what its module (bert.py, albert.py, gpt.py, t5.py, bart.py) defines as CONVERTER.

  A mapping is a list of (zoo path, HF name, kind, group): kind 'T' transposes (torch Linear [out, in] <->
  flax kernel [in, out]), 'copy' does not (embeddings, norms, biases, GPT-2's Conv1D [in, out]). group None is
  required; a named group (pooler, nsp, sop, mlm, lm_head) may be absent (its zoo parameters are then initialised).
  """
  family: str  # the zoo family
  model_types: tuple[str, ...]  # HF config model_type values it imports
  architectures: tuple[str, ...]  # HF architectures it imports (the first is what export writes)
  config_to_fields: Callable[[dict, dict], dict]  # (HF config, HF weights) -> zoo model fields
  fields_to_config: Callable[[dict], dict]  # zoo model fields -> HF config (ConversionError if inexpressible)
  mapping: Callable[..., list]  # (fields, HF weights or None) -> [(zoo path, HF name, kind, group)]
  ignored: tuple[re.Pattern, ...] = ()  # HF names that carry nothing zoo needs (buffers)
  # import: HF names as the mapping has them (legacy names, fused tensors split)
  rename_hf: Callable[[dict], dict] = lambda weights: weights
  # import: check the copies of tied weights a checkpoint may carry, and consume them (in place)
  drop_tied: Callable[[dict, dict], None] = lambda weights, fields: None
  # import: the flat {zoo path: array} read through the mapping, adjusted
  after_import: Callable[[dict, dict], dict] = lambda flat, fields: flat
  # export: (flat zoo params, fields) as the mapping reads them
  before_export: Callable[[dict, dict], tuple] = lambda flat, fields: (flat, fields)
  # export: {HF name: array} adjusted (GPT-2's q, k, v fused)
  after_export: Callable[[dict], dict] = lambda out: out


# ----------------------------------------------------------------------------------------- config helpers

def get(config: dict, *names, default=None):
  """The first of `names` that config sets (not None), else default."""
  for name in names:
    if config.get(name) is not None:
      return config[name]
  return default


def require(config: dict, field: str, ok: bool, why: str) -> None:
  if not ok:
    raise ConversionError(f'config.json {field}={config.get(field)!r}: {why}')


def activation(config: dict, field: str) -> str:
  """The zoo activation of a HF activation field."""
  act = config.get(field)
  require(config, field, act in HF_ACT, f'zoo has no such activation; supported: {sorted(HF_ACT)}')
  return HF_ACT[act]


def check_stack(config: dict, decoder_ok: bool) -> None:
  """Refuse a decoder-only stack of an encoder family and cross-attention in a decoder-only model."""
  require(config, 'is_decoder', not config.get('is_decoder', False) or decoder_ok,
          'a decoder-only BERT / T5 stack is not supported')
  require(config, 'add_cross_attention', not config.get('add_cross_attention', False),
          'cross-attention layers in a decoder-only model are not supported')


def refuse(family: str, fields: dict, field: str, why: str):
  raise ConversionError(f'model.{field}={fields.get(field)!r}: {why}; HF {family} cannot express it')


def same(a, b) -> bool:
  """Both arrays present and equal (tied copies)."""
  return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


def model_fields(model) -> dict:
  """A zoo model's fields as JSON-serialisable values (dtype and adapters left out)."""
  skip = {'parent', 'name', 'dtype', 'adapters'}
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in skip}


def model_kwargs(fields: dict) -> dict:
  """Fields the model takes (without private bookkeeping keys such as T5's '_scale_head')."""
  return {k: v for k, v in fields.items() if not k.startswith('_')}


def closest_size(family: str, fields: dict) -> str:
  """The named size whose table matches the fields (for the record); 'tiny' when none does (every size field
  is overridden anyway)."""
  from zoo import models
  for size, table in models.FAMILIES[family].sizes.items():
    if all(fields.get(k) == v for k, v in table.items() if k not in ('vocab_size', 'max_len')):
      return size
  return 'tiny'


def drop_tied_decoder(weights: dict, embeddings, decoder: str, bias: str, family: str) -> None:
  """An MLM decoder a checkpoint may store (`decoder`.weight, `decoder`.bias) must be what zoo ties it to: the word
  `embeddings`, and the head's `bias` (filled from the decoder's where absent). Both are consumed."""
  dec = weights.pop(f'{decoder}.weight', None)
  if dec is not None and not same(dec, embeddings):
    raise ConversionError(f'{decoder}.weight differs from the word embeddings (an untied MLM decoder, '
                          f"tie_word_embeddings=False): zoo's {family} ties them")
  value = weights.pop(f'{decoder}.bias', None)
  if value is not None:
    if bias not in weights:
      weights[bias] = value
    elif not same(value, weights[bias]):
      raise ConversionError(f'{decoder}.bias differs from {bias}')


# ----------------------------------------------------------------------------------------- mapping helpers

def dense(zoo, hf, bias=True, kind='T', group=None) -> list:
  """Mapping entries of a dense layer: kernel <-> weight (transposed unless kind='copy') and bias."""
  out = [((*zoo, 'kernel'), f'{hf}.weight', kind, group)]
  if bias:
    out.append(((*zoo, 'bias'), f'{hf}.bias', 'copy', group))
  return out


def norm(zoo, hf, bias=True, group=None) -> list:
  """Mapping entries of a LayerNorm / RMSNorm: scale <-> weight, and bias."""
  out = [((*zoo, 'scale'), f'{hf}.weight', 'copy', group)]
  if bias:
    out.append(((*zoo, 'bias'), f'{hf}.bias', 'copy', group))
  return out


# ----------------------------------------------------------------------------------------- params trees

def plain_params(params) -> dict:
  """Any params tree (boxed or not, jax or numpy leaves) -> nested dicts of numpy arrays."""
  import flax.linen as nn
  import jax
  params = jax.device_get(nn.unbox(params))
  return traverse_util.unflatten_dict({p: np.asarray(v) for p, v in traverse_util.flatten_dict(params).items()})


def unstack_layers(tree, shared: bool = False):
  """Every {layers: stacked} in the tree (T5: under encoder/ and decoder/) -> {layers_0: ..., layers_1: ...}.
  shared=True (ALBERT's share_layers: 'layers' is one layer, not a stack) leaves the tree as it is."""
  from zoo.layers import transformer
  if shared or not isinstance(tree, dict):
    return tree
  tree = {k: v if k == 'layers' else unstack_layers(v) for k, v in tree.items()}
  return transformer.unstack_params(tree) if 'layers' in tree else tree


def stack_layers(tree):
  """Every unrolled {layers_0: t0, layers_1: t1, ...} -> {layers: stacked} (what scan_layers=True expects)."""
  from zoo.layers import transformer
  if not isinstance(tree, dict):
    return tree
  tree = {k: stack_layers(v) for k, v in tree.items()}
  return transformer.stack_params(tree) if 'layers_0' in tree else tree

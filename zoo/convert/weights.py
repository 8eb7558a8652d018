"""The weight mapping, through each family's Converter: HF tensors -> zoo params (every tensor placed, every
shape checked, missing heads initialised fresh) and zoo params -> the tensors `save_pretrained` writes."""
from __future__ import annotations

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from zoo.convert import common
from zoo.convert.common import ConversionError
from zoo.convert.registry import converter


def _unrolled(model):
  return model.clone(scan_layers=False) if getattr(model, 'scan_layers', False) else model


def _abstract_flat(model) -> dict:
  import flax.linen as nn
  from zoo import models
  return flatten_dict(nn.unbox(models.abstract_params(model, 1, 8)))


def _fresh_params(model) -> dict:
  import flax.linen as nn
  import jax
  batch = model.example_batch(1, 8)
  return flatten_dict(jax.device_get(nn.unbox(jax.jit(model.init)(jax.random.key(0), **batch)['params'])))


def _is_adapter(path) -> bool:
  return any('_lora_' in k or k.startswith('prefix') for k in path)


def hf_weights_to_params(family: str, fields: dict, weights: dict, model=None) -> tuple[dict, list[str]]:
  """HF tensors -> zoo params (nested dicts of float32 numpy arrays, unrolled layers unless `model` scans
  them). Returns (params, names of zoo parameters initialised fresh because the checkpoint lacks them).

  Every HF tensor must find its place: left-over names (a classification head, an unsupported variant) raise a
  ConversionError, as does a shape that does not match the config."""
  conv = converter(family)
  weights = conv.rename_hf(dict(weights))
  conv.drop_tied(weights, fields)
  flat = {}
  for zoo, hf, kind, group in conv.mapping(fields, weights):
    if hf not in weights:
      if group is None:
        raise ConversionError(f'the checkpoint has no {hf}, which a {family} model with this config.json needs')
      continue  # an optional head: initialised fresh below
    value = weights.pop(hf)
    flat[zoo] = np.ascontiguousarray(value.T if kind == 'T' else value, dtype=np.float32)
  flat = conv.after_import(flat, fields)
  left = sorted(k for k in weights if not any(p.search(k) for p in conv.ignored))
  if left:
    raise ConversionError(f'the checkpoint has {len(left)} tensor(s) zoo\'s {family} has no place for: '
                          f'{left[:8]}{" ..." if len(left) > 8 else ""}; a head or variant zoo does not support')
  if model is None:
    from zoo import models
    model = models.get_model(family, 'tiny', **common.model_kwargs(fields))
  expected = _abstract_flat(_unrolled(model))
  for path, value in flat.items():
    if path not in expected:
      raise ConversionError(f'zoo {family} has no parameter {"/".join(path)}: the zoo model and the mapping '
                            f'disagree (a zoo model change?)')
    if tuple(expected[path].shape) != value.shape:
      raise ConversionError(f'{"/".join(path)}: the checkpoint gives shape {value.shape}, the zoo model built '
                            f'from config.json wants {tuple(expected[path].shape)}')
  fresh = sorted(set(expected) - set(flat))
  if fresh:
    init = _fresh_params(_unrolled(model))
    for path in fresh:
      flat[path] = np.asarray(init[path], np.float32)
  params = unflatten_dict(flat)
  if getattr(model, 'scan_layers', False):
    params = common.stack_layers(params)
  return params, ['/'.join(p) for p in fresh if not _is_adapter(p)]


def params_to_hf_weights(family: str, model, params) -> dict[str, np.ndarray]:
  """zoo params -> {HF name: float32 array}, the tensors `save_pretrained` would write (tied copies left
  out: BERT's MLM decoder, GPT-2's and T5 v1.0's lm_head)."""
  conv = converter(family)
  flat = flatten_dict(common.unstack_layers(common.plain_params(params), getattr(model, 'share_layers', False)))
  flat, fields = conv.before_export(flat, common.model_fields(model))
  out = {}
  for zoo, hf, kind, _ in conv.mapping(fields):
    if zoo not in flat:
      raise ConversionError(f'params have no {"/".join(zoo)} (is this a {family} model?)')
    out[hf] = np.ascontiguousarray(flat[zoo].T if kind == 'T' else flat[zoo], dtype=np.float32)
  return conv.after_export(out)

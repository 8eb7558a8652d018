"""The zoo model directory: what `python -m zoo.convert import` writes and `load_zoo` / `zoo.load` read.

  zoo_model.json      {"format": "zoo-model", "family": ..., "fields": {model fields}, "source": ..., ...}
  params.safetensors  every parameter as float32, named by its path in the params tree joined with '/'
                      (e.g. 'layers_0/self_attention/query/kernel'; layers unrolled)
  hf_config.json      the HuggingFace config it came from (export reuses its token ids)
  hf_tokenizer/       the HF vocabulary files, copied unchanged (spiece.model, vocab.txt, vocab.json,
                      merges.txt, tokenizer.json, ...). `load_zoo_tokenizer(dir)` reads them as a
                      `zoo.data.hf_tokenizer.HFTokenizer` (the ids and special ids transformers gives; zoo's own
                      `zoo.data.tokenizer.Tokenizer` needs zoo's fixed special ids 0 [PAD] .. 8 [eop] and cannot).
"""
from __future__ import annotations

import os
from typing import Any

from flax.traverse_util import flatten_dict, unflatten_dict

from zoo.convert import common, io
from zoo.convert.common import ConversionError

ZOO_CONFIG = 'zoo_model.json'
PARAMS_FILE = 'params.safetensors'
HF_CONFIG_COPY = 'hf_config.json'
GENERATION_CONFIG = 'generation_config.json'  # the HF directory's, copied unchanged: zoo.generate's defaults
HF_TOKENIZER_DIR = 'hf_tokenizer'
TOKENIZER_FILES = ('spiece.model', 'sentencepiece.bpe.model', 'tokenizer.model', 'vocab.txt', 'vocab.json',
                   'merges.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'added_tokens.json')


def model_dir(path: str) -> str:
  """The directory of a zoo model directory or of its params.safetensors."""
  return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def save_zoo(out_dir: str, family: str, fields: dict, params, *, source: dict | None = None,
             hf_config: dict | None = None, extra: dict | None = None) -> str:
  """Write a zoo model directory: zoo_model.json (family, fields, source), params.safetensors (flattened
  '/'-joined names, float32, layers unrolled) and, when given, hf_config.json. Returns out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  flat = flatten_dict(common.unstack_layers(common.plain_params(params), fields.get('share_layers', False)),
                      sep='/')
  io.save_safetensors(flat, os.path.join(out_dir, PARAMS_FILE), metadata={'format': 'zoo', 'family': family})
  meta = {'format': 'zoo-model', 'version': 1, 'family': family, 'size': common.closest_size(family, fields),
          'fields': common.model_kwargs(fields), 'params': PARAMS_FILE, 'source': source or {}, **(extra or {})}
  io.write_json(os.path.join(out_dir, ZOO_CONFIG), meta)
  if hf_config is not None:
    io.write_json(os.path.join(out_dir, HF_CONFIG_COPY), hf_config)
  return out_dir


def load_zoo(path: str, **overrides) -> tuple[Any, dict, str, dict]:
  """Read a zoo model directory (or its params.safetensors): (model, params, family, fields), as `load_hf`.
  Its tokenizer: `load_zoo_tokenizer(path)`; everything ready to generate: `zoo.load(path)`."""
  from safetensors.numpy import load_file
  from zoo import models
  directory = model_dir(path)
  meta_path = os.path.join(directory, ZOO_CONFIG)
  if not os.path.exists(meta_path):
    raise ConversionError(f'{directory} has no {ZOO_CONFIG}: give a directory written by '
                          f'`python -m zoo.convert import` (or save_zoo)')
  meta = io.read_json(meta_path)
  params_path = path if not os.path.isdir(path) else os.path.join(directory, meta.get('params', PARAMS_FILE))
  family, fields = meta['family'], meta['fields']
  model = models.get_model(family, meta.get('size', 'tiny'), **fields, **overrides)
  params = unflatten_dict(load_file(params_path), sep='/')
  if getattr(model, 'scan_layers', False):
    params = common.stack_layers(params)
  return model, params, family, fields


def hf_config_copy(path: str) -> dict:
  """The hf_config.json of a zoo model directory (or of its params.safetensors); {} when it has none."""
  config_path = os.path.join(model_dir(path), HF_CONFIG_COPY)
  return io.read_json(config_path) if os.path.exists(config_path) else {}


def generation_config_copy(path: str) -> dict:
  """The generation_config.json an imported HF directory had, kept in the zoo model directory; {} when none."""
  config_path = os.path.join(model_dir(path), GENERATION_CONFIG)
  return io.read_json(config_path) if os.path.exists(config_path) else {}


def load_zoo_tokenizer(path: str):
  """The HF tokenizer of a zoo model directory (or its params.safetensors) as a
  `zoo.data.hf_tokenizer.HFTokenizer`, with the missing special ids filled in from hf_config.json; None when
  the directory has no hf_tokenizer/ or nothing in it that HFTokenizer reads."""
  from zoo.data import hf_tokenizer
  tok_dir = os.path.join(model_dir(path), HF_TOKENIZER_DIR)
  if not os.path.isdir(tok_dir) or hf_tokenizer.usable_files(tok_dir) is None:
    return None
  return hf_tokenizer.HFTokenizer.load(tok_dir, config=hf_config_copy(path))

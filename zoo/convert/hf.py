"""HuggingFace directories in and out: `load_hf` (a HF directory -> zoo model and params), `import_hf` (-> a
zoo model directory, vocabulary included), `export_hf` (a zoo model -> a directory `from_pretrained` loads)."""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from zoo.convert import common, io
from zoo.convert import format as fmt
from zoo.convert.common import ConversionError
from zoo.convert.registry import hf_config_to_fields, zoo_to_hf_config
from zoo.convert.weights import hf_weights_to_params, params_to_hf_weights

GENERATION_IDS = ('bos_token_id', 'eos_token_id', 'pad_token_id', 'decoder_start_token_id')
GENERATES = ('gpt', 't5', 'bart')  # the families transformers' generate runs


def load_hf(hf_dir: str, **overrides) -> tuple[Any, dict, str, dict]:
  """Import a HuggingFace BERT / ALBERT / GPT-2 / T5 / BART directory.

  Returns (model, params, family, fields): `model = zoo.models.get_model(family, size, **fields,
  **overrides)` (overrides such as dtype=jnp.bfloat16, scan_layers=True, dropout_rate=0.0), params (nested
  dicts of float32 numpy arrays, the structure of `nn.unbox(model.init(...)['params'])`), family ('bert',
  'albert', 'gpt', 't5' or 'bart') and the JSON-serialisable model fields derived from config.json. Parameters
  the checkpoint lacks (BertForMaskedLM has no pooler / NSP head, BertModel no MLM head) are initialised fresh,
  with a warning.
  """
  model, params, family, fields, _ = _load_hf(hf_dir, overrides)
  return model, params, family, fields


def _load_hf(hf_dir: str, overrides: dict):
  from zoo import models
  config = io.read_hf_config(hf_dir)
  generator = os.path.join(hf_dir, 'generator')  # ELECTRA's generator beside its discriminator (zoo.convert.electra)
  has_generator = config.get('model_type') == 'electra' and os.path.isfile(os.path.join(generator, 'config.json'))
  if has_generator:
    config = dict(config, _generator=io.read_hf_config(generator))
  hf_config_to_fields(config)  # refuse an unsupported model or setting before reading gigabytes
  weights = io.read_hf_weights(hf_dir)
  if has_generator:
    from zoo.convert import electra
    weights.update({electra.GENERATOR + k: v for k, v in io.read_hf_weights(generator).items()})
  family, fields = hf_config_to_fields(config, weights)
  model = models.get_model(family, common.closest_size(family, fields), **common.model_kwargs(fields), **overrides)
  params, fresh = hf_weights_to_params(family, fields, weights, model)
  if fresh:
    warnings.warn(f'{hf_dir}: the checkpoint has no weights for {fresh}; they are initialised at random '
                  f'(architectures={config.get("architectures")})', stacklevel=3)
  return model, params, family, common.model_kwargs(fields), dict(fresh=fresh, config=config)


def tokenizer_report(hf_dir: str) -> dict:
  """Which HF vocabulary files a directory has, which kind of `HFTokenizer` reads them ('hf_tokenizer':
  'tokenizer.json', 'sentencepiece', 'wordpiece', 'bpe' or None), and whether zoo's own Tokenizer can load its
  SentencePiece model (it cannot when ids 0..8 are not zoo's special tokens, the case for every HF checkpoint)."""
  from zoo.data import hf_tokenizer
  files = [f for f in fmt.TOKENIZER_FILES if os.path.exists(os.path.join(hf_dir, f))]
  report = {'files': files, 'zoo_tokenizer': False, 'hf_tokenizer': hf_tokenizer.usable_files(hf_dir)}
  for name in ('spiece.model', 'sentencepiece.bpe.model', 'tokenizer.model'):
    if name in files:
      from zoo.data import tokenizer as tk
      try:
        with open(os.path.join(hf_dir, name), 'rb') as f:
          tk.Tokenizer(f.read(), name)
        report['zoo_tokenizer'] = name
      except (ValueError, RuntimeError):  # ids 0..8 are not [PAD] [UNK] [BOS] ... [eop]
        report['note'] = (f"{name} is not a zoo tokenizer: its ids 0..8 are not zoo's fixed special tokens, so "
                          f"zoo.data.tokenizer.Tokenizer cannot load it (nor would zoo's objectives find "
                          f"[MASK], [CLS], ... where they expect them)")
      break
  if files and 'note' not in report and not report['zoo_tokenizer']:
    report['note'] = (f'HF vocabulary files ({", ".join(files)}) are copied unchanged; zoo\'s Tokenizer reads '
                      f'SentencePiece models with zoo\'s special ids only')
  if 'note' in report:
    report['note'] += (f'; zoo.load / zoo.convert.load_zoo_tokenizer read {fmt.HF_TOKENIZER_DIR}/ as an '
                       f'HFTokenizer' if report['hf_tokenizer'] else
                       '; zoo has no reader for these files (it reads tokenizer.json, spiece.model, vocab.txt, '
                       'vocab.json + merges.txt): tokenize with the HF tokenizer and feed its ids to the model')
  return report


def import_hf(hf_dir: str, out_dir: str) -> dict:
  """`python -m zoo.convert import`: a HF directory -> a zoo model directory (zoo.convert.format), vocabulary
  files copied to out_dir/hf_tokenizer/. Returns a summary (what the CLI prints)."""
  model, params, family, fields, info = _load_hf(hf_dir, {})
  tok = tokenizer_report(hf_dir)
  if tok['files']:
    os.makedirs(os.path.join(out_dir, fmt.HF_TOKENIZER_DIR), exist_ok=True)
    for name in tok['files']:
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out_dir, fmt.HF_TOKENIZER_DIR, name))
  source = {'hf_dir': os.path.abspath(hf_dir), 'model_type': info['config'].get('model_type'),
            'architectures': info['config'].get('architectures')}
  fmt.save_zoo(out_dir, family, fields, params, source=source, hf_config=info['config'],
                  extra={'fresh_params': info['fresh'], 'tokenizer': tok})
  if os.path.isfile(os.path.join(hf_dir, fmt.GENERATION_CONFIG)):  # zoo.generate's defaults, as transformers'
    shutil.copyfile(os.path.join(hf_dir, fmt.GENERATION_CONFIG), os.path.join(out_dir, fmt.GENERATION_CONFIG))
  n = sum(int(np.prod(v.shape)) for v in flatten_dict(params).values())
  return {'out': out_dir, 'family': family, 'params': n, 'fields': fields, 'fresh_params': info['fresh'],
          'tokenizer': tok}


def export_hf(model, params, family: str, out_dir: str, *, extra_config: dict | None = None,
              tokenizer_vocab_size: int | None = None) -> str:
  """Write a zoo BERT / ALBERT / GPT / T5 / BART model as a HuggingFace directory (config.json +
  model.safetensors) that `transformers` loads as BertForPreTraining / AlbertForPreTraining / GPT2LMHeadModel /
  T5ForConditionalGeneration / BartForConditionalGeneration. LoRA adapters are
  merged into the kernels first; prefix tuning cannot be exported. `extra_config` adds token ids
  (bos/eos/pad/decoder_start), also written as generation_config.json, which suppresses the embedding's padding
  rows past `tokenizer_vocab_size` (zoo.generate never draws them). Returns out_dir."""
  adapters = getattr(model, 'adapters', None)
  if adapters is not None and getattr(adapters, 'active', False):
    if getattr(adapters, 'prefix_length', 0):
      raise ConversionError('model.adapters.prefix_length > 0: prefix tuning adds keys and values HF models do '
                            'not have; it cannot be exported')
    from zoo.layers import adapters as adapters_lib
    params = adapters_lib.merge_lora(params, adapters)
    model = model.clone(adapters=None)
  config = zoo_to_hf_config(family, model, extra_config)
  weights = params_to_hf_weights(family, model, params)
  os.makedirs(out_dir, exist_ok=True)
  if config.pop('_generator', None):  # ELECTRA: the generator in its own directory, as HF publishes it
    from zoo.convert import electra
    gen = {k[len(electra.GENERATOR):]: weights.pop(k) for k in list(weights) if k.startswith(electra.GENERATOR)}
    export_dir = os.path.join(out_dir, 'generator')
    os.makedirs(export_dir, exist_ok=True)
    io.save_safetensors(gen, os.path.join(export_dir, 'model.safetensors'), metadata={'format': 'pt'})
    gen_config = electra.generator_config(common.model_fields(model))
    io.write_json(os.path.join(export_dir, 'config.json'), {**gen_config, **{k: v for k, v in config.items()
                                                                             if k.endswith('token_id')}})
  io.save_safetensors(weights, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  io.write_json(os.path.join(out_dir, 'config.json'), config)
  generation = {k: v for k, v in config.items() if k in GENERATION_IDS}
  vocab = config.get('vocab_size', 0)
  if tokenizer_vocab_size and tokenizer_vocab_size < vocab and family in GENERATES:
    generation['suppress_tokens'] = list(range(tokenizer_vocab_size, vocab))
  if generation:
    io.write_json(os.path.join(out_dir, 'generation_config.json'), generation)
  return out_dir

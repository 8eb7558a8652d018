"""HuggingFace checkpoints in and out of zoo: BERT, GPT-2 and T5.

Import reads a HuggingFace model directory (`config.json` + `model.safetensors`, a sharded
`model.safetensors.index.json`, or a PyTorch `pytorch_model.bin` through torch's weights-only loader) and
returns the zoo model built from the config and its parameters: nested dicts of float32 numpy arrays with
exactly the structure of `nn.unbox(model.init(...)['params'])`.

| HF `model_type` / architectures | zoo family |
| --- | --- |
| `bert`: BertForPreTraining, BertForMaskedLM, BertModel | `bert` (absolute positions, tied MLM decoder) |
| `gpt2`: GPT2LMHeadModel, GPT2Model | `gpt` (learned positions, LayerNorm, tied or untied head) |
| `t5` / `mt5`: T5ForConditionalGeneration, T5Model | `t5` (v1.0 `relu`, v1.1 `gated-gelu` = zoo `geglu`) |

Export writes zoo's BERT, GPT and T5 back as `config.json` + `model.safetensors` that `transformers` loads with
`from_pretrained` (BertForPreTraining, GPT2LMHeadModel, T5ForConditionalGeneration).

Nothing in a checkpoint is ever executed: safetensors are plain arrays (read with `safetensors.numpy`), a
`.bin` is opened only with `torch.load(..., weights_only=True)` (a file with pickled objects other than tensors
is refused), `config.json` is JSON, and no remote code is ever loaded.

A round trip in Python (needs neither torch nor transformers):

>>> import tempfile, jax, numpy as np, jax.numpy as jnp, flax.linen as nn
>>> from zoo import models
>>> model = models.get_model('gpt', 'tiny', num_layers=1, dropout_rate=0.0)
>>> params = nn.unbox(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
>>> hf_dir = export_hf(model, params, 'gpt', tempfile.mkdtemp())  # a GPT2LMHeadModel directory
>>> model2, params2, family, fields = load_hf(hf_dir)
>>> family, fields['num_layers'], fields['activation']
('gpt', 1, 'gelu_tanh')
>>> tokens = jnp.arange(8)[None]
>>> bool(np.allclose(model.apply({'params': params}, tokens), model2.apply({'params': params2}, tokens),
...                  atol=1e-5))
True

From the command line:

  python -m zoo.convert import --hf_dir=DIR --out=OUT      # HF directory -> zoo model directory
  python -m zoo.convert export --params=OUT --out=HF_DIR   # zoo model directory -> HF directory
  python -m zoo.convert export --workdir=WORKDIR --out=HF_DIR [--step=N]   # a train.py run -> HF

A zoo model directory (what `import` writes, `load_zoo` reads) holds:
  zoo_model.json      {"format": "zoo-model", "family": ..., "fields": {model fields}, "source": ..., ...}
  params.safetensors  every parameter as float32, named by its path in the params tree joined with '/'
                      (e.g. 'layers_0/self_attention/query/kernel'; layers unrolled)
  hf_config.json      the HuggingFace config it came from (export reuses its token ids)
  hf_tokenizer/       the HF vocabulary files, copied unchanged (spiece.model, vocab.txt, vocab.json,
                      merges.txt, tokenizer.json, ...). `load_zoo_tokenizer(dir)` reads them as a
                      `zoo.data.hf_tokenizer.HFTokenizer` (the ids and special ids transformers gives; zoo's own
                      `zoo.data.tokenizer.Tokenizer` needs zoo's fixed special ids 0 [PAD] .. 8 [eop] and cannot).

`zoo.load(dir)` takes such a directory too: the model, its parameters on the devices and the HFTokenizer, for
`zoo.generate` (which then stops at the tokenizer's eos and starts T5's decoder at its decoder_start_token_id).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import shutil
import struct
import warnings
from typing import Any

import numpy as np

FAMILIES = ('bert', 'gpt', 't5')
ZOO_CONFIG = 'zoo_model.json'
PARAMS_FILE = 'params.safetensors'
HF_CONFIG_COPY = 'hf_config.json'
HF_TOKENIZER_DIR = 'hf_tokenizer'
TOKENIZER_FILES = ('spiece.model', 'sentencepiece.bpe.model', 'tokenizer.model', 'vocab.txt', 'vocab.json',
                   'merges.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'added_tokens.json')

SUPPORTED_ARCHITECTURES = {
    'bert': ('BertForPreTraining', 'BertForMaskedLM', 'BertModel'),
    'gpt': ('GPT2LMHeadModel', 'GPT2Model'),
    't5': ('T5ForConditionalGeneration', 'T5Model', 'MT5ForConditionalGeneration', 'MT5Model'),
}
_MODEL_TYPES = {'bert': 'bert', 'gpt2': 'gpt', 't5': 't5', 'mt5': 't5'}

# HF activation name (transformers' ACT2FN) -> zoo activation. 'gelu' is the exact (erf) GELU in both.
_HF_ACT = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
           'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
_ZOO_ACT = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}
_GATED = {'gelu_tanh': 'geglu', 'silu': 'swiglu', 'relu': 'reglu'}  # zoo activation -> its gated name
_T5_GATED_FF = {'geglu': 'gated-gelu', 'reglu': 'gated-relu', 'swiglu': 'gated-silu'}


class ConversionError(ValueError):
  """A checkpoint or config zoo cannot convert faithfully (the message names the field and what to do)."""


class UnsafeCheckpointError(ConversionError):
  """A PyTorch pickle that holds objects other than tensors: refused, never unpickled."""


# ----------------------------------------------------------------------------------------- reading files

_ST_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'I64': np.int64, 'I32': np.int32,
              'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}


def _read_safetensors_raw(path: str) -> dict[str, np.ndarray]:
  """The safetensors format read by hand (8-byte header size, JSON header, raw little-endian data): for the
  dtypes numpy lacks (bfloat16, float8), which `safetensors.numpy` cannot return."""
  import ml_dtypes  # comes with jax
  dtypes = dict(_ST_DTYPES, BF16=ml_dtypes.bfloat16, F8_E4M3=ml_dtypes.float8_e4m3fn,
                F8_E5M2=ml_dtypes.float8_e5m2)
  with open(path, 'rb') as f:
    (n,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in dtypes:
      raise ConversionError(f'{path}: tensor {name} has dtype {info["dtype"]}, which zoo cannot read')
    begin, end = info['data_offsets']
    out[name] = np.frombuffer(data[begin:end], dtype=dtypes[info['dtype']]).reshape(info['shape'])
  return out


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """A .safetensors file as {name: float32 numpy array} (`safetensors.numpy.load_file`; bfloat16 and float8
  files are read by hand, since numpy has no such dtypes). Integer tensors are kept as they are."""
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise ConversionError('reading .safetensors needs the safetensors package: pip install safetensors') from None
  try:
    tensors = load_file(path)
  except TypeError:  # "data type 'bfloat16' not understood"
    tensors = _read_safetensors_raw(path)
  return {k: _to_float32(v) for k, v in tensors.items()}


def _to_float32(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    return x
  return np.ascontiguousarray(x.astype(np.float32))


def load_torch_bin(path: str) -> dict[str, np.ndarray]:
  """A PyTorch `.bin` state dict as {name: float32 numpy array}, through torch's weights-only unpickler.

  `torch.load(path, map_location='cpu', weights_only=True)` refuses any pickled object other than tensors and
  plain containers, so nothing in the file can run; such a file raises `UnsafeCheckpointError`. Without torch
  installed this says to install it or to convert the file to safetensors.
  """
  try:
    import torch
  except ImportError:
    raise ConversionError(
        f'{path} is a PyTorch pickle checkpoint: reading it needs torch (pip install torch; zoo opens it only '
        f'with the weights-only loader), or convert it to model.safetensors with a trusted tool and convert '
        f'that') from None
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings('ignore', message='Detected pickle protocol')  # torch's note on old pickles
      state = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    detail = ' '.join(line.strip() for line in str(e).splitlines() if 'GLOBAL' in line or 'Unsupported' in line)
    raise UnsafeCheckpointError(
        f'{path} holds objects other than tensors; refusing to unpickle it (it could run code). Convert it to '
        f'safetensors with a trusted tool (e.g. load it where you trust its source and save it with '
        f'safetensors.torch.save_file), then convert the model.safetensors' + (f' [{detail}]' if detail else '')
    ) from None
  except TypeError as e:
    if 'weights_only' in str(e):
      raise ConversionError(f'torch {torch.__version__} has no weights-only loader: upgrade torch (>= 1.13) '
                            f'or convert {path} to safetensors') from None
    raise
  if not isinstance(state, dict):
    raise ConversionError(f'{path} holds a {type(state).__name__}, not a state dict of tensors')
  out = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(f'{path}: entry {name!r} is a {type(value).__name__}, not a tensor: zoo reads flat '
                            f'state dicts (name -> tensor) as save_pretrained writes them')
    value = value.detach().cpu()
    out[name] = value.numpy() if not value.is_floating_point() else value.to(torch.float32).numpy().copy()
  return out


def read_hf_config(hf_dir: str) -> dict:
  """config.json of a HuggingFace model directory, as a dict."""
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.exists(path):
    raise ConversionError(f'{hf_dir} has no config.json: point --hf_dir at a HuggingFace model directory '
                          f'(what save_pretrained writes)')
  with open(path) as f:
    return json.load(f)


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of a HuggingFace model directory as {HF name: numpy array}: model.safetensors (or its
  sharded index) first, else pytorch_model.bin (or its index) through the weights-only loader."""
  for index, loader in (('model.safetensors.index.json', load_safetensors),
                        ('pytorch_model.bin.index.json', load_torch_bin)):
    path = os.path.join(hf_dir, index)
    if os.path.exists(path):
      with open(path) as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
      out = {}
      for shard in shards:
        out.update(loader(os.path.join(hf_dir, os.path.basename(shard))))
      return out
    single = os.path.join(hf_dir, index[:-len('.index.json')])
    if os.path.exists(single):
      return loader(single)
  raise ConversionError(f'{hf_dir} has no model.safetensors or pytorch_model.bin (nor a sharded index)')


# ----------------------------------------------------------------------------------------- config mapping

def _get(config: dict, *names, default=None):
  for name in names:
    if config.get(name) is not None:
      return config[name]
  return default


def _require(config: dict, field: str, ok: bool, why: str) -> None:
  if not ok:
    raise ConversionError(f'config.json {field}={config.get(field)!r}: {why}')


def _activation(config: dict, field: str) -> str:
  act = config.get(field)
  _require(config, field, act in _HF_ACT,
           f'zoo has no such activation; supported: {sorted(_HF_ACT)}')
  return _HF_ACT[act]


def detect_family(config: dict) -> str:
  """The zoo family of a HF config ('bert', 'gpt' or 't5'), or a ConversionError naming model_type /
  architectures."""
  model_type = config.get('model_type')
  if model_type not in _MODEL_TYPES:
    raise ConversionError(f'config.json model_type={model_type!r} is not supported: zoo imports '
                          f'{sorted(_MODEL_TYPES)} (BERT, GPT-2, T5 / mT5)')
  family = _MODEL_TYPES[model_type]
  for arch in config.get('architectures') or ():
    if arch not in SUPPORTED_ARCHITECTURES[family]:
      raise ConversionError(f'config.json architectures={config["architectures"]!r}: zoo imports '
                            f'{list(SUPPORTED_ARCHITECTURES[family])} for model_type={model_type!r}, not {arch}')
  return family


def hf_config_to_fields(config: dict, weights: dict | None = None) -> tuple[str, dict]:
  """(family, zoo model fields) from a HF config.json dict; `weights` (the HF tensors) decide whether the
  output embedding is tied where config and checkpoint can disagree. Unsupported settings raise a
  ConversionError naming the config field."""
  family = detect_family(config)
  weights = weights or {}
  _require(config, 'is_decoder', not config.get('is_decoder', False) or family == 'gpt',
           'a decoder-only BERT / T5 stack is not supported')
  _require(config, 'add_cross_attention', not config.get('add_cross_attention', False),
           'cross-attention layers in a decoder-only model are not supported')
  if family == 'bert':
    _require(config, 'position_embedding_type', config.get('position_embedding_type', 'absolute') == 'absolute',
             "zoo's BERT has absolute learned positions only")
    _require(config, 'tie_word_embeddings', config.get('tie_word_embeddings', True) is not False,
             "zoo's BERT ties the MLM decoder to the word embeddings")
    hidden, heads = config['hidden_size'], config['num_attention_heads']
    _require(config, 'num_attention_heads', hidden % heads == 0, f'must divide hidden_size={hidden}')
    _require(config, 'embedding_size', config.get('embedding_size', hidden) == hidden,
             'a factorized embedding is ALBERT, not BERT')
    fields = dict(vocab_size=config['vocab_size'], type_vocab_size=config.get('type_vocab_size', 2),
                  max_len=config.get('max_position_embeddings', 512), num_layers=config['num_hidden_layers'],
                  embed_dim=hidden, num_heads=heads, mlp_dim=config['intermediate_size'],
                  activation=_activation(config, 'hidden_act'), norm_eps=config.get('layer_norm_eps', 1e-12),
                  pad_id=_get(config, 'pad_token_id', default=0),
                  dropout_rate=_get(config, 'hidden_dropout_prob', default=0.1))
  elif family == 'gpt':
    _require(config, 'scale_attn_weights', config.get('scale_attn_weights', True),
             'zoo always scales attention logits by 1/sqrt(head_dim)')
    _require(config, 'scale_attn_by_inverse_layer_idx', not config.get('scale_attn_by_inverse_layer_idx', False),
             'zoo has no per-layer attention scaling')
    hidden, heads = config['n_embd'], config['n_head']
    _require(config, 'n_head', hidden % heads == 0, f'must divide n_embd={hidden}')
    tied = 'lm_head.weight' not in weights or _same(weights['lm_head.weight'], _gpt_wte(weights))
    if 'lm_head.weight' not in weights and config.get('tie_word_embeddings', True) is False:
      tied = False  # GPT2Model saved untied: the head is missing and will be initialised fresh
    fields = dict(vocab_size=config['vocab_size'], max_len=_get(config, 'n_positions', 'n_ctx', default=1024),
                  num_layers=config['n_layer'], embed_dim=hidden, num_heads=heads,
                  mlp_dim=_get(config, 'n_inner', default=4 * hidden),
                  activation=_activation(config, 'activation_function'), position='learned', norm='layernorm',
                  norm_eps=config.get('layer_norm_epsilon', 1e-5), tie_embeddings=tied,
                  dropout_rate=_get(config, 'resid_pdrop', default=0.1))
  else:
    ff = config.get('feed_forward_proj', 'relu')
    parts = ff.split('-')
    _require(config, 'feed_forward_proj', len(parts) == 1 or (len(parts) == 2 and parts[0] == 'gated'),
             "expected 'relu', 'gated-gelu' or 'gated-<act>'")
    act_name = 'gelu_new' if ff == 'gated-gelu' else parts[-1]  # as T5Config.__post_init__ does
    _require(config, 'feed_forward_proj', act_name in _HF_ACT, f'zoo has no activation {act_name!r}')
    act = _HF_ACT[act_name]
    if len(parts) == 2:
      _require(config, 'feed_forward_proj', act in _GATED,
               f'zoo has no gated form of {act_name!r}; it has {sorted(_T5_GATED_FF.values())}')
      act = _GATED[act]
    # transformers <5 writes tie_word_embeddings (True: lm_head tied to `shared` and the decoder output scaled
    # by d_model**-0.5); 5.x writes scale_decoder_outputs and always ties T5's head, saving `shared` only. The
    # lm_head weights, when present and different from `shared`, make an untied head; a scaled untied head has
    # the scale folded into its kernel (zoo's untied head does not scale).
    scale = bool(config.get('scale_decoder_outputs', config.get('tie_word_embeddings', True) is not False))
    head = weights.get('lm_head.weight')
    tied = head is None or _same(head, weights.get('shared.weight'))
    d_model = config['d_model']
    fields = dict(vocab_size=config['vocab_size'], num_encoder_layers=config['num_layers'],
                  num_decoder_layers=_get(config, 'num_decoder_layers', 'num_layers'), embed_dim=d_model,
                  num_heads=config['num_heads'], head_dim=config['d_kv'], mlp_dim=config['d_ff'], activation=act,
                  norm='rmsnorm', norm_eps=config.get('layer_norm_epsilon', 1e-6), pre_ln=True, use_bias=False,
                  position='relative', relative_buckets=config.get('relative_attention_num_buckets', 32),
                  relative_max_distance=config.get('relative_attention_max_distance', 128),
                  attention_scale=1.0, embedding_norm=False, tie_embeddings=tied,
                  scale_tied_logits=scale if tied else False,
                  dropout_rate=_get(config, 'dropout_rate', default=0.1), _scale_head=scale and not tied)
  return family, fields


def _same(a, b) -> bool:
  return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


def _gpt_wte(weights):
  return weights.get('transformer.wte.weight', weights.get('wte.weight'))


# ----------------------------------------------------------------------------------------- weight mapping
# A mapping is a list of (zoo path, HF name, kind, group): kind 'T' transposes (torch Linear [out, in] <->
# flax kernel [in, out]), 'copy' does not (embeddings, norms, biases, GPT-2's Conv1D [in, out]). group None is
# required; a named group (pooler, nsp, mlm, lm_head) may be absent (its zoo parameters are then initialised).

def _dense(zoo, hf, bias=True, kind='T', group=None):
  out = [((*zoo, 'kernel'), f'{hf}.weight', kind, group)]
  if bias:
    out.append(((*zoo, 'bias'), f'{hf}.bias', 'copy', group))
  return out


def _norm(zoo, hf, bias=True, group=None):
  out = [((*zoo, 'scale'), f'{hf}.weight', 'copy', group)]
  if bias:
    out.append(((*zoo, 'bias'), f'{hf}.bias', 'copy', group))
  return out


def _bert_mapping(f: dict, prefix: str = 'bert.') -> list:
  p = prefix
  m = [(('token_embed', 'embedding'), f'{p}embeddings.word_embeddings.weight', 'copy', None),
       (('position_embed', 'embedding'), f'{p}embeddings.position_embeddings.weight', 'copy', None),
       (('type_embed', 'embedding'), f'{p}embeddings.token_type_embeddings.weight', 'copy', None)]
  m += _norm(('embed_norm',), f'{p}embeddings.LayerNorm')
  for i in range(f['num_layers']):
    L, z = f'{p}encoder.layer.{i}.', f'layers_{i}'
    for name in ('query', 'key', 'value'):
      m += _dense((z, 'self_attention', name), f'{L}attention.self.{name}')
    m += _dense((z, 'self_attention', 'out'), f'{L}attention.output.dense')
    m += _norm((z, 'self_attention_norm'), f'{L}attention.output.LayerNorm')
    m += _dense((z, 'mlp', 'wi'), f'{L}intermediate.dense')
    m += _dense((z, 'mlp', 'wo'), f'{L}output.dense')
    m += _norm((z, 'mlp_norm'), f'{L}output.LayerNorm')
  m += _dense(('pooler',), f'{p}pooler.dense', group='pooler')
  m += _dense(('mlm_transform',), 'cls.predictions.transform.dense', group='mlm')
  m += _norm(('mlm_norm',), 'cls.predictions.transform.LayerNorm', group='mlm')
  m += [(('mlm_bias',), 'cls.predictions.bias', 'copy', 'mlm')]
  m += _dense(('nsp',), 'cls.seq_relationship', group='nsp')
  return m


def _gpt_mapping(f: dict, prefix: str = 'transformer.') -> list:
  p = prefix
  m = [(('token_embed', 'embedding'), f'{p}wte.weight', 'copy', None),
       (('position_embed', 'embedding', 'embedding'), f'{p}wpe.weight', 'copy', None)]
  for i in range(f['num_layers']):
    L, z = f'{p}h.{i}.', f'layers_{i}'
    m += _norm((z, 'self_attention_norm'), f'{L}ln_1')
    for name, part in (('query', 'q'), ('key', 'k'), ('value', 'v')):  # c_attn split in three (_split_qkv)
      m += _dense((z, 'self_attention', name), f'{L}attn.c_attn.{part}', kind='copy')
    m += _dense((z, 'self_attention', 'out'), f'{L}attn.c_proj', kind='copy')
    m += _norm((z, 'mlp_norm'), f'{L}ln_2')
    m += _dense((z, 'mlp', 'wi'), f'{L}mlp.c_fc', kind='copy')
    m += _dense((z, 'mlp', 'wo'), f'{L}mlp.c_proj', kind='copy')
  m += _norm(('final_norm',), f'{p}ln_f')
  if not f.get('tie_embeddings', True):
    m += _dense(('lm_head',), 'lm_head', bias=False, group='lm_head')
  return m


def _t5_mapping(f: dict) -> list:
  m = [(('token_embed', 'embedding'), 'shared.weight', 'copy', None)]
  gated = f['activation'] in _T5_GATED_FF
  for stack, n in (('encoder', f['num_encoder_layers']), ('decoder', f['num_decoder_layers'])):
    m.append(((stack, 'relative_bias', 'rel_embedding'),
              f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', 'copy', None))
    for i in range(n):
      B, z = f'{stack}.block.{i}.layer.', (stack, f'layers_{i}')
      subs = [('self_attention', 'SelfAttention')] + ([('cross_attention', 'EncDecAttention')]
                                                       if stack == 'decoder' else [])
      for j, (zname, hname) in enumerate(subs):
        for name, part in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
          m += _dense((*z, zname, name), f'{B}{j}.{hname}.{part}', bias=False)
        m += _norm((*z, f'{zname}_norm'), f'{B}{j}.layer_norm', bias=False)
      j = len(subs)
      for name in (('wi_0', 'wi_1') if gated else ('wi',)) + ('wo',):
        m += _dense((*z, 'mlp', name), f'{B}{j}.DenseReluDense.{name}', bias=False)
      m += _norm((*z, 'mlp_norm'), f'{B}{j}.layer_norm', bias=False)
    m += _norm((stack, 'final_norm'), f'{stack}.final_layer_norm', bias=False)
  if not f.get('tie_embeddings', True):
    m += _dense(('lm_head',), 'lm_head', bias=False, group='lm_head')
  return m


def _mapping(family: str, fields: dict, weights: dict | None = None) -> list:
  if family == 'bert':
    prefix = 'bert.' if weights is None or any(k.startswith('bert.') for k in weights) else ''
    return _bert_mapping(fields, prefix)
  if family == 'gpt':
    prefix = 'transformer.' if weights is None or any(k.startswith('transformer.') for k in weights) else ''
    return _gpt_mapping(fields, prefix)
  return _t5_mapping(fields)


# HF names that carry no information zoo needs: buffers, and duplicates of tied weights checked separately.
_IGNORED = (re.compile(r'(^|\.)embeddings\.position_ids$'),
            re.compile(r'(^|\.)h\.\d+\.attn\.(bias|masked_bias)$'),  # GPT-2's causal-mask buffers
            re.compile(r'^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$'))


def _normalise_hf_names(family: str, weights: dict) -> dict:
  """Legacy names (BERT's LayerNorm gamma/beta) to today's; GPT-2's fused c_attn split into q, k, v."""
  out = {}
  for name, value in weights.items():
    if 'LayerNorm.' in name:
      name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', name)
      name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    if family == 'gpt' and re.search(r'\.attn\.c_attn\.(weight|bias)$', name):
      base, kind = name.rsplit('.', 1)
      for part, chunk in zip('qkv', np.split(value, 3, axis=-1)):
        out[f'{base}.{part}.{kind}'] = np.ascontiguousarray(chunk)
      continue
    out[name] = value
  return out


def _check_tied_duplicates(family: str, weights: dict, fields: dict) -> None:
  """Copies of tied weights a checkpoint may carry must equal what zoo ties them to; consumed here."""
  if family == 'bert':
    emb = next((v for k, v in weights.items() if k.endswith('embeddings.word_embeddings.weight')), None)
    dec = weights.pop('cls.predictions.decoder.weight', None)
    if dec is not None and not _same(dec, emb):
      raise ConversionError('cls.predictions.decoder.weight differs from the word embeddings (an untied MLM '
                            "decoder, tie_word_embeddings=False): zoo's BERT ties them")
    bias = weights.pop('cls.predictions.decoder.bias', None)
    if bias is not None:
      if 'cls.predictions.bias' not in weights:
        weights['cls.predictions.bias'] = bias
      elif not _same(bias, weights['cls.predictions.bias']):
        raise ConversionError('cls.predictions.decoder.bias differs from cls.predictions.bias')
  elif family == 'gpt' and fields['tie_embeddings']:
    weights.pop('lm_head.weight', None)  # equal to wte (checked in hf_config_to_fields)
  elif family == 't5':
    for name in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
      copy = weights.pop(name, None)
      if copy is not None and not _same(copy, weights.get('shared.weight')):
        raise ConversionError(f'{name} differs from shared.weight: zoo shares one token embedding')
    if fields['tie_embeddings']:
      weights.pop('lm_head.weight', None)


def _flatten(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      out.update(_flatten(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def _unflatten(flat: dict) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _stack_layers(tree):
  """Unrolled {layers_0: t0, layers_1: t1, ...} -> {layers: stacked} (what scan_layers=True expects)."""
  if not isinstance(tree, dict):
    return tree
  out = {k: _stack_layers(v) for k, v in tree.items() if not re.fullmatch(r'layers_\d+', k)}
  layers = sorted((k for k in tree if re.fullmatch(r'layers_\d+', k)), key=lambda k: int(k.split('_')[1]))
  if layers:
    flats = [_flatten(tree[k]) for k in layers]
    out['layers'] = _unflatten({p: np.stack([f[p] for f in flats]) for p in flats[0]})
  return out


def _unstack_layers(tree):
  """{layers: stacked} -> {layers_0: ..., layers_1: ...} (scanned parameters to the unrolled layout)."""
  if not isinstance(tree, dict):
    return tree
  out = {k: _unstack_layers(v) for k, v in tree.items() if k != 'layers'}
  if 'layers' in tree:
    flat = _flatten(tree['layers'])
    n = next(iter(flat.values())).shape[0]
    for i in range(n):
      out[f'layers_{i}'] = _unflatten({p: np.asarray(v[i]) for p, v in flat.items()})
  return out


def _abstract_flat(model) -> dict:
  import flax.linen as nn
  from zoo import models
  return _flatten(nn.unbox(models.abstract_params(model, 1, 8)))


def _fresh_params(model) -> dict:
  import flax.linen as nn
  import jax
  batch = model.example_batch(1, 8)
  return _flatten(jax.device_get(nn.unbox(jax.jit(model.init)(jax.random.key(0), **batch)['params'])))


def hf_weights_to_params(family: str, fields: dict, weights: dict, model=None) -> tuple[dict, list[str]]:
  """HF tensors -> zoo params (nested dicts of float32 numpy arrays, unrolled layers unless `model` scans
  them). Returns (params, names of zoo parameters initialised fresh because the checkpoint lacks them).

  Every HF tensor must find its place: left-over names (a classification head, an unsupported variant) raise a
  ConversionError, as does a shape that does not match the config."""
  weights = _normalise_hf_names(family, dict(weights))
  _check_tied_duplicates(family, weights, fields)
  scale_head = family == 't5' and fields.get('_scale_head', False)
  flat = {}
  for zoo, hf, kind, group in _mapping(family, fields, weights):
    if hf not in weights:
      if group is None:
        raise ConversionError(f'the checkpoint has no {hf}, which a {family} model with this config.json needs')
      continue  # an optional head: initialised fresh below
    value = weights.pop(hf)
    value = value.T if kind == 'T' else value
    if zoo == ('lm_head', 'kernel') and scale_head:
      value = value * np.float32(fields['embed_dim'] ** -0.5)  # HF scales the decoder output before lm_head
    flat[zoo] = np.ascontiguousarray(value, dtype=np.float32)
  left = sorted(k for k in weights if not any(p.search(k) for p in _IGNORED))
  if left:
    raise ConversionError(f'the checkpoint has {len(left)} tensor(s) zoo\'s {family} has no place for: '
                          f'{left[:8]}{" ..." if len(left) > 8 else ""}; a head or variant zoo does not support')
  if model is None:
    from zoo import models
    model = models.get_model(family, 'tiny', **_model_fields(fields))
  expected = _abstract_flat(model.clone(scan_layers=False) if getattr(model, 'scan_layers', False) else model)
  for path, value in flat.items():
    if path not in expected:
      raise ConversionError(f'zoo {family} has no parameter {"/".join(path)}: the zoo model and the mapping '
                            f'disagree (a zoo model change?)')
    if tuple(expected[path].shape) != value.shape:
      raise ConversionError(f'{"/".join(path)}: the checkpoint gives shape {value.shape}, the zoo model built '
                            f'from config.json wants {tuple(expected[path].shape)}')
  fresh = sorted(set(expected) - set(flat))
  if fresh:
    init = _fresh_params(model.clone(scan_layers=False) if getattr(model, 'scan_layers', False) else model)
    for path in fresh:
      flat[path] = np.asarray(init[path], np.float32)
  params = _unflatten(flat)
  if getattr(model, 'scan_layers', False):
    params = _stack_layers(params)
  reported = [('/'.join(p)) for p in fresh if not _is_adapter(p)]
  return params, reported


def _is_adapter(path) -> bool:
  return any('_lora_' in k or k.startswith('prefix') for k in path)


def _model_fields(fields: dict) -> dict:
  """Fields the model takes (without private bookkeeping keys)."""
  return {k: v for k, v in fields.items() if not k.startswith('_')}


# ----------------------------------------------------------------------------------------- import API

def load_hf(hf_dir: str, **overrides) -> tuple[Any, dict, str, dict]:
  """Import a HuggingFace BERT / GPT-2 / T5 directory.

  Returns (model, params, family, fields): `model = zoo.models.get_model(family, size, **fields,
  **overrides)` (overrides such as dtype=jnp.bfloat16, scan_layers=True, dropout_rate=0.0), params (nested
  dicts of float32 numpy arrays, the structure of `nn.unbox(model.init(...)['params'])`), family ('bert', 'gpt'
  or 't5') and the JSON-serialisable model fields derived from config.json. Parameters the checkpoint lacks
  (BertForMaskedLM has no pooler / NSP head, BertModel no MLM head) are initialised fresh, with a warning.
  """
  model, params, family, fields, _ = _load_hf(hf_dir, overrides)
  return model, params, family, fields


def _load_hf(hf_dir: str, overrides: dict):
  from zoo import models
  config = read_hf_config(hf_dir)
  hf_config_to_fields(config)  # refuse an unsupported model or setting before reading gigabytes
  weights = read_hf_weights(hf_dir)
  family, fields = hf_config_to_fields(config, weights)
  model = models.get_model(family, _closest_size(family, fields), **_model_fields(fields), **overrides)
  params, fresh = hf_weights_to_params(family, fields, weights, model)
  if fresh:
    warnings.warn(f'{hf_dir}: the checkpoint has no weights for {fresh}; they are initialised at random '
                  f'(architectures={config.get("architectures")})', stacklevel=3)
  fields = _model_fields(fields)
  return model, params, family, fields, dict(fresh=fresh, config=config)


def _closest_size(family: str, fields: dict) -> str:
  """The named size whose table matches the fields (for the record); 'tiny' when none does (every size field
  is overridden anyway)."""
  from zoo import models
  for size, table in models.FAMILIES[family].sizes.items():
    if all(fields.get(k) == v for k, v in table.items() if k not in ('vocab_size', 'max_len')):
      return size
  return 'tiny'


def tokenizer_report(hf_dir: str) -> dict:
  """Which HF vocabulary files a directory has, which kind of `HFTokenizer` reads them ('hf_tokenizer':
  'tokenizer.json', 'sentencepiece', 'wordpiece', 'bpe' or None), and whether zoo's own Tokenizer can load its
  SentencePiece model (it cannot when ids 0..8 are not zoo's special tokens, the case for every HF checkpoint)."""
  from zoo.data import hf_tokenizer
  files = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(hf_dir, f))]
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
    report['note'] += (f'; zoo.load / zoo.convert.load_zoo_tokenizer read {HF_TOKENIZER_DIR}/ as an HFTokenizer'
                       if report['hf_tokenizer'] else
                       '; zoo has no reader for these files (it reads tokenizer.json, spiece.model, vocab.txt, '
                       'vocab.json + merges.txt): tokenize with the HF tokenizer and feed its ids to the model')
  return report


def save_zoo(out_dir: str, family: str, fields: dict, params, *, source: dict | None = None,
             hf_config: dict | None = None, extra: dict | None = None) -> str:
  """Write a zoo model directory: zoo_model.json (family, fields, source), params.safetensors (flattened
  '/'-joined names, float32, layers unrolled) and, when given, hf_config.json. Returns out_dir."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  flat = _flatten(_unstack_layers(_plain(params)))
  save_file({'/'.join(p): np.ascontiguousarray(v, dtype=np.float32) for p, v in flat.items()},
            os.path.join(out_dir, PARAMS_FILE), metadata={'format': 'zoo', 'family': family})
  meta = {'format': 'zoo-model', 'version': 1, 'family': family, 'size': _closest_size(family, fields),
          'fields': _model_fields(fields), 'params': PARAMS_FILE, 'source': source or {}, **(extra or {})}
  _write_json(os.path.join(out_dir, ZOO_CONFIG), meta)
  if hf_config is not None:
    _write_json(os.path.join(out_dir, HF_CONFIG_COPY), hf_config)
  return out_dir


def load_zoo(path: str, **overrides) -> tuple[Any, dict, str, dict]:
  """Read a zoo model directory (or its params.safetensors): (model, params, family, fields), as `load_hf`.
  Its tokenizer: `load_zoo_tokenizer(path)`; everything ready to generate: `zoo.load(path)`."""
  from safetensors.numpy import load_file
  from zoo import models
  directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  meta_path = os.path.join(directory, ZOO_CONFIG)
  if not os.path.exists(meta_path):
    raise ConversionError(f'{directory} has no {ZOO_CONFIG}: give a directory written by '
                          f'`python -m zoo.convert import` (or save_zoo)')
  with open(meta_path) as f:
    meta = json.load(f)
  params_path = path if not os.path.isdir(path) else os.path.join(directory, meta.get('params', PARAMS_FILE))
  family, fields = meta['family'], meta['fields']
  model = models.get_model(family, meta.get('size', 'tiny'), **fields, **overrides)
  params = _unflatten({tuple(k.split('/')): v for k, v in load_file(params_path).items()})
  if getattr(model, 'scan_layers', False):
    params = _stack_layers(params)
  return model, params, family, fields


def load_zoo_tokenizer(path: str):
  """The HF tokenizer of a zoo model directory (or its params.safetensors) as a
  `zoo.data.hf_tokenizer.HFTokenizer`, with the missing special ids filled in from hf_config.json; None when
  the directory has no hf_tokenizer/ or nothing in it that HFTokenizer reads."""
  from zoo.data import hf_tokenizer
  directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  tok_dir = os.path.join(directory, HF_TOKENIZER_DIR)
  if not os.path.isdir(tok_dir) or hf_tokenizer.usable_files(tok_dir) is None:
    return None
  config_path = os.path.join(directory, HF_CONFIG_COPY)
  config = {}
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return hf_tokenizer.HFTokenizer.load(tok_dir, config=config)


def import_hf(hf_dir: str, out_dir: str) -> dict:
  """`python -m zoo.convert import`: a HF directory -> a zoo model directory (see the module docstring),
  vocabulary files copied to out_dir/hf_tokenizer/. Returns a summary (what the CLI prints)."""
  model, params, family, fields, info = _load_hf(hf_dir, {})
  tok = tokenizer_report(hf_dir)
  if tok['files']:
    os.makedirs(os.path.join(out_dir, HF_TOKENIZER_DIR), exist_ok=True)
    for name in tok['files']:
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out_dir, HF_TOKENIZER_DIR, name))
  source = {'hf_dir': os.path.abspath(hf_dir), 'model_type': info['config'].get('model_type'),
            'architectures': info['config'].get('architectures')}
  save_zoo(out_dir, family, fields, params, source=source, hf_config=info['config'],
           extra={'fresh_params': info['fresh'], 'tokenizer': tok})
  n = sum(int(np.prod(v.shape)) for v in _flatten(params).values())
  return {'out': out_dir, 'family': family, 'params': n, 'fields': fields, 'fresh_params': info['fresh'],
          'tokenizer': tok}


# ----------------------------------------------------------------------------------------- export API

def _plain(params) -> dict:
  """Any params tree (boxed or not, jax or numpy leaves) -> nested dicts of numpy arrays."""
  import flax.linen as nn
  import jax
  params = jax.device_get(nn.unbox(params))
  return _unflatten({p: np.asarray(v) for p, v in _flatten(params).items()})


def model_fields(model) -> dict:
  """A zoo model's fields as JSON-serialisable values (dtype and adapters left out)."""
  skip = {'parent', 'name', 'dtype', 'adapters'}
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in skip}


def zoo_to_hf_config(family: str, model, extra: dict | None = None) -> dict:
  """The HF config.json dict for a zoo BERT / GPT / T5 model (ConversionError for what HF cannot express)."""
  f = model_fields(model)

  def refuse(field, why):
    raise ConversionError(f'model.{field}={f.get(field)!r}: {why}; HF {family} cannot express it')

  act = f.get('activation')
  if f.get('head', 'pretraining') != 'pretraining':
    refuse('head', 'zoo exports the pretraining heads (BertForPreTraining), not a fine-tuning task head')
  if family == 'bert':
    if f['embedding_dim'] not in (None, f['embed_dim']):
      refuse('embedding_dim', 'a factorized embedding is ALBERT')
    if f['share_layers']:
      refuse('share_layers', 'shared layers are ALBERT')
    if act not in _ZOO_ACT:
      refuse('activation', f'HF BERT takes one of {sorted(_ZOO_ACT)}')
    config = dict(architectures=['BertForPreTraining'], model_type='bert', vocab_size=f['vocab_size'],
                  hidden_size=f['embed_dim'], num_hidden_layers=f['num_layers'],
                  num_attention_heads=f['num_heads'], intermediate_size=f['mlp_dim'], hidden_act=_ZOO_ACT[act],
                  hidden_dropout_prob=f['dropout_rate'], attention_probs_dropout_prob=f['dropout_rate'],
                  max_position_embeddings=f['max_len'], type_vocab_size=f['type_vocab_size'],
                  initializer_range=0.02, layer_norm_eps=f['norm_eps'], pad_token_id=f['pad_id'],
                  position_embedding_type='absolute', is_decoder=False, add_cross_attention=False,
                  tie_word_embeddings=True, use_cache=True)
  elif family == 'gpt':
    if f['position'] != 'learned':
      refuse('position', 'GPT-2 has learned absolute positions')
    if f['norm'] != 'layernorm':
      refuse('norm', 'GPT-2 uses LayerNorm')
    if act not in _ZOO_ACT:
      refuse('activation', f'GPT-2 takes one of {sorted(_ZOO_ACT)}')
    config = dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', vocab_size=f['vocab_size'],
                  n_positions=f['max_len'], n_embd=f['embed_dim'], n_layer=f['num_layers'], n_head=f['num_heads'],
                  n_inner=f['mlp_dim'], activation_function=_ZOO_ACT[act], resid_pdrop=f['dropout_rate'],
                  embd_pdrop=f['dropout_rate'], attn_pdrop=f['dropout_rate'], layer_norm_epsilon=f['norm_eps'],
                  initializer_range=0.02, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                  reorder_and_upcast_attn=False, add_cross_attention=False, use_cache=True,
                  tie_word_embeddings=bool(f['tie_embeddings']))
  elif family == 't5':
    for field, want in (('position', 'relative'), ('norm', 'rmsnorm'), ('pre_ln', True), ('use_bias', False),
                        ('attention_scale', 1.0), ('embedding_norm', False)):
      if f[field] != want:
        refuse(field, f'T5 has {field}={want!r} (is this BART?)')
    if act in _T5_GATED_FF:
      ff = _T5_GATED_FF[act]
    elif act in _ZOO_ACT:
      ff = _ZOO_ACT[act]
    else:
      refuse('activation', f'T5 takes one of {sorted(_ZOO_ACT) + sorted(_T5_GATED_FF)}')
    # Tied and scaled (T5 v1.0) is tie_word_embeddings=True; any other head is written out as lm_head with
    # tie_word_embeddings=False (transformers 4 and 5 both read that as "no scaling").
    scaled = bool(f['tie_embeddings'] and f['scale_tied_logits'])
    config = dict(architectures=['T5ForConditionalGeneration'], model_type='t5', vocab_size=f['vocab_size'],
                  d_model=f['embed_dim'], d_kv=f['head_dim'], d_ff=f['mlp_dim'],
                  num_layers=f['num_encoder_layers'], num_decoder_layers=f['num_decoder_layers'],
                  num_heads=f['num_heads'], relative_attention_num_buckets=f['relative_buckets'],
                  relative_attention_max_distance=f['relative_max_distance'], dropout_rate=f['dropout_rate'],
                  layer_norm_epsilon=f['norm_eps'], initializer_factor=1.0, feed_forward_proj=ff,
                  is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                  tie_word_embeddings=scaled, scale_decoder_outputs=scaled, use_cache=True)
  else:
    raise ConversionError(f'export supports {list(FAMILIES)}, not {family!r}')
  for key, value in (extra or {}).items():
    if key.endswith('token_id') or key in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
      config[key] = value
  return config


def params_to_hf_weights(family: str, model, params) -> dict[str, np.ndarray]:
  """zoo params -> {HF name: float32 array}, the tensors `save_pretrained` would write (tied copies left
  out: BERT's MLM decoder, GPT-2's and T5 v1.0's lm_head)."""
  f = model_fields(model)
  flat = _flatten(_unstack_layers(_plain(params)))
  fields = dict(f)
  if family == 't5':
    fields['tie_embeddings'] = bool(f['tie_embeddings'] and f['scale_tied_logits'])
  out = {}
  for zoo, hf, kind, _ in _mapping(family, fields):
    if zoo == ('lm_head', 'kernel') and family == 't5' and f['tie_embeddings']:
      value = flat[('token_embed', 'embedding')]  # tied but unscaled: write the head out (see zoo_to_hf_config)
    else:
      if zoo not in flat:
        raise ConversionError(f'params have no {"/".join(zoo)} (is this a {family} model?)')
      value = flat[zoo].T if kind == 'T' else flat[zoo]
    out[hf] = np.ascontiguousarray(value, dtype=np.float32)
  if family == 'gpt':  # fuse q, k, v into Conv1D c_attn [in, 3 * out]
    for name in [k for k in out if '.attn.c_attn.q.' in k]:
      base, kind = name.split('.attn.c_attn.q.')
      out[f'{base}.attn.c_attn.{kind}'] = np.concatenate(
          [out.pop(f'{base}.attn.c_attn.{p}.{kind}') for p in 'qkv'], axis=-1)
  return out


def export_hf(model, params, family: str, out_dir: str, *, extra_config: dict | None = None) -> str:
  """Write a zoo BERT / GPT / T5 model as a HuggingFace directory (config.json + model.safetensors) that
  `transformers` loads as BertForPreTraining / GPT2LMHeadModel / T5ForConditionalGeneration. LoRA adapters are
  merged into the kernels first; prefix tuning cannot be exported. `extra_config` adds token ids
  (bos/eos/pad/decoder_start). Returns out_dir."""
  from safetensors.numpy import save_file
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
  save_file(weights, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  _write_json(os.path.join(out_dir, 'config.json'), config)
  return out_dir


def load_workdir(workdir: str, step: int | None = None) -> tuple[Any, dict, str, dict]:
  """Restore the params of a train.py workdir (config.json + checkpoints/<step>/state) onto one device:
  (model, params, family, fields). The model is built as train.py builds it (`zoo.trainer.build`)."""
  import jax
  import ml_collections
  from zoo import checkpoint as ckpt_lib
  from zoo import trainer
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConversionError(f'{workdir} has no config.json: give the --workdir of a train.py run')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.data.tokenizer == 'train' and not os.path.exists(os.path.join(workdir, 'tokenizer.model')):
    raise ConversionError(f'{workdir} has no tokenizer.model (data.tokenizer=train): not a finished run')
  config.mesh.rules = tuple(tuple(r) for r in config.mesh.rules)
  config.parallelism, config.mesh.devices = 'jit', 1  # restore onto one device, whatever the run used
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  run = trainer.build(config, os.path.abspath(workdir))
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=max(config.checkpoint.keep, 1), async_save=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise ConversionError(f'no checkpoint in {checkpointer.directory}')
    state = trainer._restore_state(run, checkpointer, step)  # pylint: disable=protected-access
  finally:
    checkpointer.close()
  params = _plain(jax.device_get(state.params))
  model = run.model
  return model, params, config.model.family, model_fields(model)


# ----------------------------------------------------------------------------------------- CLI

def _write_json(path: str, obj) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
    f.write('\n')
  os.replace(path + '.tmp', path)


def main(argv=None) -> int:
  """`python -m zoo.convert import|export ...` (see the module docstring)."""
  parser = argparse.ArgumentParser(prog='python -m zoo.convert', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p_imp = sub.add_parser('import', help='HuggingFace directory -> zoo model directory')
  p_imp.add_argument('--hf_dir', required=True, help='HF model directory: config.json + model.safetensors')
  p_imp.add_argument('--out', required=True, help='zoo model directory to write')
  p_exp = sub.add_parser('export', help='zoo model directory or train.py workdir -> HuggingFace directory')
  p_exp.add_argument('--family', choices=FAMILIES, help='bert, gpt or t5 (checked against the source)')
  p_exp.add_argument('--params', help='a zoo model directory (from `import`) or its params.safetensors')
  p_exp.add_argument('--workdir', help='a train.py workdir: its newest (or --step) checkpoint')
  p_exp.add_argument('--step', type=int, default=None, help='with --workdir: the checkpoint step')
  p_exp.add_argument('--out', required=True, help='HF directory to write')
  args = parser.parse_args(argv)
  try:
    if args.command == 'import':
      summary = import_hf(args.hf_dir, args.out)
      print(f"wrote {summary['out']}: zoo {summary['family']} with {summary['params']:,} parameters "
            f"({json.dumps(summary['fields'])})")
      if summary['fresh_params']:
        print(f"  not in the checkpoint, initialised at random: {summary['fresh_params']}")
      if summary['tokenizer'].get('files'):
        print(f"  vocabulary copied to {os.path.join(args.out, HF_TOKENIZER_DIR)}: "
              f"{summary['tokenizer']['files']}"
              + (f" (read as an HFTokenizer from {summary['tokenizer']['hf_tokenizer']})"
                 if summary['tokenizer'].get('hf_tokenizer') else ''))
      if summary['tokenizer'].get('note'):
        print(f"  note: {summary['tokenizer']['note']}")
      return 0
    if bool(args.params) == bool(args.workdir):
      parser.error('export takes one of --params (a zoo model directory) or --workdir (a train.py run)')
    extra, tok_src = {}, []
    if args.params:
      model, params, family, _ = load_zoo(args.params)
      directory = args.params if os.path.isdir(args.params) else os.path.dirname(os.path.abspath(args.params))
      hf_config = os.path.join(directory, HF_CONFIG_COPY)
      if os.path.exists(hf_config):
        with open(hf_config) as f:
          extra = {k: v for k, v in json.load(f).items() if k.endswith('token_id')}
      tok_dir = os.path.join(directory, HF_TOKENIZER_DIR)
      if os.path.isdir(tok_dir):
        tok_src = [(os.path.join(tok_dir, n), n) for n in sorted(os.listdir(tok_dir))]
    else:
      model, params, family, _ = load_workdir(args.workdir, args.step)
      from zoo.data import tokenizer as tk
      extra = {'pad_token_id': tk.PAD, 'bos_token_id': tk.BOS, 'eos_token_id': tk.EOS}
      if family == 't5':
        extra['decoder_start_token_id'] = tk.PAD
      spm_path = os.path.join(args.workdir, 'tokenizer.model')
      if os.path.exists(spm_path):  # zoo's SentencePiece model, under a name HF tokenizers do not pick up
        tok_src = [(spm_path, 'zoo_tokenizer.model')]
    if args.family and args.family != family:
      parser.error(f'--family={args.family} but the source holds a {family} model')
    export_hf(model, params, family, args.out, extra_config=extra)
    for src, name in tok_src:
      shutil.copyfile(src, os.path.join(args.out, name))
    arch = zoo_to_hf_config(family, model)['architectures'][0]
    print(f'wrote {args.out}: config.json + model.safetensors ({arch})'
          + (f'; tokenizer files {[n for _, n in tok_src]}' if tok_src else ''))
    return 0
  except (ConversionError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
  raise SystemExit(main())

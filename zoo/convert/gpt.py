"""GPT <-> HF `gpt2` (GPT2LMHeadModel, GPT2Model): learned positions, pre-LN with LayerNorm, Conv1D weights
([in, out], so nothing is transposed) with q, k, v fused in c_attn, the head tied to wte or not."""
from __future__ import annotations

import re

import numpy as np

from zoo.convert import common
from zoo.convert.common import dense, norm


def _wte(weights):
  return weights.get('transformer.wte.weight', weights.get('wte.weight'))


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo GPT fields from a HF GPT2Config dict; the head is tied unless the checkpoint's lm_head differs from
  wte (or a GPT2Model was saved with tie_word_embeddings=False)."""
  common.check_stack(config, decoder_ok=True)
  common.require(config, 'scale_attn_weights', config.get('scale_attn_weights', True),
                 'zoo always scales attention logits by 1/sqrt(head_dim)')
  common.require(config, 'scale_attn_by_inverse_layer_idx', not config.get('scale_attn_by_inverse_layer_idx', False),
                 'zoo has no per-layer attention scaling')
  hidden, heads = config['n_embd'], config['n_head']
  common.require(config, 'n_head', hidden % heads == 0, f'must divide n_embd={hidden}')
  tied = 'lm_head.weight' not in weights or common.same(weights['lm_head.weight'], _wte(weights))
  if 'lm_head.weight' not in weights and config.get('tie_word_embeddings', True) is False:
    tied = False  # GPT2Model saved untied: the head is missing and will be initialised fresh
  return dict(vocab_size=config['vocab_size'], max_len=common.get(config, 'n_positions', 'n_ctx', default=1024),
              num_layers=config['n_layer'], embed_dim=hidden, num_heads=heads,
              mlp_dim=common.get(config, 'n_inner', default=4 * hidden),
              activation=common.activation(config, 'activation_function'), position='learned', norm='layernorm',
              norm_eps=config.get('layer_norm_epsilon', 1e-5), tie_embeddings=tied,
              dropout_rate=common.get(config, 'resid_pdrop', default=0.1))


def fields_to_config(f: dict) -> dict:
  """The GPT2LMHeadModel config.json of zoo GPT fields."""
  if f['position'] != 'learned':
    common.refuse('gpt', f, 'position', 'GPT-2 has learned absolute positions')
  if f['norm'] != 'layernorm':
    common.refuse('gpt', f, 'norm', 'GPT-2 uses LayerNorm')
  act = f.get('activation')
  if act not in common.ZOO_ACT:
    common.refuse('gpt', f, 'activation', f'GPT-2 takes one of {sorted(common.ZOO_ACT)}')
  return dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', vocab_size=f['vocab_size'],
              n_positions=f['max_len'], n_embd=f['embed_dim'], n_layer=f['num_layers'], n_head=f['num_heads'],
              n_inner=f['mlp_dim'], activation_function=common.ZOO_ACT[act], resid_pdrop=f['dropout_rate'],
              embd_pdrop=f['dropout_rate'], attn_pdrop=f['dropout_rate'], layer_norm_epsilon=f['norm_eps'],
              initializer_range=0.02, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
              reorder_and_upcast_attn=False, add_cross_attention=False, use_cache=True,
              tie_word_embeddings=bool(f['tie_embeddings']))


def mapping(f: dict, weights: dict | None = None) -> list:
  """zoo path <-> HF name (c_attn as q, k, v: see rename_hf); the 'transformer.' prefix only when the
  checkpoint has it (the original GPT-2 checkpoints have none)."""
  p = 'transformer.' if weights is None or any(k.startswith('transformer.') for k in weights) else ''
  m = [(('token_embed', 'embedding'), f'{p}wte.weight', 'copy', None),
       (('position_embed', 'embedding', 'embedding'), f'{p}wpe.weight', 'copy', None)]
  for i in range(f['num_layers']):
    L, z = f'{p}h.{i}.', f'layers_{i}'
    m += norm((z, 'self_attention_norm'), f'{L}ln_1')
    for name, part in (('query', 'q'), ('key', 'k'), ('value', 'v')):
      m += dense((z, 'self_attention', name), f'{L}attn.c_attn.{part}', kind='copy')
    m += dense((z, 'self_attention', 'out'), f'{L}attn.c_proj', kind='copy')
    m += norm((z, 'mlp_norm'), f'{L}ln_2')
    m += dense((z, 'mlp', 'wi'), f'{L}mlp.c_fc', kind='copy')
    m += dense((z, 'mlp', 'wo'), f'{L}mlp.c_proj', kind='copy')
  m += norm(('final_norm',), f'{p}ln_f')
  if not f.get('tie_embeddings', True):
    m += dense(('lm_head',), 'lm_head', bias=False, group='lm_head')
  return m


def rename_hf(weights: dict) -> dict:
  """The fused c_attn [in, 3 * out] split into c_attn.q, c_attn.k, c_attn.v."""
  out = {}
  for name, value in weights.items():
    if re.search(r'\.attn\.c_attn\.(weight|bias)$', name):
      base, kind = name.rsplit('.', 1)
      for part, chunk in zip('qkv', np.split(value, 3, axis=-1)):
        out[f'{base}.{part}.{kind}'] = np.ascontiguousarray(chunk)
      continue
    out[name] = value
  return out


def drop_tied(weights: dict, fields: dict) -> None:
  if fields['tie_embeddings']:
    weights.pop('lm_head.weight', None)  # equal to wte (checked in config_to_fields)


def fuse_qkv(out: dict) -> dict:
  """c_attn.q, .k, .v fused back into Conv1D c_attn [in, 3 * out]."""
  for name in [k for k in out if '.attn.c_attn.q.' in k]:
    base, kind = name.split('.attn.c_attn.q.')
    out[f'{base}.attn.c_attn.{kind}'] = np.concatenate(
        [out.pop(f'{base}.attn.c_attn.{p}.{kind}') for p in 'qkv'], axis=-1)
  return out


CONVERTER = common.Converter(
    family='gpt', model_types=('gpt2',), architectures=('GPT2LMHeadModel', 'GPT2Model'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=(re.compile(r'(^|\.)h\.\d+\.attn\.(bias|masked_bias)$'),),  # GPT-2's causal-mask buffers
    rename_hf=rename_hf, drop_tied=drop_tied, after_export=fuse_qkv)

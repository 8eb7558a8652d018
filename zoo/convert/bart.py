"""BART <-> HF `bart` (BartForConditionalGeneration, BartModel): learned positions (HF's tables have 2 more rows,
never read: position i is row i + 2), layernorm_embedding, post-LN with LayerNorm (eps 1e-5) and biases, one
token embedding `shared` by both stacks, the head tied to it or not, and a final_logits_bias zoo does not have
(it must be zero)."""
from __future__ import annotations

import re

import numpy as np

from zoo.convert import common
from zoo.convert.common import ConversionError, dense, norm

OFFSET = 2  # BartLearnedPositionalEmbedding: rows 0 and 1 are never looked up
LEGACY = {'normalize_before': False, 'add_final_layer_norm': False, 'normalize_embedding': True,
          'static_position_embeddings': False, 'add_bias_logits': False}  # old BartConfig variants (mBART, ...)
POSITIONS = re.compile(r'(^|\.)(encoder|decoder)\.embed_positions\.weight$')


def _prefix(weights: dict | None) -> str:
  """'model.' unless the checkpoint has no such names (BartModel saves none)."""
  return 'model.' if weights is None or any(k.startswith('model.') for k in weights) else ''


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo BART fields from a HF BartConfig dict; the head is tied unless the checkpoint's lm_head differs from
  `shared` (or a BartModel was saved with tie_word_embeddings=False)."""
  common.check_stack(config, decoder_ok=False)
  for field, want in LEGACY.items():
    common.require(config, field, config.get(field, want) == want, f"zoo's BART has {field}={want}")
  common.require(config, 'scale_embedding', not config.get('scale_embedding', False),
                 "zoo's BART does not scale the token embeddings by sqrt(d_model)")
  d, heads = config['d_model'], config['encoder_attention_heads']
  for enc, dec in (('encoder_attention_heads', 'decoder_attention_heads'), ('encoder_ffn_dim', 'decoder_ffn_dim')):
    common.require(config, dec, config.get(dec, config[enc]) == config[enc],
                   f'must equal {enc}={config[enc]}: zoo has one value for both stacks')
  common.require(config, 'encoder_attention_heads', d % heads == 0, f'must divide d_model={d}')
  p = _prefix(weights)
  shared = common.get(weights, f'{p}shared.weight', f'{p}encoder.embed_tokens.weight')  # see rename_hf
  tied = 'lm_head.weight' not in weights or common.same(weights['lm_head.weight'], shared)
  if 'lm_head.weight' not in weights and config.get('tie_word_embeddings', True) is False:
    tied = False  # BartModel saved untied: the head is missing and will be initialised fresh
  return dict(vocab_size=config['vocab_size'], max_len=config.get('max_position_embeddings', 1024),
              num_encoder_layers=config['encoder_layers'], num_decoder_layers=config['decoder_layers'], embed_dim=d,
              num_heads=heads, head_dim=d // heads, mlp_dim=config['encoder_ffn_dim'],
              activation=common.activation(config, 'activation_function'), position='learned', norm='layernorm',
              norm_eps=1e-5, pre_ln=False, use_bias=True, attention_scale=None, embedding_norm=True,
              mesh_tf_init=False, tie_embeddings=tied, scale_tied_logits=False,
              dropout_rate=common.get(config, 'dropout', default=0.1), pad_id=config.get('pad_token_id', 1))


def fields_to_config(f: dict) -> dict:
  """The BartForConditionalGeneration config.json of zoo BART fields."""
  for field, want in (('position', 'learned'), ('norm', 'layernorm'), ('norm_eps', 1e-5), ('pre_ln', False),
                      ('use_bias', True), ('embedding_norm', True)):
    if f[field] != want:
      common.refuse('bart', f, field, f'BART has {field}={want!r}')
  if f['head_dim'] * f['num_heads'] != f['embed_dim']:
    common.refuse('bart', f, 'head_dim', "BART's heads split d_model: head_dim = embed_dim / num_heads")
  if f['attention_scale'] not in (None, f['head_dim'] ** -0.5):
    common.refuse('bart', f, 'attention_scale', 'BART scales attention logits by 1/sqrt(head_dim)')
  if f['tie_embeddings'] and f['scale_tied_logits']:
    common.refuse('bart', f, 'scale_tied_logits', "BART's tied head does not scale the decoder output")
  act = f.get('activation')
  if act not in common.ZOO_ACT:
    common.refuse('bart', f, 'activation', f'BART takes one of {sorted(common.ZOO_ACT)}')
  return dict(architectures=['BartForConditionalGeneration'], model_type='bart', vocab_size=f['vocab_size'],
              max_position_embeddings=f['max_len'], d_model=f['embed_dim'], encoder_layers=f['num_encoder_layers'],
              decoder_layers=f['num_decoder_layers'], encoder_attention_heads=f['num_heads'],
              decoder_attention_heads=f['num_heads'], encoder_ffn_dim=f['mlp_dim'], decoder_ffn_dim=f['mlp_dim'],
              activation_function=common.ZOO_ACT[act], dropout=f['dropout_rate'],
              attention_dropout=f['dropout_rate'], activation_dropout=f['dropout_rate'], encoder_layerdrop=0.0,
              decoder_layerdrop=0.0, init_std=0.02, scale_embedding=False, is_encoder_decoder=True,
              pad_token_id=f.get('pad_id', 1), bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
              tie_word_embeddings=bool(f['tie_embeddings']), use_cache=True)


def mapping(f: dict, weights: dict | None = None) -> list:
  """zoo path <-> HF name: the shared embedding, each stack's positions, layernorm_embedding and layers, lm_head
  if untied."""
  p = _prefix(weights)
  m = [(('token_embed', 'embedding'), f'{p}shared.weight', 'copy', None)]
  for stack, n in (('encoder', f['num_encoder_layers']), ('decoder', f['num_decoder_layers'])):
    S = f'{p}{stack}.'
    m.append(((stack, 'position_embed', 'embedding', 'embedding'), f'{S}embed_positions.weight', 'copy', None))
    m += norm((stack, 'embed_norm'), f'{S}layernorm_embedding')
    for i in range(n):
      L, z = f'{S}layers.{i}.', (stack, f'layers_{i}')
      subs = [('self_attention', 'self_attn')] + ([('cross_attention', 'encoder_attn')] if stack == 'decoder'
                                                  else [])
      for zname, hname in subs:
        for name, part in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj'), ('out', 'out_proj')):
          m += dense((*z, zname, name), f'{L}{hname}.{part}')
        m += norm((*z, f'{zname}_norm'), f'{L}{hname}_layer_norm')
      m += dense((*z, 'mlp', 'wi'), f'{L}fc1')
      m += dense((*z, 'mlp', 'wo'), f'{L}fc2')
      m += norm((*z, 'mlp_norm'), f'{L}final_layer_norm')
  if not f.get('tie_embeddings', True):
    m += dense(('lm_head',), 'lm_head', bias=False, group='lm_head')
  return m


def rename_hf(weights: dict) -> dict:
  """A checkpoint with the stacks' embed_tokens but no `shared`: the encoder's is `shared`."""
  p = _prefix(weights)
  if f'{p}shared.weight' not in weights and f'{p}encoder.embed_tokens.weight' in weights:
    weights[f'{p}shared.weight'] = weights[f'{p}encoder.embed_tokens.weight']
  return weights


def drop_tied(weights: dict, fields: dict) -> None:
  """The stacks' copies of `shared` must equal it, final_logits_bias must be zero; a tied lm_head is consumed."""
  p = _prefix(weights)
  for name in (f'{p}encoder.embed_tokens.weight', f'{p}decoder.embed_tokens.weight'):
    copy = weights.pop(name, None)
    if copy is not None and not common.same(copy, weights.get(f'{p}shared.weight')):
      raise ConversionError(f'{name} differs from {p}shared.weight: zoo\'s BART shares one token embedding')
  bias = weights.pop('final_logits_bias', None)
  if bias is not None and np.any(bias):
    raise ConversionError("final_logits_bias is not zero: zoo's BART has no bias on its output logits")
  if fields['tie_embeddings']:
    weights.pop('lm_head.weight', None)  # equal to shared (checked in config_to_fields)


def drop_offset(flat: dict, fields: dict) -> dict:
  """HF's position tables without their 2 unused rows."""
  for stack in ('encoder', 'decoder'):
    path = (stack, 'position_embed', 'embedding', 'embedding')
    if path in flat:
      flat[path] = flat[path][OFFSET:]
  return flat


def add_offset(out: dict) -> dict:
  """zoo's position tables with HF's 2 unused rows (zeros) before them; final_logits_bias (zeros); an untied
  model's stacks get their embed_tokens (transformers 5 unties them from `shared` when the head is untied)."""
  for name in [k for k in out if POSITIONS.search(k)]:
    out[name] = np.concatenate([np.zeros((OFFSET, out[name].shape[1]), np.float32), out[name]])
  shared = out['model.shared.weight']
  out['final_logits_bias'] = np.zeros((1, len(shared)), np.float32)
  if 'lm_head.weight' in out:
    for stack in ('encoder', 'decoder'):
      out[f'model.{stack}.embed_tokens.weight'] = shared
  return out


CONVERTER = common.Converter(
    family='bart', model_types=('bart',), architectures=('BartForConditionalGeneration', 'BartModel'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=(re.compile(r'(^|\.)(encoder|decoder)\.version$'),), rename_hf=rename_hf, drop_tied=drop_tied,
    after_import=drop_offset, after_export=add_offset)

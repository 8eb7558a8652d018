"""T5 <-> HF `t5` / `mt5` (T5ForConditionalGeneration, T5Model, MT5*): relative position buckets, RMSNorm,
pre-LN, no biases; v1.0 `relu` with the head tied and scaled by d_model**-0.5, v1.1 `gated-gelu` (zoo `geglu`)
with a separate head."""
from __future__ import annotations

import re

import numpy as np

from zoo.convert import common
from zoo.convert.common import ConversionError, dense, norm

GATED = {'gelu_tanh': 'geglu', 'silu': 'swiglu', 'relu': 'reglu'}  # zoo activation -> its gated name
GATED_FF = {'geglu': 'gated-gelu', 'reglu': 'gated-relu', 'swiglu': 'gated-silu'}  # -> HF feed_forward_proj
LM_HEAD = ('lm_head', 'kernel')


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo T5 fields from a HF T5Config dict. '_scale_head' (not a model field) marks a scaled untied head,
  whose scale the import folds into the kernel."""
  common.check_stack(config, decoder_ok=False)
  ff = config.get('feed_forward_proj', 'relu')
  parts = ff.split('-')
  common.require(config, 'feed_forward_proj', len(parts) == 1 or (len(parts) == 2 and parts[0] == 'gated'),
                 "expected 'relu', 'gated-gelu' or 'gated-<act>'")
  act_name = 'gelu_new' if ff == 'gated-gelu' else parts[-1]  # as T5Config.__post_init__ does
  common.require(config, 'feed_forward_proj', act_name in common.HF_ACT, f'zoo has no activation {act_name!r}')
  act = common.HF_ACT[act_name]
  if len(parts) == 2:
    common.require(config, 'feed_forward_proj', act in GATED,
                   f'zoo has no gated form of {act_name!r}; it has {sorted(GATED_FF.values())}')
    act = GATED[act]
  # transformers <5 writes tie_word_embeddings (True: lm_head tied to `shared` and the decoder output scaled
  # by d_model**-0.5); 5.x writes scale_decoder_outputs and always ties T5's head, saving `shared` only. The
  # lm_head weights, when present and different from `shared`, make an untied head; a scaled untied head has
  # the scale folded into its kernel (zoo's untied head does not scale).
  scale = bool(config.get('scale_decoder_outputs', config.get('tie_word_embeddings', True) is not False))
  head = weights.get('lm_head.weight')
  tied = head is None or common.same(head, weights.get('shared.weight'))
  return dict(vocab_size=config['vocab_size'], num_encoder_layers=config['num_layers'],
              num_decoder_layers=common.get(config, 'num_decoder_layers', 'num_layers'), embed_dim=config['d_model'],
              num_heads=config['num_heads'], head_dim=config['d_kv'], mlp_dim=config['d_ff'], activation=act,
              norm='rmsnorm', norm_eps=config.get('layer_norm_epsilon', 1e-6), pre_ln=True, use_bias=False,
              position='relative', relative_buckets=config.get('relative_attention_num_buckets', 32),
              relative_max_distance=config.get('relative_attention_max_distance', 128),
              attention_scale=1.0, embedding_norm=False, tie_embeddings=tied,
              scale_tied_logits=scale if tied else False,
              dropout_rate=common.get(config, 'dropout_rate', default=0.1), _scale_head=scale and not tied)


def fields_to_config(f: dict) -> dict:
  """The T5ForConditionalGeneration config.json of zoo T5 fields."""
  for field, want in (('position', 'relative'), ('norm', 'rmsnorm'), ('pre_ln', True), ('use_bias', False),
                      ('attention_scale', 1.0), ('embedding_norm', False)):
    if f[field] != want:
      common.refuse('t5', f, field, f'T5 has {field}={want!r} (is this BART?)')
  act = f.get('activation')
  if act in GATED_FF:
    ff = GATED_FF[act]
  elif act in common.ZOO_ACT:
    ff = common.ZOO_ACT[act]
  else:
    common.refuse('t5', f, 'activation', f'T5 takes one of {sorted(common.ZOO_ACT) + sorted(GATED_FF)}')
  # Tied and scaled (T5 v1.0) is tie_word_embeddings=True; any other head is written out as lm_head with
  # tie_word_embeddings=False (transformers 4 and 5 both read that as "no scaling").
  scaled = _tied_and_scaled(f)
  return dict(architectures=['T5ForConditionalGeneration'], model_type='t5', vocab_size=f['vocab_size'],
              d_model=f['embed_dim'], d_kv=f['head_dim'], d_ff=f['mlp_dim'], num_layers=f['num_encoder_layers'],
              num_decoder_layers=f['num_decoder_layers'], num_heads=f['num_heads'],
              relative_attention_num_buckets=f['relative_buckets'],
              relative_attention_max_distance=f['relative_max_distance'], dropout_rate=f['dropout_rate'],
              layer_norm_epsilon=f['norm_eps'], initializer_factor=1.0, feed_forward_proj=ff,
              is_encoder_decoder=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
              tie_word_embeddings=scaled, scale_decoder_outputs=scaled, use_cache=True)


def _tied_and_scaled(f: dict) -> bool:
  return bool(f['tie_embeddings'] and f['scale_tied_logits'])


def mapping(f: dict, weights: dict | None = None) -> list:
  """zoo path <-> HF name: the shared embedding, both stacks (the relative bias in block 0), lm_head if
  untied."""
  m = [(('token_embed', 'embedding'), 'shared.weight', 'copy', None)]
  gated = f['activation'] in GATED_FF
  for stack, n in (('encoder', f['num_encoder_layers']), ('decoder', f['num_decoder_layers'])):
    m.append(((stack, 'relative_bias', 'rel_embedding'),
              f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', 'copy', None))
    for i in range(n):
      B, z = f'{stack}.block.{i}.layer.', (stack, f'layers_{i}')
      subs = [('self_attention', 'SelfAttention')] + ([('cross_attention', 'EncDecAttention')]
                                                       if stack == 'decoder' else [])
      for j, (zname, hname) in enumerate(subs):
        for name, part in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
          m += dense((*z, zname, name), f'{B}{j}.{hname}.{part}', bias=False)
        m += norm((*z, f'{zname}_norm'), f'{B}{j}.layer_norm', bias=False)
      j = len(subs)
      for name in (('wi_0', 'wi_1') if gated else ('wi',)) + ('wo',):
        m += dense((*z, 'mlp', name), f'{B}{j}.DenseReluDense.{name}', bias=False)
      m += norm((*z, 'mlp_norm'), f'{B}{j}.layer_norm', bias=False)
    m += norm((stack, 'final_norm'), f'{stack}.final_layer_norm', bias=False)
  if not f.get('tie_embeddings', True):
    m += dense(('lm_head',), 'lm_head', bias=False, group='lm_head')
  return m


def drop_tied(weights: dict, fields: dict) -> None:
  """The stacks' copies of `shared` must equal it; a tied lm_head is consumed."""
  for name in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
    copy = weights.pop(name, None)
    if copy is not None and not common.same(copy, weights.get('shared.weight')):
      raise ConversionError(f'{name} differs from shared.weight: zoo shares one token embedding')
  if fields['tie_embeddings']:
    weights.pop('lm_head.weight', None)


def scale_head(flat: dict, fields: dict) -> dict:
  """A scaled untied head: HF scales the decoder output before lm_head, zoo folds the scale into the kernel."""
  if fields.get('_scale_head', False) and LM_HEAD in flat:
    flat[LM_HEAD] = flat[LM_HEAD] * np.float32(fields['embed_dim'] ** -0.5)
  return flat


def untie_unscaled_head(flat: dict, fields: dict) -> tuple[dict, dict]:
  """Only a tied and scaled head is tied in HF: a tied unscaled one is written out as lm_head."""
  if fields['tie_embeddings'] and not _tied_and_scaled(fields):
    flat[LM_HEAD] = flat[('token_embed', 'embedding')].T
  return flat, dict(fields, tie_embeddings=_tied_and_scaled(fields))


CONVERTER = common.Converter(
    family='t5', model_types=('t5', 'mt5'),
    architectures=('T5ForConditionalGeneration', 'T5Model', 'MT5ForConditionalGeneration', 'MT5Model'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=(re.compile(r'^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$'),),
    drop_tied=drop_tied, after_import=scale_head, before_export=untie_unscaled_head)

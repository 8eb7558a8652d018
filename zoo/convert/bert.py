"""BERT <-> HF `bert` (BertForPreTraining, BertForMaskedLM, BertModel): absolute learned positions, post-LN,
the MLM decoder tied to the word embeddings."""
from __future__ import annotations

import re

from zoo.convert import common
from zoo.convert.common import dense, norm


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo BERT fields from a HF BertConfig dict."""
  common.check_stack(config, decoder_ok=False)
  common.require(config, 'position_embedding_type', config.get('position_embedding_type', 'absolute') == 'absolute',
                 "zoo's BERT has absolute learned positions only")
  common.require(config, 'tie_word_embeddings', config.get('tie_word_embeddings', True) is not False,
                 "zoo's BERT ties the MLM decoder to the word embeddings")
  hidden, heads = config['hidden_size'], config['num_attention_heads']
  common.require(config, 'num_attention_heads', hidden % heads == 0, f'must divide hidden_size={hidden}')
  common.require(config, 'embedding_size', config.get('embedding_size', hidden) == hidden,
                 'a factorized embedding is ALBERT, not BERT')
  return dict(vocab_size=config['vocab_size'], type_vocab_size=config.get('type_vocab_size', 2),
              max_len=config.get('max_position_embeddings', 512), num_layers=config['num_hidden_layers'],
              embed_dim=hidden, num_heads=heads, mlp_dim=config['intermediate_size'],
              activation=common.activation(config, 'hidden_act'), norm_eps=config.get('layer_norm_eps', 1e-12),
              pad_id=common.get(config, 'pad_token_id', default=0),
              dropout_rate=common.get(config, 'hidden_dropout_prob', default=0.1))


def fields_to_config(f: dict) -> dict:
  """The BertForPreTraining config.json of zoo BERT fields."""
  if f['embedding_dim'] not in (None, f['embed_dim']):
    common.refuse('bert', f, 'embedding_dim', 'a factorized embedding is ALBERT')
  if f['share_layers']:
    common.refuse('bert', f, 'share_layers', 'shared layers are ALBERT')
  if f.get('position_offset', 0):
    common.refuse('bert', f, 'position_offset', 'positions after the padding id are RoBERTa (family roberta)')
  act = f.get('activation')
  if act not in common.ZOO_ACT:
    common.refuse('bert', f, 'activation', f'HF BERT takes one of {sorted(common.ZOO_ACT)}')
  return dict(architectures=['BertForPreTraining'], model_type='bert', vocab_size=f['vocab_size'],
              hidden_size=f['embed_dim'], num_hidden_layers=f['num_layers'], num_attention_heads=f['num_heads'],
              intermediate_size=f['mlp_dim'], hidden_act=common.ZOO_ACT[act], hidden_dropout_prob=f['dropout_rate'],
              attention_probs_dropout_prob=f['dropout_rate'], max_position_embeddings=f['max_len'],
              type_vocab_size=f['type_vocab_size'], initializer_range=0.02, layer_norm_eps=f['norm_eps'],
              pad_token_id=f['pad_id'], position_embedding_type='absolute', is_decoder=False,
              add_cross_attention=False, tie_word_embeddings=True, use_cache=True)


def mapping(f: dict, weights: dict | None = None) -> list:
  """zoo path <-> HF name; the 'bert.' prefix only when the checkpoint has it (BertModel saves none)."""
  p = 'bert.' if weights is None or any(k.startswith('bert.') for k in weights) else ''
  m = [(('token_embed', 'embedding'), f'{p}embeddings.word_embeddings.weight', 'copy', None),
       (('position_embed', 'embedding'), f'{p}embeddings.position_embeddings.weight', 'copy', None),
       (('type_embed', 'embedding'), f'{p}embeddings.token_type_embeddings.weight', 'copy', None)]
  m += norm(('embed_norm',), f'{p}embeddings.LayerNorm')
  for i in range(f['num_layers']):
    L, z = f'{p}encoder.layer.{i}.', f'layers_{i}'
    for name in ('query', 'key', 'value'):
      m += dense((z, 'self_attention', name), f'{L}attention.self.{name}')
    m += dense((z, 'self_attention', 'out'), f'{L}attention.output.dense')
    m += norm((z, 'self_attention_norm'), f'{L}attention.output.LayerNorm')
    m += dense((z, 'mlp', 'wi'), f'{L}intermediate.dense')
    m += dense((z, 'mlp', 'wo'), f'{L}output.dense')
    m += norm((z, 'mlp_norm'), f'{L}output.LayerNorm')
  m += dense(('pooler',), f'{p}pooler.dense', group='pooler')
  m += dense(('mlm_transform',), 'cls.predictions.transform.dense', group='mlm')
  m += norm(('mlm_norm',), 'cls.predictions.transform.LayerNorm', group='mlm')
  m += [(('mlm_bias',), 'cls.predictions.bias', 'copy', 'mlm')]
  m += dense(('nsp',), 'cls.seq_relationship', group='nsp')
  return m


def rename_hf(weights: dict) -> dict:
  """TF-era LayerNorm gamma / beta -> weight / bias."""
  out = {}
  for name, value in weights.items():
    if 'LayerNorm.' in name:
      name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', name)
      name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    out[name] = value
  return out


def drop_tied(weights: dict, fields: dict) -> None:
  """The MLM decoder weight (and its bias) a checkpoint may store must equal what zoo ties them to."""
  emb = next((v for k, v in weights.items() if k.endswith('embeddings.word_embeddings.weight')), None)
  common.drop_tied_decoder(weights, emb, 'cls.predictions.decoder', 'cls.predictions.bias', 'BERT')


CONVERTER = common.Converter(
    family='bert', model_types=('bert',),
    architectures=('BertForPreTraining', 'BertForMaskedLM', 'BertModel'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=(re.compile(r'(^|\.)embeddings\.position_ids$'),), rename_hf=rename_hf, drop_tied=drop_tied)

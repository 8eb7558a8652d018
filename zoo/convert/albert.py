"""ALBERT <-> HF `albert` (AlbertForPreTraining, AlbertForMaskedLM, AlbertModel): BERT's post-LN encoder with a
factorized embedding (vocab x E, then embedding_hidden_mapping_in E -> H), one layer group shared by every layer
(or one group per layer: zoo's share_layers=False), the MLM decoder tied to the word embeddings, the SOP head."""
from __future__ import annotations

import re

import numpy as np

from zoo.convert import bert, common
from zoo.convert.common import ConversionError, dense, norm

PROJECT = 'encoder.embedding_hidden_mapping_in'  # E -> H; zoo's embed_project (none when E == H)


def _prefix(weights: dict | None) -> str:
  """'albert.' unless the checkpoint has no such names (AlbertModel saves none)."""
  return 'albert.' if weights is None or any(k.startswith('albert.') for k in weights) else ''


def _factored(f: dict) -> bool:
  return (f.get('embedding_dim') or f['embed_dim']) != f['embed_dim']


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo ALBERT fields from a HF AlbertConfig dict."""
  common.check_stack(config, decoder_ok=False)
  common.require(config, 'position_embedding_type', config.get('position_embedding_type', 'absolute') == 'absolute',
                 "zoo's ALBERT has absolute learned positions only")
  common.require(config, 'tie_word_embeddings', config.get('tie_word_embeddings', True) is not False,
                 "zoo's ALBERT ties the MLM decoder to the word embeddings")
  hidden, heads, layers = config['hidden_size'], config['num_attention_heads'], config['num_hidden_layers']
  common.require(config, 'num_attention_heads', hidden % heads == 0, f'must divide hidden_size={hidden}')
  common.require(config, 'inner_group_num', config.get('inner_group_num', 1) == 1,
                 "zoo's ALBERT has one layer per group (inner_group_num=1)")
  groups = config.get('num_hidden_groups', 1)
  common.require(config, 'num_hidden_groups', groups in (1, layers),
                 f'zoo shares one layer across all layers (1) or none ({layers}, num_hidden_layers)')
  return dict(vocab_size=config['vocab_size'], type_vocab_size=config.get('type_vocab_size', 2),
              max_len=config.get('max_position_embeddings', 512), num_layers=layers, embed_dim=hidden,
              embedding_dim=config.get('embedding_size', 128), num_heads=heads, mlp_dim=config['intermediate_size'],
              activation=common.activation(config, 'hidden_act'), share_layers=groups == 1,
              norm_eps=config.get('layer_norm_eps', 1e-12), pad_id=common.get(config, 'pad_token_id', default=0),
              dropout_rate=common.get(config, 'hidden_dropout_prob', default=0.0))


def fields_to_config(f: dict) -> dict:
  """The AlbertForPreTraining config.json of zoo ALBERT fields."""
  act = f.get('activation')
  if act not in common.ZOO_ACT:
    common.refuse('albert', f, 'activation', f'HF ALBERT takes one of {sorted(common.ZOO_ACT)}')
  return dict(architectures=['AlbertForPreTraining'], model_type='albert', vocab_size=f['vocab_size'],
              embedding_size=f.get('embedding_dim') or f['embed_dim'], hidden_size=f['embed_dim'],
              num_hidden_layers=f['num_layers'], num_hidden_groups=1 if f['share_layers'] else f['num_layers'],
              inner_group_num=1, num_attention_heads=f['num_heads'], intermediate_size=f['mlp_dim'],
              hidden_act=common.ZOO_ACT[act], hidden_dropout_prob=f['dropout_rate'],
              attention_probs_dropout_prob=f['dropout_rate'], max_position_embeddings=f['max_len'],
              type_vocab_size=f['type_vocab_size'], initializer_range=0.02, layer_norm_eps=f['norm_eps'],
              pad_token_id=f['pad_id'], tie_word_embeddings=True)


def mapping(f: dict, weights: dict | None = None) -> list:
  """zoo path <-> HF name: one layer group (zoo's shared 'layers') or one group per layer (layers_i)."""
  p = _prefix(weights)
  m = [(('token_embed', 'embedding'), f'{p}embeddings.word_embeddings.weight', 'copy', None),
       (('position_embed', 'embedding'), f'{p}embeddings.position_embeddings.weight', 'copy', None),
       (('type_embed', 'embedding'), f'{p}embeddings.token_type_embeddings.weight', 'copy', None)]
  m += norm(('embed_norm',), f'{p}embeddings.LayerNorm')
  if _factored(f):
    m += dense(('embed_project',), f'{p}{PROJECT}')
  groups = [('layers', 0)] if f['share_layers'] else [(f'layers_{i}', i) for i in range(f['num_layers'])]
  for z, g in groups:
    L = f'{p}encoder.albert_layer_groups.{g}.albert_layers.0.'
    for name in ('query', 'key', 'value'):
      m += dense((z, 'self_attention', name), f'{L}attention.{name}')
    m += dense((z, 'self_attention', 'out'), f'{L}attention.dense')
    m += norm((z, 'self_attention_norm'), f'{L}attention.LayerNorm')
    m += dense((z, 'mlp', 'wi'), f'{L}ffn')
    m += dense((z, 'mlp', 'wo'), f'{L}ffn_output')
    m += norm((z, 'mlp_norm'), f'{L}full_layer_layer_norm')
  m += dense(('pooler',), f'{p}pooler', group='pooler')
  m += dense(('mlm_transform',), 'predictions.dense', group='mlm')
  m += norm(('mlm_norm',), 'predictions.LayerNorm', group='mlm')
  m += [(('mlm_bias',), 'predictions.bias', 'copy', 'mlm')]
  m += dense(('nsp',), 'sop_classifier.classifier', group='sop')
  return m


def drop_tied(weights: dict, fields: dict) -> None:
  """The MLM decoder weight and bias a checkpoint may store must equal what zoo ties them to; with E == H the
  E -> H mapping zoo does not have must be the identity."""
  p = _prefix(weights)
  common.drop_tied_decoder(weights, weights.get(f'{p}embeddings.word_embeddings.weight'), 'predictions.decoder',
                           'predictions.bias', 'ALBERT')
  if not _factored(fields):
    kernel, b = weights.pop(f'{p}{PROJECT}.weight', None), weights.pop(f'{p}{PROJECT}.bias', None)
    if kernel is not None and not (np.array_equal(kernel, np.eye(len(kernel))) and not np.any(b)):
      raise ConversionError(f'config.json embedding_size={fields["embedding_dim"]} equals hidden_size but '
                            f'{p}{PROJECT} is not the identity: zoo\'s ALBERT projects only a factorized embedding')


def identity_projection(out: dict) -> dict:
  """E == H: HF ALBERT still has the E -> H mapping; zoo's model is that mapping as the identity."""
  name = f'albert.{PROJECT}'
  if f'{name}.weight' not in out:
    width = out['albert.embeddings.word_embeddings.weight'].shape[1]
    out[f'{name}.weight'], out[f'{name}.bias'] = np.eye(width, dtype=np.float32), np.zeros(width, np.float32)
  return out


CONVERTER = common.Converter(
    family='albert', model_types=('albert',),
    architectures=('AlbertForPreTraining', 'AlbertForMaskedLM', 'AlbertModel'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=(re.compile(r'(^|\.)embeddings\.(position_ids|token_type_ids)$'),), rename_hf=bert.rename_hf,
    drop_tied=drop_tied, after_export=identity_projection)

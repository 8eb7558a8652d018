"""ELECTRA <-> HF `electra`: the discriminator (ElectraForPreTraining, ElectraModel) in a directory and, when there
is one, the generator (ElectraForMaskedLM) in its `generator/` subdirectory, as google/electra-*-discriminator and
-generator are published. zoo's Electra holds both, sharing one set of embeddings (the discriminator's); a generator
directory must carry the same embeddings, as ELECTRA trains them tied. Without a generator directory the import
gets a fresh generator of ELECTRA's proportions (width 1/4 of the discriminator's, 64-wide heads, 4x MLP), listed
as initialised at random. Export writes the discriminator, and the generator to `generator/`.

The generator's tensors travel under the prefix `generator:` (GENERATOR) beside the discriminator's.
"""
from __future__ import annotations

from zoo.convert import bert, common
from zoo.convert.common import ConversionError, dense, norm

GENERATOR = 'generator:'  # the generator directory's tensor names, prefixed, beside the discriminator's
_EMBEDDINGS = ('word_embeddings.weight', 'position_embeddings.weight', 'token_type_embeddings.weight',
               'LayerNorm.weight', 'LayerNorm.bias')


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo Electra fields from the discriminator's ElectraConfig (and the generator's, as config['_generator'])."""
  fields = bert.config_to_fields(dict(config, embedding_size=config.get('hidden_size')), weights)
  e = config.get('embedding_size', config['hidden_size'])
  fields.update(embedding_dim=e)
  gen = config.get('_generator')
  if gen:
    for key in ('vocab_size', 'embedding_size', 'max_position_embeddings', 'type_vocab_size'):
      common.require(gen, key, gen.get(key) == config.get(key), f"must be the discriminator's ({config.get(key)}): "
                                                                  f"zoo's ELECTRA shares the embeddings")
    common.require(gen, 'hidden_act', gen.get('hidden_act', 'gelu') == config.get('hidden_act', 'gelu'),
                   "must be the discriminator's")
    width, heads, mlp, layers = (gen['hidden_size'], gen['num_attention_heads'], gen['intermediate_size'],
                                 gen['num_hidden_layers'])
  else:
    width = max(64, 64 * round(config['hidden_size'] / 4 / 64))
    heads, mlp, layers = width // 64, 4 * width, config['num_hidden_layers']
  fields.update(generator_embed_dim=width, generator_num_heads=heads, generator_mlp_dim=mlp,
                generator_num_layers=0 if layers == config['num_hidden_layers'] else layers)
  return fields


def generator_config(f: dict) -> dict:
  """The ElectraForMaskedLM config.json of a zoo Electra's generator."""
  c = fields_to_config(f)
  c.update(architectures=['ElectraForMaskedLM'], hidden_size=f['generator_embed_dim'],
           num_attention_heads=f['generator_num_heads'], intermediate_size=f['generator_mlp_dim'],
           num_hidden_layers=f.get('generator_num_layers') or f['num_layers'])
  c.pop('_generator', None)
  return c


def fields_to_config(f: dict) -> dict:
  """The ElectraForPreTraining config.json of zoo Electra fields; the generator's as '_generator' (pretraining)."""
  act = f.get('activation')
  if act not in common.ZOO_ACT:
    common.refuse('electra', f, 'activation', f'HF ELECTRA takes one of {sorted(common.ZOO_ACT)}')
  config = dict(architectures=['ElectraForPreTraining'], model_type='electra', vocab_size=f['vocab_size'],
                embedding_size=f['embedding_dim'], hidden_size=f['embed_dim'], num_hidden_layers=f['num_layers'],
                num_attention_heads=f['num_heads'], intermediate_size=f['mlp_dim'], hidden_act=common.ZOO_ACT[act],
                hidden_dropout_prob=f['dropout_rate'], attention_probs_dropout_prob=f['dropout_rate'],
                max_position_embeddings=f['max_len'], type_vocab_size=f['type_vocab_size'], initializer_range=0.02,
                layer_norm_eps=f['norm_eps'], pad_token_id=f['pad_id'], position_embedding_type='absolute',
                tie_word_embeddings=True)
  if f.get('head', 'pretraining') == 'pretraining':
    config['_generator'] = True
  return config


def _encoder(zoo: tuple, hf: str, num_layers: int, project: bool, group) -> list:
  """One encoder's layers (and its embedding projection when E != H), BERT's names under prefix `hf`."""
  m = dense((*zoo, 'embed_project'), f'{hf}electra.embeddings_project', group=group) if project else []
  for zoo_path, name, kind, _ in bert.mapping(dict(num_layers=num_layers), None):
    if name.startswith('bert.encoder.'):
      m.append(((*zoo, *zoo_path), hf + 'electra.' + name[len('bert.'):], kind, group))
  return m


def mapping(f: dict, weights: dict | None = None) -> list:
  """zoo path <-> HF name: the discriminator's embeddings and layers, its RTD head, then the generator's layers and
  MLM head (group 'generator': absent without a generator directory)."""
  m = [(('discriminator', 'token_embed', 'embedding'), 'electra.embeddings.word_embeddings.weight', 'copy', None),
       (('discriminator', 'position_embed', 'embedding'), 'electra.embeddings.position_embeddings.weight', 'copy',
        None),
       (('discriminator', 'type_embed', 'embedding'), 'electra.embeddings.token_type_embeddings.weight', 'copy',
        None)]
  m += norm(('discriminator', 'embed_norm'), 'electra.embeddings.LayerNorm')
  e = f['embedding_dim']
  m += _encoder(('discriminator',), '', f['num_layers'], e != f['embed_dim'], None)
  m += dense(('rtd_transform',), 'discriminator_predictions.dense', group='rtd')
  m += dense(('rtd_output',), 'discriminator_predictions.dense_prediction', group='rtd')
  if f.get('head', 'pretraining') == 'pretraining':
    g = GENERATOR
    m += _encoder(('generator',), g, f.get('generator_num_layers') or f['num_layers'], e != f['generator_embed_dim'],
                  'generator')
    m += dense(('mlm_transform',), f'{g}generator_predictions.dense', group='generator')
    m += norm(('mlm_norm',), f'{g}generator_predictions.LayerNorm', group='generator')
    m += [(('mlm_bias',), f'{g}generator_lm_head.bias', 'copy', 'generator')]
  return m


def drop_tied(weights: dict, fields: dict) -> None:
  """The generator's embeddings and its tied output layer must be the discriminator's embeddings: consumed."""
  for name in _EMBEDDINGS:
    gen = weights.pop(f'{GENERATOR}electra.embeddings.{name}', None)
    if gen is not None and not common.same(gen, weights.get(f'electra.embeddings.{name}')):
      raise ConversionError(f"the generator's electra.embeddings.{name} differs from the discriminator's: zoo's "
                            f'ELECTRA shares one set of embeddings, as ELECTRA pretrains them')
  head = weights.pop(f'{GENERATOR}generator_lm_head.weight', None)
  if head is not None and not common.same(head, weights.get('electra.embeddings.word_embeddings.weight')):
    raise ConversionError("the generator's generator_lm_head.weight is not its word embeddings: zoo ties them")


def after_export(out: dict) -> dict:
  """The generator's copy of the shared embeddings, as its own directory needs them."""
  if any(k.startswith(GENERATOR) for k in out):
    for name in _EMBEDDINGS:
      out[f'{GENERATOR}electra.embeddings.{name}'] = out[f'electra.embeddings.{name}']
  return out


CONVERTER = common.Converter(
    family='electra', model_types=('electra',),
    architectures=('ElectraForPreTraining', 'ElectraModel'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=bert.CONVERTER.ignored, rename_hf=bert.rename_hf, drop_tied=drop_tied, after_export=after_export)

"""RoBERTa and XLM-R <-> HF `roberta` / `xlm-roberta` (RobertaForMaskedLM, RobertaModel): BERT's encoder (zoo's
Bert) with its positions counted from pad_token_id + 1 (`position_offset`; rows 0..pad_id of the table are never
read), one token type and an MLM head `lm_head` tied to the word embeddings; no NSP head."""
from __future__ import annotations

import re

from zoo.convert import bert, common

# BERT's head names -> RoBERTa's
_HEAD = (('cls.predictions.transform.dense', 'lm_head.dense'), ('cls.predictions.transform.LayerNorm',
                                                                'lm_head.layer_norm'),
         ('cls.predictions.bias', 'lm_head.bias'))


def config_to_fields(config: dict, weights: dict) -> dict:
  """Zoo fields (family roberta) from a HF RobertaConfig / XLMRobertaConfig dict."""
  fields = bert.config_to_fields(config, weights)
  offset = fields['pad_id'] + 1  # transformers' create_position_ids_from_input_ids: pad_id + 1 + index
  n = config.get('max_position_embeddings', 514)
  common.require(config, 'max_position_embeddings', n > offset, f'must exceed pad_token_id + 1 = {offset}')
  fields.update(position_offset=offset, max_len=n - offset)
  return fields


def fields_to_config(f: dict) -> dict:
  """The RobertaForMaskedLM config.json of zoo RoBERTa fields."""
  if f.get('position_offset', 0) != f['pad_id'] + 1:
    common.refuse('roberta', f, 'position_offset', f'RoBERTa counts positions from pad_id + 1 = {f["pad_id"] + 1}')
  config = bert.fields_to_config(dict(f, position_offset=0))
  config.update(architectures=['RobertaForMaskedLM'], model_type='roberta',
                max_position_embeddings=f['max_len'] + f['position_offset'], bos_token_id=0, eos_token_id=2)
  return config


def mapping(f: dict, weights: dict | None = None) -> list:
  """BERT's mapping, under the 'roberta.' prefix (when the checkpoint has it) and with RoBERTa's head names; the
  pooler only where a checkpoint has one (RobertaModel)."""
  p = 'roberta.' if weights is None or any(k.startswith('roberta.') for k in weights) else ''
  out = []
  for zoo, name, kind, group in bert.mapping(dict(f), None):
    if group == 'nsp' or (group == 'pooler' and weights is None):  # RobertaForMaskedLM (export) has no pooler
      continue
    for a, b in _HEAD:
      name = name.replace(a, b)
    out.append((zoo, p + name[len('bert.'):] if name.startswith('bert.') else name, kind, group))
  return out


def drop_tied(weights: dict, fields: dict) -> None:
  """lm_head.decoder (weight and bias) must be the tied word embeddings and lm_head.bias."""
  emb = next((v for k, v in weights.items() if k.endswith('embeddings.word_embeddings.weight')), None)
  common.drop_tied_decoder(weights, emb, 'lm_head.decoder', 'lm_head.bias', 'RoBERTa')


CONVERTER = common.Converter(
    family='roberta', model_types=('roberta', 'xlm-roberta'),
    architectures=('RobertaForMaskedLM', 'RobertaModel', 'XLMRobertaForMaskedLM', 'XLMRobertaModel'),
    config_to_fields=config_to_fields, fields_to_config=fields_to_config, mapping=mapping,
    ignored=(re.compile(r'(^|\.)embeddings\.(position_ids|token_type_ids)$'),), rename_hf=bert.rename_hf,
    drop_tied=drop_tied)

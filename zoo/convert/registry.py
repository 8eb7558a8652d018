"""The families zoo converts, each a `Converter` of its module (bert.py, albert.py, gpt.py, t5.py, bart.py),
and the config mapping that goes through them: which family a HF config is, HF config -> zoo fields, zoo model ->
HF config."""
from __future__ import annotations

from zoo.convert import albert, bart, bert, electra, gpt, roberta, t5
from zoo.convert.common import ConversionError, Converter, model_fields, refuse

CONVERTERS: dict[str, Converter] = {c.family: c for c in (bert.CONVERTER, roberta.CONVERTER, albert.CONVERTER,
                                                          electra.CONVERTER, gpt.CONVERTER, t5.CONVERTER,
                                                          bart.CONVERTER)}
FAMILIES = tuple(CONVERTERS)
SUPPORTED_ARCHITECTURES = {name: c.architectures for name, c in CONVERTERS.items()}
MODEL_TYPES = {model_type: c.family for c in CONVERTERS.values() for model_type in c.model_types}


# zoo families with no transformers architecture to convert to, and why
INEXPRESSIBLE = {'glm': "GLM's two position ids per token and blank infilling",
                 'rnn_lm': 'a recurrent language model (LSTM / GRU)',
                 'rnn_seq2seq': 'a recurrent encoder-decoder (LSTM / GRU)'}
# zoo families a converter could map onto a transformers architecture, but none is written yet, and the gap
NOT_YET = {'transformer': "the nearest, MarianMT, puts the sinusoids' sines and cosines in halves where zoo "
                          'interleaves them (every d_model axis would be permuted) and fixes LayerNorm eps at 1e-5'}


def converter(family: str) -> Converter:
  """The Converter of a zoo family, or a one-line ConversionError saying why there is none."""
  if family not in CONVERTERS:
    why = (f'transformers has no architecture for {INEXPRESSIBLE[family]}' if family in INEXPRESSIBLE
           else 'zoo has no converter for it yet' + (f': {NOT_YET[family]}' if family in NOT_YET else ''))
    raise ConversionError(f'zoo converts {", ".join(FAMILIES)} to and from HuggingFace, not {family}: {why}')
  return CONVERTERS[family]


def detect_family(config: dict) -> str:
  """The zoo family of a HF config ('bert', 'albert', 'gpt', 't5' or 'bart'), or a ConversionError naming
  model_type / architectures."""
  model_type = config.get('model_type')
  if model_type not in MODEL_TYPES:
    raise ConversionError(f'config.json model_type={model_type!r} is not supported: zoo imports '
                          f'{sorted(MODEL_TYPES)} (BERT, RoBERTa / XLM-R, ALBERT, ELECTRA, GPT-2, T5 / mT5, BART)')
  family = MODEL_TYPES[model_type]
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
  return family, CONVERTERS[family].config_to_fields(config, weights or {})


def zoo_to_hf_config(family: str, model, extra: dict | None = None) -> dict:
  """The HF config.json dict for a zoo BERT / ALBERT / GPT / T5 / BART model (ConversionError for what HF cannot
  express); `extra` adds token ids (bos/eos/pad/decoder_start, BART's forced_eos)."""
  conv = converter(family)
  f = model_fields(model)
  if f.get('head', 'pretraining') not in ('pretraining', 'discriminator'):  # ELECTRA's discriminator alone too
    refuse(family, f, 'head', f'zoo exports the pretraining heads ({conv.architectures[0]}), not a fine-tuning task '
                              'head')
  config = conv.fields_to_config(f)
  for key, value in (extra or {}).items():
    if key.endswith('token_id') or key in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
      config[key] = value
  return config

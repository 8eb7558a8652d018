"""zoo's SentencePiece tokenizer as a HuggingFace fast tokenizer, written next to an exported model so that
`AutoTokenizer.from_pretrained` and the pipelines read it without zoo installed.

Files: `tokenizer.json` (the `tokenizers` pipeline), `tokenizer_config.json` and `special_tokens_map.json`
(class PreTrainedTokenizerFast, which transformers 5 reads as TokenizersBackend), with zoo's special tokens at
zoo's ids: 0 [PAD] 1 [UNK] 2 [BOS] 3 [EOS] 4 [CLS] 5 [SEP] 6 [MASK] 7 [sop] 8 [eop], then <extra_id_0>, ...

The model (unigram or BPE pieces with their scores, byte fallback) comes from transformers' SentencePiece
converter. Around it, what makes `encode` give zoo's `Tokenizer.encode` (identity normalization): spaces become
'▁' and one '▁' opens the text, also before a leading space or a leading special token (SentencePiece's dummy
prefix); the special tokens are found in that normalized text, so no '▁' follows them. The post-processor
(`add_special_tokens=True`) frames a text as zoo does: BERT / ALBERT [CLS] a [SEP] (b [SEP]) as zoo's tasks, T5 /
BART a [EOS] as zoo.generate feeds the encoder, GPT nothing.

GPT's decoder keeps a leading space (its pipeline decodes a continuation apart from the prompt, and the
continuation's first '▁' is a real space): decoding a whole text gives SentencePiece's text after one space.

Where it differs from SentencePiece: a control token typed in the text ([PAD], [UNK], [BOS], [EOS]) becomes its
id, as in every HF tokenizer, where SentencePiece spells it out; a text that is only one special token has no
'▁' before it; and a unigram model reads a literal byte piece such as '<0x41>' typed in the text as that piece.
"""
from __future__ import annotations

import os
import re

from zoo.convert import io
from zoo.convert.common import ConversionError
from zoo.data import tokenizer as tk

TOKENIZER_CLASS = 'PreTrainedTokenizerFast'  # transformers 4, and 5 (an alias of TokenizersBackend)
SPECIAL_TOKENS = {'pad_token': tk.PAD, 'unk_token': tk.UNK, 'bos_token': tk.BOS, 'eos_token': tk.EOS,
                  'cls_token': tk.CLS, 'sep_token': tk.SEP, 'mask_token': tk.MASK}
FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')


def _templates(family: str):
  """(single, pair, special tokens) of the post-processor: what zoo puts around a text; None for GPT."""
  if family in ('bert', 'albert'):
    return '[CLS] $A [SEP]', '[CLS] $A [SEP] $B:1 [SEP]:1', [('[CLS]', tk.CLS), ('[SEP]', tk.SEP)]
  if family in ('t5', 'bart'):
    return '$A [EOS]', '$A [EOS] $B [EOS]', [('[EOS]', tk.EOS)]
  return None


def fast_tokenizer(model_proto: bytes, family: str):
  """A `tokenizers.Tokenizer` that encodes and decodes as zoo's SentencePiece model `model_proto` does."""
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
  from transformers.convert_slow_tokenizer import SpmConverter

  zoo_tok = tk.Tokenizer(model_proto)  # checks zoo's special ids
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  spec = proto.normalizer_spec
  if (spec.precompiled_charsmap or spec.remove_extra_whitespaces or not spec.add_dummy_prefix
      or not spec.escape_whitespaces or proto.trainer_spec.treat_whitespace_as_suffix):
    raise ConversionError(f'the tokenizer normalizes text ({spec.name!r}), which zoo does not: export converts '
                          f'the tokenizers zoo trains (identity normalization, a dummy prefix)')
  if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
    vocab = [(p.piece, p.score) for p in proto.pieces]
  else:  # BPE: merges ranked by piece score
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  tok = Tokenizer(SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True).model)
  specials = [zoo_tok.piece(i) for i in range(tk.FIRST_SENTINEL + zoo_tok.num_sentinels)]
  alternatives = '|'.join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
  tok.normalizer = normalizers.Sequence([
      normalizers.Replace(' ', tk.WORD_START),
      # the dummy prefix, except on an empty text and on a special token alone: special tokens are matched in
      # normalized text, and their normalized form must stay themselves
      normalizers.Replace(Regex(rf'\A(?!\z|(?:{alternatives})\z)'), tk.WORD_START)])
  tok.add_special_tokens([AddedToken(s, special=True, normalized=True) for s in specials])
  steps = [decoders.Replace(tk.WORD_START, ' '), decoders.ByteFallback(), decoders.Fuse()]
  if family != 'gpt':  # the dummy prefix's space opens a whole text (fill-mask, text2text decode whole texts)
    steps.append(decoders.Strip(' ', 1, 0))
  # GPT keeps it: text-generation decodes the new tokens alone and appends them to the prompt, so a new word's
  # leading '▁' is the space before it (as zoo.generate, which decodes them together with the prompt)
  tok.decoder = decoders.Sequence(steps)
  templates = _templates(family)
  if templates:
    single, pair, ids = templates
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
  wrong = [(s, tok.token_to_id(s)) for i, s in enumerate(specials) if tok.token_to_id(s) != i]
  if wrong:  # never: the pieces are in the model's vocabulary at zoo's ids
    raise ConversionError(f'special tokens at other ids than zoo\'s: {wrong}')
  return tok


def vocab_size(model_proto: bytes) -> int:
  """The number of pieces of a zoo SentencePiece model."""
  return tk.Tokenizer(model_proto).vocab_size


def write_hf_tokenizer(model_proto: bytes, family: str, out_dir: str, model_max_length: int | None = None) -> list:
  """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for zoo's SentencePiece model
  `model_proto` into out_dir. Returns the file names."""
  tok = fast_tokenizer(model_proto, family)
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, 'tokenizer.json'))
  specials = {name: tok.id_to_token(i) for name, i in SPECIAL_TOKENS.items()}
  n_special = tk.FIRST_SENTINEL + tk.Tokenizer(model_proto).num_sentinels
  specials['additional_special_tokens'] = [tok.id_to_token(i) for i in range(tk.MASK + 1, n_special)]
  config = {'tokenizer_class': TOKENIZER_CLASS, **specials, 'clean_up_tokenization_spaces': False}
  if model_max_length:
    config['model_max_length'] = model_max_length
  if family in ('bert', 'albert'):  # sentence pairs: token types 0 then 1
    config['model_input_names'] = ['input_ids', 'token_type_ids', 'attention_mask']
  io.write_json(os.path.join(out_dir, 'tokenizer_config.json'), config)
  io.write_json(os.path.join(out_dir, 'special_tokens_map.json'), specials)
  return list(FILES)

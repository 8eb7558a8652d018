"""The `tokenizers` backends `zoo.data.hf_tokenizer.HFTokenizer` builds from a HuggingFace directory's vocabulary
files (BERT's vocab.txt, GPT-2's vocab.json + merges.txt) as transformers builds them, and the added tokens of T5's
SentencePiece vocabulary."""
from __future__ import annotations

import json
import os


def tokenizers_module():
  try:
    import tokenizers
  except ImportError:
    raise ImportError('reading HuggingFace tokenizers needs the tokenizers package: pip install tokenizers '
                      '(it comes with transformers)') from None
  return tokenizers


def read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    value = json.load(f)
  return value if isinstance(value, dict) else {}


def content(value) -> str | None:
  """A special token as tokenizer_config.json / special_tokens_map.json write it: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get('content')
  return value if isinstance(value, str) else None


def added_tokens(path: str, tc: dict) -> dict[int, dict]:
  """Added tokens as {id: AddedToken fields}: tokenizer_config.json's added_tokens_decoder, else the older
  added_tokens.json ({token: id})."""
  out = {}
  for i, info in (tc.get('added_tokens_decoder') or {}).items():
    info = info if isinstance(info, dict) else {'content': str(info)}
    out[int(i)] = {k: info[k] for k in ('content', 'single_word', 'lstrip', 'rstrip', 'normalized', 'special')
                   if k in info}
  for token, i in read_json(os.path.join(path, 'added_tokens.json')).items():
    out.setdefault(int(i), {'content': token})
  return out


def add_tokens(tk, backend, added: dict[int, dict], special: dict) -> None:
  """Added tokens (in id order) and the special tokens, as AddedTokens (special ones not normalized)."""
  specials = {t for t in special.values() if t is not None}
  for _, info in sorted(added.items()):
    is_special = info.get('special', info['content'] in specials)
    token = tk.AddedToken(info['content'], single_word=info.get('single_word', False),
                          lstrip=info.get('lstrip', False), rstrip=info.get('rstrip', False),
                          normalized=info.get('normalized', not is_special), special=is_special)
    (backend.add_special_tokens if is_special else backend.add_tokens)([token])
  known = {info['content'] for info in added.values()}
  backend.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in sorted(specials - known)
                              if backend.token_to_id(t) is not None])


def wordpiece(tk, path: str, tc: dict, special: dict, added: dict):
  """BERT's vocab.txt as transformers' BertTokenizer builds it."""
  vocab = {}
  with open(os.path.join(path, 'vocab.txt'), encoding='utf-8') as f:
    for index, line in enumerate(f):
      vocab[line.rstrip('\n')] = index
  unk = special.get('unk') or '[UNK]'
  backend = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
  backend.normalizer = tk.normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=tc.get('tokenize_chinese_chars', True),
      strip_accents=tc.get('strip_accents'), lowercase=tc.get('do_lower_case', True))
  backend.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
  backend.decoder = tk.decoders.WordPiece(prefix='##')
  add_tokens(tk, backend, added, special)
  cls, sep = special.get('cls'), special.get('sep')
  if cls is not None and sep is not None and cls in vocab and sep in vocab:
    backend.post_processor = tk.processors.TemplateProcessing(
        single=f'{cls}:0 $A:0 {sep}:0', pair=f'{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1',
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
  return backend


def byte_level_bpe(tk, path: str, tc: dict, special: dict, added: dict):
  """GPT-2's vocab.json + merges.txt as transformers' GPT2Tokenizer builds them (byte-level BPE)."""
  model = tk.models.BPE.from_file(os.path.join(path, 'vocab.json'), os.path.join(path, 'merges.txt'),
                                  continuing_subword_prefix='', end_of_word_suffix='', fuse_unk=False)
  backend = tk.Tokenizer(model)
  backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=bool(tc.get('add_prefix_space', False)))
  backend.decoder = tk.decoders.ByteLevel()
  add_tokens(tk, backend, added, special)
  bos, eos = special.get('bos'), special.get('eos')
  single = ([f'{bos}:0'] if tc.get('add_bos_token') and bos else []) + ['$A:0'] + \
      ([f'{eos}:0'] if tc.get('add_eos_token') and eos else [])
  if len(single) > 1:
    used = {t.split(':')[0] for t in single if not t.startswith('$')}
    backend.post_processor = tk.processors.TemplateProcessing(
        single=' '.join(single), special_tokens=[(t, backend.token_to_id(t)) for t in sorted(used)])
  return backend


def sentencepiece_added(proto: bytes, tc: dict, added: dict[int, dict], special: dict) -> dict[int, tuple[str, bool]]:
  """T5's tokens beyond the SentencePiece vocabulary: added_tokens_decoder when the config lists it, else
  `extra_ids` sentinels <extra_id_i> at vocab + extra_ids - 1 - i (<extra_id_0> last), then any other
  additional special tokens in order."""
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_proto=proto)
  n = sp.get_piece_size()
  specials = {t for t in special.values() if t is not None}
  out = {i: (info['content'], info.get('special', True)) for i, info in added.items()
         if i >= n or sp.id_to_piece(i) != info['content']}
  have = {content for content, _ in out.values()}
  extra_ids = int(tc.get('extra_ids', 100) or 0)
  if not any(i >= n for i in out):
    for k in range(extra_ids):
      out[n + extra_ids - 1 - k] = (f'<extra_id_{k}>', True)
    have |= {f'<extra_id_{k}>' for k in range(extra_ids)}
  extra = [content(t) for t in (tc.get('additional_special_tokens') or tc.get('extra_special_tokens') or [])]
  for token in [t for t in extra if t] + sorted(specials):
    if token not in have and sp.id_to_piece(sp.piece_to_id(token)) != token:
      out[max([n - 1, *out]) + 1] = (token, True)
      have.add(token)
  return out

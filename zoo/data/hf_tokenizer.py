"""HuggingFace tokenizers, read faithfully from their files: the vocabularies of imported models, which zoo trains
and generates with (zoo's own `zoo.data.tokenizer.Tokenizer` has zoo's fixed special ids, no HF checkpoint's).

`HFTokenizer` reads a HF tokenizer directory (what `save_pretrained` writes, or an older checkpoint's vocabulary
files) and gives the ids `transformers` gives, with the special ids the directory declares. Nothing is executed:
JSON, text and SentencePiece protos are read, no remote code is ever run. What it reads, first found wins:

| file(s) | read with | conventions |
| --- | --- | --- |
| `tokenizer.json` | `tokenizers.Tokenizer.from_file` | all in the file (normalizer, post-processor, ...) |
| `spiece.model` (T5) | `sentencepiece` | pad 0, eos 1, unk 2; <extra_id_i> = vocab + extra_ids - 1 - i |
| `vocab.txt` (BERT) | `tokenizers` WordPiece | BertNormalizer (do_lower_case, strip_accents, chinese chars) |
| `vocab.json` + `merges.txt` (GPT-2) | `tokenizers` byte-level BPE | add_prefix_space, <|endoftext|> = bos, eos, unk |

Special tokens come from `tokenizer_config.json` and `special_tokens_map.json` (the family's defaults where
they say nothing, as `transformers` fills them in); ids still missing are taken from the model's `config.json`
(`pad_token_id`, `eos_token_id`, `bos_token_id`); `decoder_start_id` is `decoder_start_token_id`, or pad for T5.
Attributes `pad_id eos_id bos_id unk_id cls_id sep_id mask_id decoder_start_id` (None where absent), also as
the dict `special`.

A tiny T5-style SentencePiece vocabulary, built offline (`sentencepiece` only; the other kinds need `tokenizers`):

>>> import io, os, tempfile, sentencepiece as spm
>>> model, d = io.BytesIO(), tempfile.mkdtemp()
>>> spm.SentencePieceTrainer.train(sentence_iterator=iter(['hello world', 'the world of zoo'] * 20),
...     model_writer=model, vocab_size=16, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
>>> with open(os.path.join(d, 'spiece.model'), 'wb') as f:
...   _ = f.write(model.getvalue())
>>> tok = HFTokenizer.load(d)
>>> tok.kind, tok.vocab_size, tok.pad_id, tok.eos_id, tok.unk_id, tok.decoder_start_id, tok.cls_id
('sentencepiece', 116, 0, 1, 2, 0, None)
>>> ids = tok.encode('hello <extra_id_0> world', add_special_tokens=True)  # T5 appends </s> (1)
>>> [tok.id_to_token(i) for i in ids], tok.token_to_id('<extra_id_0>')
(['▁', 'he', 'l', 'l', 'o', '<extra_id_0>', '▁world', '</s>'], 115)
>>> tok.decode(ids), tok.decode(ids, skip_special_tokens=False)
('hello world', 'hello<extra_id_0> world</s>')
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import numpy as np

from zoo.data import hf_backends as hfb

SPECIAL_NAMES = ('pad', 'eos', 'bos', 'unk', 'cls', 'sep', 'mask')
WORD_START = '\u2581'  # '▁', SentencePiece's word boundary

# What `transformers` fills in for a tokenizer class when its files name no such token.
_DEFAULTS = {
    'bert': dict(unk='[UNK]', sep='[SEP]', pad='[PAD]', cls='[CLS]', mask='[MASK]'),
    'gpt2': dict(unk='<|endoftext|>', bos='<|endoftext|>', eos='<|endoftext|>'),
    't5': dict(eos='</s>', unk='<unk>', pad='<pad>'),
    'roberta': dict(bos='<s>', eos='</s>', sep='</s>', cls='<s>', unk='<unk>', pad='<pad>', mask='<mask>'),
}
_KIND_FAMILY = {'sentencepiece': 't5', 'wordpiece': 'bert', 'bpe': 'gpt2'}
_MODEL_TYPE_FAMILY = {'bert': 'bert', 'gpt2': 'gpt2', 't5': 't5', 'mt5': 't5', 'roberta': 'roberta',
                      'xlm-roberta': 'roberta'}


def _family(tokenizer_config: dict, kind: str | None, config: dict) -> str | None:
  name = str(tokenizer_config.get('tokenizer_class') or '').lower()
  for key, family in (('t5', 't5'), ('bert', 'bert'), ('gpt2', 'gpt2')):
    if key in name:
      return family
  if kind in _KIND_FAMILY:
    return _KIND_FAMILY[kind]
  return _MODEL_TYPE_FAMILY.get(str(config.get('model_type', '')).lower())


def usable_files(directory: str) -> str | None:
  """Which kind of HF tokenizer `directory` holds ('tokenizer.json', 'sentencepiece', 'wordpiece', 'bpe'), or
  None when it has none of the files `HFTokenizer` reads."""
  has = lambda name: os.path.isfile(os.path.join(directory, name))  # noqa: E731
  if has('tokenizer.json'):
    return 'tokenizer.json'
  if has('spiece.model'):
    return 'sentencepiece'
  if has('vocab.txt'):
    return 'wordpiece'
  if has('vocab.json') and has('merges.txt'):
    return 'bpe'
  return None


class HFTokenizer:
  """A HuggingFace tokenizer read from its files: `encode`, `decode`, `vocab_size` and the special ids.

  Build one with `HFTokenizer.load(directory)`; `kind` says what it was read from ('tokenizer.json',
  'sentencepiece', 'wordpiece' or 'bpe').
  """

  def __init__(self, *, kind: str, path: str | None, special_tokens: dict, backend=None, sp_proto: bytes | None = None,
               added: dict[int, tuple[str, bool]] | None = None, config: dict | None = None,
               family: str | None = None, clean_up_tokenization_spaces: bool = False):
    self.kind, self.path, self.family = kind, path, family
    self.special_tokens = dict(special_tokens)  # name -> token string (or None)
    self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
    self._tk = backend  # a tokenizers.Tokenizer, or None for SentencePiece
    self._sp, self._sp_proto = None, sp_proto
    self._added = dict(added or {})  # SentencePiece only: id -> (content, special)
    self._config = dict(config or {})
    if sp_proto is not None:
      import sentencepiece as spm
      self._sp = spm.SentencePieceProcessor(model_proto=sp_proto)
      self._added_ids = {content: i for i, (content, _) in self._added.items()}
      for token in self.special_tokens.values():  # </s>, <pad>, <unk> in a text are those tokens, as in HF
        if token and token not in self._added_ids and self._sp.id_to_piece(self._sp.piece_to_id(token)) == token:
          self._added_ids[token] = self._sp.piece_to_id(token)
      self._compile_split()
    ids = {name: self.token_to_id(tok) if tok is not None else None for name, tok in self.special_tokens.items()}
    for name in ('pad', 'eos', 'bos'):  # the model's config.json fills what the tokenizer files leave open
      value = self._config.get(f'{name}_token_id')
      if isinstance(value, (list, tuple)):
        value = value[0] if value else None
      if ids.get(name) is None and isinstance(value, int):
        ids[name] = value
    for name in SPECIAL_NAMES:
      setattr(self, f'{name}_id', ids.get(name))
    start = self._config.get('decoder_start_token_id')
    self.decoder_start_id = start if isinstance(start, int) else (self.pad_id if family == 't5' else None)

  # ------------------------------------------------------------------------------------------ loading

  @classmethod
  def load(cls, path: str, config: dict | None = None) -> 'HFTokenizer':
    """Read the HF tokenizer in directory `path`. `config`: the model's config.json as a dict (default: the
    directory's own config.json, when it has one), for token ids the tokenizer files do not give."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f'{path} is not a directory: give a HuggingFace tokenizer directory')
    kind = usable_files(path)
    if kind is None:
      raise FileNotFoundError(f'{path} has no tokenizer.json, spiece.model, vocab.txt, or vocab.json + merges.txt: '
                              f'not a HuggingFace tokenizer zoo can read')
    if config is None:
      config = hfb.read_json(os.path.join(path, 'config.json'))
    tc = hfb.read_json(os.path.join(path, 'tokenizer_config.json'))
    stm = hfb.read_json(os.path.join(path, 'special_tokens_map.json'))
    family = _family(tc, kind if kind != 'tokenizer.json' else None, config)
    special = {}
    for name in SPECIAL_NAMES:
      key = f'{name}_token'
      if key in tc or key in stm:
        special[name] = hfb.content(tc[key] if key in tc else stm[key])
      else:
        special[name] = _DEFAULTS.get(family or '', {}).get(name)
    added = hfb.added_tokens(path, tc)
    common = dict(kind=kind, path=path, special_tokens=special, config=config, family=family,
                  clean_up_tokenization_spaces=bool(tc.get('clean_up_tokenization_spaces', False)))
    if kind == 'sentencepiece':
      with open(os.path.join(path, 'spiece.model'), 'rb') as f:
        proto = f.read()
      return cls(sp_proto=proto, added=hfb.sentencepiece_added(proto, tc, added, special), **common)
    tk = hfb.tokenizers_module()
    if kind == 'tokenizer.json':
      return cls(backend=tk.Tokenizer.from_file(os.path.join(path, 'tokenizer.json')), **common)
    if kind == 'wordpiece':
      backend = hfb.wordpiece(tk, path, tc, special, added)
    else:
      backend = hfb.byte_level_bpe(tk, path, tc, special, added)
    return cls(backend=backend, **common)

  # ------------------------------------------------------------------------------------------ the API

  @property
  def vocab_size(self) -> int:
    """Every id the tokenizer can produce (added tokens included), as `len(hf_tokenizer)`."""
    if self._sp is not None:
      return max([self._sp.get_piece_size() - 1, *self._added]) + 1
    return self._tk.get_vocab_size(with_added_tokens=True)

  @property
  def special(self) -> dict[str, int | None]:
    return {f'{name}_id': getattr(self, f'{name}_id') for name in (*SPECIAL_NAMES, 'decoder_start')}

  @property
  def all_special_ids(self) -> set[int]:
    """Ids decode skips: the special tokens and every added token marked special."""
    ids = {getattr(self, f'{name}_id') for name in SPECIAL_NAMES} - {None}
    if self._sp is not None:
      ids |= {i for i, (_, special) in self._added.items() if special}
    else:
      ids |= {i for i, t in self._tk.get_added_tokens_decoder().items() if t.special}
    return ids

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; add_special_tokens adds what the tokenizer's post-processor adds (BERT: [CLS] ...
    [SEP]; T5: ... </s>; GPT-2: nothing), as `hf_tokenizer(text)['input_ids']` does."""
    if self._sp is None:
      return self._tk.encode(text, add_special_tokens=add_special_tokens).ids
    ids = []
    parts = self._added_re.split(text) if self._added_re is not None else [text]
    for i, part in enumerate(parts):
      if i % 2:  # an added token matched by the split
        ids.append(self._added_ids[part])
      elif part:
        ids.extend(self._sp.encode(part))
    if add_special_tokens and self.eos_id is not None:
      ids.append(self.eos_id)
    return ids

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False,
                   num_threads: int = -1) -> list[list[int]]:
    del num_threads  # tokenizers picks its own threads
    if self._sp is None:
      return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
    return [self.encode(t, add_special_tokens) for t in texts]

  def encode_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    """Ids of `text` (as `encode`) and the UTF-8 byte offset where each token starts (as zoo's Tokenizer)."""
    if self._sp is not None:  # SentencePiece's own offsets; an added token in the text is one piece of its own
      parts = self._added_re.split(text) if self._added_re is not None else [text]
      ids, starts, at = [], [], 0
      for i, part in enumerate(parts):
        pieces = [(self._added_ids[part], 0)] if i % 2 else [(p.id, p.begin) for p in self._sp.encode(
            part, out_type='proto').pieces] if part else []
        ids += [p for p, _ in pieces]
        starts += [at + b for _, b in pieces]
        at += len(part.encode())
      return ids, np.asarray(starts, np.int64)
    enc = self._tk.encode(text, add_special_tokens=False)
    char_to_byte = np.cumsum([0] + [len(c.encode()) for c in text])
    return enc.ids, char_to_byte[np.asarray([a for a, _ in enc.offsets], np.int64)].astype(np.int64)

  @property
  def num_sentinels(self) -> int:
    """T5's <extra_id_i> tokens (none for BERT or GPT-2)."""
    n = 0
    while self.token_to_id(f'<extra_id_{n}>') is not None:
      n += 1
    return n

  def word_starts(self, ids) -> np.ndarray:
    """True where a token begins a word (not WordPiece's '##' continuation; byte-level BPE's 'Ġ' and
    SentencePiece's '▁' begin one) or is special: whole-word masking's units."""
    if getattr(self, '_word_start', None) is None:
      model = 'sentencepiece' if self._sp is not None else type(self._tk.model).__name__
      special = self.all_special_ids
      tokens = [self.id_to_token(i) or '' for i in range(self.vocab_size)]
      if model == 'WordPiece':
        starts = [not t.startswith('##') for t in tokens]
      else:
        marks = ('\u0120', '\u010a') if model == 'BPE' else (WORD_START,)
        starts = [t.startswith(marks) for t in tokens]
      self._word_start = np.array([s or i in special for i, s in enumerate(starts)])
    return self._word_start[np.asarray(ids)]

  def encode_sentences(self, text: str) -> tuple[list[int], np.ndarray]:
    """Ids and per token its sentence number (1, 2, ...), as zoo's Tokenizer gives them (NSP, SOP)."""
    from zoo.data import tokenizer as tk
    ids, begins = self.encode_offsets(text)
    return ids, tk.sentence_numbers(text, begins)

  def encode_words(self, text: str, segmenter: str = 'jieba') -> tuple[list[int], np.ndarray]:
    """Ids and per token whether it starts a word of the segmenter ('jieba': all characters of one Chinese word
    are masked together, as Chinese BERT-wwm masks them), or is special."""
    from zoo.data import tokenizer as tk
    ids, at_word = tk.segmented(self, text, segmenter)
    return ids, (at_word | self.is_special(ids)).astype(np.int32)

  def is_special(self, ids) -> np.ndarray:
    return np.isin(np.asarray(ids), sorted(self.all_special_ids))

  def check_vocab_size(self, model_vocab_size: int) -> None:
    if self.vocab_size > model_vocab_size:
      raise ValueError(f'the tokenizer {self.path} has {self.vocab_size} ids but model.vocab_size is '
                       f'{model_vocab_size}: the model must have an embedding for each')

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`, without the special tokens unless skip_special_tokens=False."""
    ids = [int(i) for i in ids]
    if self._sp is None:
      text = self._tk.decode(ids, skip_special_tokens=skip_special_tokens)
      if self.clean_up_tokenization_spaces and type(self._tk.model).__name__ != 'BPE':  # as transformers 5
        text = _clean_up_tokenization(text)
      return text
    special = self.all_special_ids
    if skip_special_tokens:
      ids = [i for i in ids if i not in special]
    # As T5's Metaspace decoder: pieces joined, '▁' -> ' ', the first leading space dropped. Runs of ordinary
    # pieces go through sentencepiece (which strips their leading space: given back where a word starts).
    out, run = [], []

    def flush():
      if run:
        text = self._sp.decode(run)
        if out and self._sp.id_to_piece(run[0]).startswith(WORD_START):
          text = ' ' + text
        out.append(text)
        run.clear()
    for i in ids:
      if i in special or i in self._added or i >= self._sp.get_piece_size():
        flush()
        out.append(self.id_to_token(i) or '')
      else:
        run.append(i)
    flush()
    return ''.join(out)

  def token_to_id(self, token: str) -> int | None:
    if self._sp is None:
      return self._tk.token_to_id(token)
    if token in self._added_ids:
      return self._added_ids[token]
    i = self._sp.piece_to_id(token)
    return i if self._sp.id_to_piece(i) == token else None

  def id_to_token(self, i: int) -> str | None:
    if self._sp is None:
      return self._tk.id_to_token(int(i))
    if int(i) in self._added:
      return self._added[int(i)][0]
    return self._sp.id_to_piece(int(i)) if 0 <= int(i) < self._sp.get_piece_size() else None

  def __len__(self) -> int:
    return self.vocab_size

  def __repr__(self) -> str:
    ids = ', '.join(f'{k}={v}' for k, v in self.special.items() if v is not None)
    return f'HFTokenizer({self.kind}, vocab_size={self.vocab_size}, {ids})'

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_sp'] = None
    state.pop('_added_re', None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    if self._sp_proto is not None:
      import sentencepiece as spm
      self._sp = spm.SentencePieceProcessor(model_proto=self._sp_proto)
      self._compile_split()

  def _compile_split(self):
    """SentencePiece: a regex matching the added and special tokens in a text (longest first)."""
    pattern = '|'.join(re.escape(c) for c in sorted(self._added_ids, key=len, reverse=True))
    self._added_re = re.compile(f'({pattern})') if pattern else None


def _clean_up_tokenization(text: str) -> str:
  """transformers' clean_up_tokenization (spaces before punctuation and English contractions)."""
  for a, b in ((' .', '.'), (' ?', '?'), (' !', '!'), (' ,', ','), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
               (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
    text = text.replace(a, b)
  return text

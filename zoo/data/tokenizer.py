"""SentencePiece tokenizers (BPE or unigram) trained on the user's corpus, with zoo's special tokens at fixed ids.

Ids every zoo tokenizer shares (the objectives rely on them):

  0 [PAD]   1 [UNK]   2 [BOS]   3 [EOS]   4 [CLS]   5 [SEP]   6 [MASK]   7 [sop]   8 [eop]
  9 .. 9+num_sentinels-1   T5 sentinels <extra_id_0>, <extra_id_1>, ...

[sop] / [eop] open and close GLM's spans. Byte fallback makes every string round-trip (Chinese, emoji, control
characters); normalization is the identity, so decode(encode(text)) == text exactly. A piece that starts
with '▁' starts a word: that gives whole-word masking its boundaries for space-separated languages.

Any corpus trains at any size from 256 + the reserved ids + 1: a vocabulary too small for all of a corpus's
characters (Chinese has thousands) keeps the most frequent and spells the rest in UTF-8 bytes, and a corpus too
small for the vocabulary gets the largest one it supports (logged; `requested_vocab_size` remembers the size
asked for, so a resumed run still recognizes its tokenizer).

Train from the command line:

  python -m zoo.data.tokenizer --source='text:corpus/*.txt' --output=spm.model --vocab_size=8000

>>> texts = ['hello world, this is zoo.', 'The quick brown fox jumps over the lazy dog!', '你好，世界。'] * 20
>>> tok = train_tokenizer(texts, vocab_size=307, num_sentinels=4)
>>> tok.decode(tok.encode('hello 世界 🙂')) == 'hello 世界 🙂'
True
>>> tok.piece(MASK), tok.sentinel(0), tok.piece(tok.sentinel(0))
('[MASK]', 9, '<extra_id_0>')
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import re
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from zoo import paths

SPECIALS = ('[PAD]', '[UNK]', '[BOS]', '[EOS]', '[CLS]', '[SEP]', '[MASK]', '[sop]', '[eop]')
PAD, UNK, BOS, EOS, CLS, SEP, MASK, SOP, EOP = range(len(SPECIALS))
FIRST_SENTINEL = len(SPECIALS)
WORD_START = '\u2581'  # '▁'

log = logging.getLogger('zoo')


_SENTENCE_END = re.compile(r'[.!?]+[\'")\]]*(?=\s)|[。！？；]+[”’」』）]*|\n[ \t]*\n')


def sentence_starts(text: str) -> list[int]:
  """Character offsets where sentences begin: after . ! ? followed by white space, after the Chinese 。！？；
  (no space needed), and at blank lines. The white space between two sentences opens the second, as
  SentencePiece's '▁' does.

  >>> text = 'One sentence. Two! 第三句。第四句？ End'
  >>> [text[a:b] for a, b in zip(sentence_starts(text), sentence_starts(text)[1:] + [len(text)])]
  ['One sentence.', ' Two!', ' 第三句。', '第四句？', ' End']
  """
  starts = [0]
  for m in _SENTENCE_END.finditer(text):
    if m.end() < len(text) and text[m.end():].strip() and m.end() > starts[-1]:
      starts.append(m.end())
  return starts


def _byte_offsets(text: str, char_offsets) -> np.ndarray:
  """UTF-8 byte offsets of increasing character offsets into text."""
  out, offset, prev = [], 0, 0
  for start in char_offsets:
    offset += len(text[prev:start].encode('utf-8'))
    out.append(offset)
    prev = start
  return np.asarray(out, np.int64)


def sentence_numbers(text: str, begins: np.ndarray) -> np.ndarray:
  """The sentence number (1, 2, ...) of each token that begins at UTF-8 byte offset `begins` of `text`."""
  return np.searchsorted(_byte_offsets(text, sentence_starts(text)), begins, side='right').astype(np.int32)


def segmented(tokenizer, text: str, segmenter: str) -> tuple[list[int], np.ndarray]:
  """Token ids of `text` (a zoo or HF tokenizer's `encode_offsets`) and, per token, whether it is the first one
  at a word start of the segmenter ('jieba')."""
  ids, begins = tokenizer.encode_offsets(text)
  starts = set(_byte_offsets(text, _word_starts(text, segmenter)).tolist())
  first = np.concatenate([[True], begins[1:] != begins[:-1]])  # byte-fallback pieces share a begin
  return ids, np.fromiter((b in starts for b in begins), bool, len(ids)) & first


def _word_starts(text: str, segmenter: str) -> list[int]:
  if segmenter != 'jieba':
    raise ValueError(f"data.word_segmenter={segmenter!r}: use '' (none) or 'jieba'")
  try:
    import jieba
  except ImportError:
    raise ImportError("data.word_segmenter='jieba' needs jieba: pip install -e '.[zh]'") from None
  jieba.setLogLevel(60)
  return [start for _, start, _ in jieba.tokenize(text)]


class Tokenizer:
  """A SentencePiece model with zoo's special ids. Picklable (grain workers get their own copy)."""

  def __init__(self, model_proto: bytes, path: str | None = None):
    self.path = path
    self._proto = model_proto
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=model_proto) if model_proto else None
    except RuntimeError:  # SentencePiece could not parse it
      self._sp = None
    if self._sp is None or self._sp.get_piece_size() == 0:
      raise ValueError(f'{path or "tokenizer"} is not a SentencePiece model (empty, truncated or another kind of '
                       f"file): point data.tokenizer at a .model file, or set it to 'train'")
    if [self._sp.id_to_piece(i) for i in range(len(SPECIALS))] != list(SPECIALS):
      raise ValueError(f'{path or "tokenizer"} is not a zoo tokenizer: ids 0..{len(SPECIALS) - 1} must be '
                       f'{SPECIALS}; train one with `python -m zoo.data.tokenizer`')
    n = 0
    while FIRST_SENTINEL + n < self.vocab_size and self._sp.id_to_piece(FIRST_SENTINEL + n) == f'<extra_id_{n}>':
      n += 1
    self.num_sentinels = n
    pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
    self._word_start = np.array([p.startswith(WORD_START) or i < FIRST_SENTINEL + n
                                 for i, p in enumerate(pieces)])

  @classmethod
  def load(cls, path: str, model_vocab_size: int | None = None) -> 'Tokenizer':
    """Reads a .model file (local or gs://...); with model_vocab_size, checks that every id fits the model's
    embedding."""
    p = paths.path(path)
    if not p.exists():
      raise FileNotFoundError(f'tokenizer file {path} does not exist: set data.tokenizer to a SentencePiece '
                              f"model file, or to 'train' to train one on data.source")
    if p.is_dir():
      raise ValueError(f'tokenizer {path} is a directory: set data.tokenizer to a SentencePiece .model file')
    tok = cls(p.read_bytes(), path)
    if model_vocab_size is not None:
      tok.check_vocab_size(model_vocab_size)
    return tok

  def check_vocab_size(self, model_vocab_size: int) -> None:
    if self.vocab_size > model_vocab_size:
      raise ValueError(f'tokenizer {self.path or ""} has {self.vocab_size} pieces but model.vocab_size is '
                       f'{model_vocab_size}: set model.vocab_size >= {self.vocab_size} (a multiple of 128 is '
                       f'fastest on TPU), or train a smaller tokenizer (data.vocab_size)')

  def save(self, path: str) -> None:
    tmp = paths.path(f'{os.fspath(path)}.tmp')
    tmp.write_bytes(self._proto)
    tmp.replace(path)  # never a half-written tokenizer
    self.path = path

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def requested_vocab_size(self) -> int:
    """The vocabulary size it was trained for: more than vocab_size when its corpus supported fewer pieces."""
    from sentencepiece import sentencepiece_model_pb2
    return max(sentencepiece_model_pb2.ModelProto.FromString(self._proto).trainer_spec.vocab_size, self.vocab_size)

  @property
  def model_proto(self) -> bytes:
    """The SentencePiece model file's bytes."""
    return self._proto

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_offsets(self, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids (exactly as `encode`) and the UTF-8 byte offset in `text` where each token begins."""
    proto = self._sp.encode(text, return_type='proto')
    ids = [p.id for p in proto.pieces]
    return ids, np.fromiter((p.begin for p in proto.pieces), np.int64, len(ids))

  def encode_sentences(self, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of the whole text (exactly as `encode`) and, for each token, its sentence number (1, 2, ...),
    from `sentence_starts`: the boundaries NSP, SOP and sentence permutation need."""
    ids, begins = self.encode_offsets(text)
    return ids, sentence_numbers(text, begins)

  def encode_words(self, text: str, segmenter: str = 'jieba') -> tuple[list[int], np.ndarray]:
    """Token ids and, per token, whether it starts a word: a '▁' piece, or the first piece at a word start
    from the segmenter ('jieba': Chinese words, which spaces do not separate). Whole-word masking's units."""
    ids, at_word = segmented(self, text, segmenter)
    return ids, (at_word | self._word_start[np.asarray(ids, np.int64)]).astype(np.int32)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    """`encode` of each text, in num_threads threads (-1: SentencePiece's default, one per core)."""
    return self._sp.encode(list(texts), num_threads=num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def sentinel(self, i: int) -> int:
    """Id of T5's i-th sentinel <extra_id_i>."""
    if not 0 <= i < self.num_sentinels:
      raise ValueError(f'sentinel {i} out of range: this tokenizer has {self.num_sentinels} sentinels')
    return FIRST_SENTINEL + i

  def word_starts(self, ids) -> np.ndarray:
    """True where a piece begins a word ('▁' prefix) or is a special token: whole-word masking's units."""
    return self._word_start[np.asarray(ids)]

  def is_special(self, ids) -> np.ndarray:
    """True for [PAD] .. [eop] and the sentinels: never masked or corrupted."""
    return np.asarray(ids) < FIRST_SENTINEL + self.num_sentinels

  def __getstate__(self):
    return {'model_proto': self._proto, 'path': self.path}

  def __setstate__(self, state):
    self.__init__(state['model_proto'], state['path'])


_CUT = '\ue000'  # rare characters become this in training: a pretokenization delimiter, no piece spans it


def _char_counts(lines: Iterable[str]) -> tuple[np.ndarray, int]:
  """Per code point, how often it occurs in `lines` as SentencePiece counts it (a space, and the start of each
  line, as '▁'); and the number of lines."""
  counts, chunk, size, n = np.zeros(0x110000, np.int64), [], 0, 0

  def add(text):
    counts[:] += np.bincount(np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32),
                             minlength=0x110000)
  for line in lines:
    chunk.append(line)
    size, n = size + len(line), n + 1
    if size > 1 << 22:
      add(''.join(chunk))
      chunk, size = [], 0
  add(''.join(chunk))
  counts[ord(WORD_START)] += counts[ord(' ')] + n
  counts[ord(' ')] = counts[0] = 0
  return counts, n


def _rare_characters(counts: np.ndarray, room: int, coverage: float) -> tuple[np.ndarray, int]:
  """The characters to leave out of training (they are spelled in bytes), so that those SentencePiece needs
  at `coverage` fit in `room` pieces and leave a quarter of them for longer pieces; and how many there are."""
  chars = np.nonzero(counts)[0]
  chars = chars[np.lexsort((chars, -counts[chars]))]  # SentencePiece's order: most frequent first
  cum = np.cumsum(counts[chars])
  needed = 1 + int(np.sum(cum[:-1] / max(cum[-1], 1) < np.float32(coverage))) if len(chars) else 0
  cap = max(room - room // 4, 1)
  if needed <= cap:
    return chars[:0], len(chars)
  rest = chars[chars != ord(WORD_START)]  # '▁' starts every line: always kept
  return rest[cap - 1:], len(chars)


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, model_type: str = 'unigram',
                    num_sentinels: int = 100, path: str | None = None, character_coverage: float = 0.9995,
                    max_sentence_chars: int = 16384, input_sentence_size: int = 2_000_000,
                    seed_field: str = 'data.vocab_size', source: str = '') -> Tokenizer:
  """Trains a SentencePiece model ('unigram' or 'bpe') on `texts` (one string per document or line).

  Lines longer than max_sentence_chars are cut into pieces (SentencePiece would skip them). A corpus that
  supports fewer than `vocab_size` pieces gets as many as it supports (logged). When the characters that
  `character_coverage` asks for would not leave a quarter of the vocabulary for longer pieces (Chinese, with
  thousands of characters), the rarest are left out of training: byte fallback spells them in UTF-8 bytes.
  """
  if model_type not in ('unigram', 'bpe'):
    raise ValueError(f"tokenizer model_type must be 'unigram' or 'bpe', got {model_type!r}")
  reserved = len(SPECIALS) + num_sentinels
  room = vocab_size - reserved - 256  # pieces left for characters and longer pieces
  if room < 1:
    raise ValueError(f'{seed_field}={vocab_size} is too small: {reserved} ids are reserved for special '
                     f'tokens and sentinels and 256 for byte fallback; use at least {reserved + 256 + 1}')
  if not isinstance(texts, Sequence):
    texts = list(texts)  # read twice: characters first, then training

  def lines(translate=None):
    for text in texts:
      for line in text.split('\n'):
        for i in range(0, len(line), max_sentence_chars):
          piece = line[i:i + max_sentence_chars]
          if piece.strip():
            yield piece.translate(translate) if translate else piece

  counts, n_lines = _char_counts(lines())
  if not n_lines:
    raise ValueError('the corpus has no text to train a tokenizer on')
  rare, n_chars = _rare_characters(counts, room, character_coverage)
  if len(rare):
    log.info('%s=%d leaves room for %s of the %s characters of this corpus: the rarest %s (%.1f%% of the text) '
             'are spelled in UTF-8 bytes (byte fallback)', seed_field, vocab_size, f'{n_chars - len(rare):,}',
             f'{n_chars:,}', f'{len(rare):,}', 100 * counts[rare].sum() / counts.sum())
    character_coverage = 1.0
  where = source or f'{len(texts):,} document(s)'
  log.info('training a %s-piece %s tokenizer on %s (%s characters) ...', f'{vocab_size:,}', model_type, where,
           f'{int(counts.sum()):,}')
  start = time.perf_counter()
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(dict.fromkeys(rare.tolist(), _CUT) if len(rare) else None),
        pretokenization_delimiter=_CUT if len(rare) else '',
        model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False, model_type=model_type,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, pad_piece=SPECIALS[PAD], unk_piece=SPECIALS[UNK],
        bos_piece=SPECIALS[BOS], eos_piece=SPECIALS[EOS],
        user_defined_symbols=list(SPECIALS[4:]) + [f'<extra_id_{i}>' for i in range(num_sentinels)],
        byte_fallback=True, character_coverage=character_coverage, normalization_rule_name='identity',
        remove_extra_whitespaces=False, split_digits=True, max_sentence_length=4 * max_sentence_chars,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:
    m = re.search(r'smaller than required_chars\. \d+ vs (\d+)', str(e))
    if m:
      raise ValueError(f'{seed_field}={vocab_size} cannot hold the characters of this corpus: set it to at '
                       f'least {m.group(1)}, or lower the character coverage') from None
    raise
  proto = model.getvalue()
  tok = Tokenizer(proto)
  if tok.vocab_size < vocab_size:  # keep what was asked in the file, so that a resumed run recognizes it
    from sentencepiece import sentencepiece_model_pb2
    m = sentencepiece_model_pb2.ModelProto.FromString(proto)
    m.trainer_spec.vocab_size = vocab_size
    tok = Tokenizer(m.SerializeToString())
    log.info('%s=%d is more than this corpus supports: trained the largest vocabulary it does, %s pieces (set '
             '%s=%d to ask for exactly that, or add text)', seed_field, vocab_size, f'{tok.vocab_size:,}',
             seed_field, tok.vocab_size)
  if path:
    tok.save(path)
  log.info('done in %.1f s: %s pieces, %s', time.perf_counter() - start, f'{tok.vocab_size:,}', path or 'in memory')
  return tok


def sample(texts: Sequence[str], budget_chars: int, seed: int = 0) -> Sequence[str]:
  """A uniform random sample of whole texts of about budget_chars characters (all of them if that many or fewer).

  >>> len(sample(['ab'] * 10, 5)), len(sample(['ab'] * 10, 100))
  (3, 10)
  """
  if sum(map(len, texts)) <= budget_chars:
    return texts
  out, chars = [], 0
  for i in np.random.default_rng(seed).permutation(len(texts)):
    if chars >= budget_chars:
      break
    out.append(texts[int(i)])
    chars += len(out[-1])
  return out


def get_tokenizer(spec: str, *, workdir: str | None, documents: Callable[[], Iterable[str]], vocab_size: int,
                  model_type: str = 'unigram', num_sentinels: int = 100,
                  model_vocab_size: int | None = None, source: str = '', sample_chars: int | None = None) -> Tokenizer:
  """The recipe's `data.tokenizer`: a SentencePiece .model path, or 'train' to train one on `documents()` (a
  uniform sample of sample_chars characters of them, when given) once and keep it as workdir/tokenizer.model (a
  rerun, a resume and evaluation load that file). `source` names the documents in the log."""
  if spec != 'train':
    return Tokenizer.load(spec, model_vocab_size)
  if not workdir:
    raise ValueError("data.tokenizer='train' keeps the trained tokenizer in the workdir: give a workdir")
  path = paths.join(workdir, 'tokenizer.model')
  if paths.path(path).exists():
    tok = Tokenizer.load(path, model_vocab_size)
    asked = tok.requested_vocab_size
    if vocab_size not in (asked, tok.vocab_size):
      trained = f' (trained for data.vocab_size={asked})' if asked != tok.vocab_size else ''
      raise ValueError(f'{path} has {tok.vocab_size} pieces{trained} but data.vocab_size is {vocab_size}: this '
                       f'workdir belongs to another run; use a new --workdir, or set data.vocab_size={asked}')
    return tok
  paths.path(workdir).mkdir(parents=True, exist_ok=True)
  texts = docs = documents()
  if sample_chars is not None:
    texts = sample(docs, sample_chars)
    if len(texts) < len(docs):
      source = f'a sample of {len(texts):,} documents of {source or "the corpus"}'
  tok = train_tokenizer(texts, vocab_size, model_type=model_type, num_sentinels=num_sentinels, path=path,
                        source=source)
  if model_vocab_size is not None:
    tok.check_vocab_size(model_vocab_size)
  return tok


def main(argv=None):
  from zoo.data import sources  # the CLI reads any source zoo knows
  parser = argparse.ArgumentParser(prog='python -m zoo.data.tokenizer', description=__doc__.split('\n')[0])
  parser.add_argument('--source', default='default',
                      help="'default', 'text:<glob>', 'jsonl:<glob>:<field>', 'parquet:<glob>:<column>' or "
                           "'tfds:<name>[:<field>]'")
  parser.add_argument('--output', required=True, help='path of the .model file to write')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--model_type', choices=('unigram', 'bpe'), default='unigram')
  parser.add_argument('--num_sentinels', type=int, default=100)
  parser.add_argument('--data_dir', default=None, help='TFDS data_dir')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  try:
    docs, stats = sources.read_documents(args.source, split='train', data_dir=args.data_dir)
    print(stats.report())
    tok = train_tokenizer(docs, args.vocab_size, model_type=args.model_type, num_sentinels=args.num_sentinels,
                          path=args.output, seed_field='--vocab_size', source=args.source)
  except (ValueError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')
  print(f'wrote {args.output}: {tok.vocab_size} pieces ({args.model_type}), {tok.num_sentinels} sentinels')


if __name__ == '__main__':
  main()

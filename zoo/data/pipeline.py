"""The input pipeline on grain: documents -> shuffled, host-sharded, tokenized, packed, batched.

Every batch is a dict of int32 numpy arrays [batch, seq_len] (rows hold at most `text_len` tokens of text, seq_len
unless an objective needs room to add its own: GLM's part B):
  tokens       token ids (0 = [PAD])
  segment_ids  1, 2, ... for the documents packed into a row, 0 for padding
  positions    position of each token inside its document piece (restarting at 0 in each segment)
  sentence_ids (with sentences=True) the sentence of each token inside its document, 1, 2, ... (0 = padding)
  document_ids (with sentences=True) the document of each token: its index in `docs` plus 1 (0 = padding), the
               same in every row a document reaches (NSP draws its negatives from another document id)
  word_starts  (with word_segmenter='jieba') 1 where a token starts a word, Chinese words included
  source       (a mixture, `zoo.data.mixture`: docs from `sources.read_documents('mix:...')`) the index of the
               source each row comes from, int32 [batch]; each source is packed on its own, the rows mixed

Packing (`packing=`):
  'concat'     concatenate documents (each ending in [EOS]) and cut every seq_len tokens: no padding at all
               (grain's ConcatThenSplitIterDataset); a document may continue in the next row
  'first_fit'  whole documents (cut into seq_len pieces when longer) placed first-fit into rows, rest padded
  'pad'        one document piece per row, padded

The iterator's state is small and exact: `iterator.get_state()` / `set_state()`, or Orbax through
`grain.checkpoint.CheckpointSave(iterator)`; a restored iterator yields exactly the batches the
uninterrupted one would have.

>>> from zoo.data import tokenizer as tk
>>> docs = ['the cat sat on the mat', 'a dog', 'birds fly south in winter'] * 20
>>> tok = tk.train_tokenizer(docs, vocab_size=290, num_sentinels=2)
>>> ds = make_dataset(docs, tok, seq_len=16, batch_size=4, seed=0)
>>> batch = next(iter(ds))
>>> {k: v.shape for k, v in batch.items()}
{'positions': (4, 16), 'segment_ids': (4, 16), 'tokens': (4, 16)}
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import grain
import grain.experimental as ge
import numpy as np

from zoo.data import mixture, prepared, specials
from zoo.data import tokenizer as tk

PACKINGS = ('concat', 'first_fit', 'pad')


@dataclasses.dataclass(frozen=True)
class Tokenize:
  """text -> {'tokens': int32 ids[, 'sentence_ids', 'word_starts', 'document_ids']}, each document framed by
  `prefix` and `suffix` (zoo's tokenizer: [EOS] after it; zoo.data.specials.frame) (picklable for workers)."""
  tokenizer: tk.Tokenizer
  add_eos: bool = True  # frame the document (False: its text ids only)
  sentences: bool = False
  word_segmenter: str = ''  # 'jieba': add word_starts from a Chinese word segmenter
  prefix: tuple = ()  # ids before each document (BERT's [CLS])
  suffix: tuple = (tk.EOS,)  # ids after it (zoo's [EOS], BERT's [SEP])

  def __call__(self, text: str | tuple[int, str]) -> dict:
    index = None
    if isinstance(text, tuple):  # (index in the corpus, text): add document_ids
      index, text = text
    if self.sentences:
      ids, sentence_ids = self.tokenizer.encode_sentences(text)
    else:
      ids, sentence_ids = self.tokenizer.encode(text), None
    element = {'tokens': ids}
    if self.word_segmenter:
      element['word_starts'] = self.tokenizer.encode_words(text, self.word_segmenter)[1]
    if sentence_ids is not None:
      element['sentence_ids'] = sentence_ids
    return _frame(element, index, self.prefix if self.add_eos else (), self.suffix if self.add_eos else ())


@dataclasses.dataclass(frozen=True)
class FromTokens:
  """A prepared document ({'tokens', flags}: `zoo.data.prepared`) -> the features Tokenize gives."""
  add_eos: bool = True
  sentences: bool = False
  word_segmenter: str = ''
  prefix: tuple = ()
  suffix: tuple = (tk.EOS,)

  def __call__(self, element: dict | tuple[int, dict]) -> dict:
    index = None
    if isinstance(element, tuple):
      index, element = element
    out = {'tokens': element['tokens']}
    if self.sentences:  # the first token opens sentence 1
      out['sentence_ids'] = np.cumsum(element['sentence_starts'], dtype=np.int32)
    if self.word_segmenter:
      out['word_starts'] = element['word_starts']
    return _frame(out, index, self.prefix if self.add_eos else (), self.suffix if self.add_eos else ())


def _frame(element: dict, index: int | None, prefix: tuple, suffix: tuple) -> dict:
  """A document's features with its framing ids around it: they join its first and last sentence, and each is
  a word of its own."""
  n = len(element['tokens'])
  out = {'tokens': np.asarray([*prefix, *element['tokens'], *suffix], np.int32)}
  if 'word_starts' in element:
    starts = np.ones(n, np.int32)
    given = np.asarray(element['word_starts'], np.int32)[:n]
    starts[:len(given)] = given
    out['word_starts'] = np.concatenate([np.ones(len(prefix), np.int32), starts, np.ones(len(suffix), np.int32)])
  if 'sentence_ids' in element:
    ids = np.asarray(element['sentence_ids'], np.int32)[:n]
    first, last = (ids[0], ids[-1]) if n else (1, 1)
    out['sentence_ids'] = np.concatenate([np.full(len(prefix), first, np.int32), ids,
                                          np.full(len(suffix), last, np.int32)])
  if index is not None:
    out['document_ids'] = np.full(len(out['tokens']), index + 1, np.int32)
  return out


def _check_features(docs, sentences: bool, word_segmenter: str) -> None:
  """A prepared corpus holds the flags an objective needs, or says how to make them."""
  if not isinstance(docs, prepared.PreparedSplit):
    return
  for feature, wanted, flag in (('sentence_starts', sentences, '--sentences'),
                                ('word_starts', word_segmenter, f'--word_segmenter={word_segmenter}')):
    if wanted and feature not in docs.features:
      raise ValueError(f'data.source=prepared:{docs.directory} was prepared without {feature.replace("_", " ")}, '
                       f'which this objective needs: prepare it again with {flag}')


def _with_index(offset: int, index: int, text: str) -> tuple[int, str]:
  return offset + index, text


@dataclasses.dataclass(frozen=True)
class _Tag:
  """Mark a row with its source's index in a mixture (the `source` feature, one int per row)."""
  index: int

  def __call__(self, row: dict) -> dict:
    return {**row, 'source': np.int32(self.index)}


class _Chunk(ge.FlatMapTransform):
  """Cut a document longer than seq_len into pieces of seq_len tokens (nothing is dropped)."""

  def __init__(self, seq_len: int, max_fan_out: int):
    self.seq_len, self.max_fan_out = seq_len, max_fan_out

  def flat_map(self, element):
    n = len(element['tokens'])
    return [{k: v[i:i + self.seq_len] for k, v in element.items()} for i in range(0, n, self.seq_len)]


def _pad_row(seq_len: int):
  def fn(element):
    n = len(element['tokens'])
    out = {'segment_ids': np.zeros(seq_len, np.int32), 'positions': np.zeros(seq_len, np.int32)}
    out['segment_ids'][:n] = 1
    out['positions'][:n] = np.arange(n)
    for k, v in element.items():
      out[k] = np.zeros(seq_len, np.int32)
      out[k][:n] = v
    return out
  return fn


def _widen(row_len: int):
  """Pad a packed row's every feature with zeros (padding) to row_len."""
  def fn(element):
    return {k: np.pad(v, (0, row_len - len(v))) for k, v in element.items()}
  return fn


def _rename(element):
  """grain's packers name their outputs tokens_segment_ids and tokens_positions (and the same for every
  other packed feature, which are equal): keep one of each."""
  out = {'segment_ids': element['tokens_segment_ids'].astype(np.int32),
         'positions': element['tokens_positions'].astype(np.int32)}
  for k, v in element.items():
    if not k.endswith(('_segment_ids', '_positions')):
      out[k] = v.astype(np.int32)
  return out


def _has_tokens(element) -> bool:
  return len(element['tokens']) > 0


def check_corpus_fits(docs: Sequence[str], tokenizer: tk.Tokenizer, seq_len: int, global_batch: int,
                      packing: str, shard_count: int = 1, text_len: int | None = None) -> None:
  """Refuse, with the fields to change, a training corpus that cannot fill one batch per epoch (rows of
  text_len tokens of text, default seq_len: see make_dataset)."""
  text_len = seq_len if text_len is None else text_len
  for part, part_docs in zip(getattr(docs, 'parts', ()), getattr(docs, 'documents', ())):  # each repeats alone
    if len(part_docs) < shard_count:
      raise ValueError(f'data.source: the mixture\'s part {part.source!r} has {len(part_docs)} training document(s), '
                       f'fewer than the {shard_count} processes that each read a share: add text to it, or drop it')
  need = global_batch * text_len
  if len(docs) > need:  # enough documents of at least one token each
    return
  if isinstance(docs, prepared.PreparedSplit):
    tokens = docs.num_tokens + len(docs)
  else:
    tokens = sum(len(tokenizer.encode(d)) + 1 for d in docs)
  rows = len(docs) if packing == 'pad' else math.ceil(tokens / text_len)
  if rows < global_batch or len(docs) < shard_count:
    held = f' ({text_len} tokens of text)' if text_len != seq_len else ''
    raise ValueError(
        f'data.source is too small: one pass over its {len(docs)} training document(s) ({tokens:,} tokens) '
        f'gives {rows} row(s) of train.seq_len={seq_len}{held}, fewer than one batch of train.batch_size='
        f'{global_batch}: add text, or lower train.batch_size or train.seq_len')


def make_dataset(docs: Sequence[str], tokenizer: tk.Tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
                 packing: str = 'concat', shuffle: bool = True, num_epochs: int | None = None,
                 shard_index: int = 0, shard_count: int = 1, num_workers: int = 0, prefetch: int = 2,
                 add_eos: bool = True, pad_last_batch: bool = False, packing_bins: int = 128,
                 sentences: bool = False, word_segmenter: str = '', text_len: int | None = None) -> grain.IterDataset:
  """A grain IterDataset of batches (see the module docstring).

  batch_size is per process (the global batch / process count). num_epochs None repeats forever, each
  epoch in a new order. shard_index / shard_count: this process's disjoint share of the documents.
  num_workers > 0 tokenizes and packs in that many worker processes; otherwise a thread prefetches
  `prefetch` batches. pad_last_batch (evaluation) fills the last, short batch with padding rows
  (segment_ids 0) instead of dropping it. packing_bins: rows first_fit fills at once (more: fuller rows;
  128 fills 98% of the default corpus at seq_len 128). sentences: add `sentence_ids` and `document_ids`.
  word_segmenter ('jieba'): add `word_starts` (1 where a token starts a word) for whole-word masking of Chinese.
  text_len (default seq_len): pack rows of at most this many tokens, then pad them to seq_len (an objective's
  `input_length(seq_len)`: the room it needs to add tokens without dropping any of the text).
  """
  if packing not in PACKINGS:
    raise ValueError(f'data.packing must be one of {PACKINGS}, got {packing!r}')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} must be in [0, {shard_count})')
  pack_len = seq_len if text_len is None else text_len
  if not 0 < pack_len <= seq_len:
    raise ValueError(f'text_len={text_len} must be in [1, seq_len={seq_len}]')
  rows = functools.partial(_rows, tokenizer=tokenizer, pack_len=pack_len, seq_len=seq_len, shuffle=shuffle,
                           num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count, add_eos=add_eos,
                           sentences=sentences, word_segmenter=word_segmenter, packing=packing,
                           packing_bins=max(batch_size, packing_bins))
  if isinstance(docs, mixture.MixedDocuments) and num_epochs is None:  # rows of each source, mixed at the weights
    it = grain.IterDataset.mix([rows(part, seed=seed + i, offset=docs.offsets[i]).map(_Tag(i))
                                for i, part in enumerate(docs.documents)], list(docs.weights))
  else:  # one source; or a finite pass over a mixture: every document of every source, unweighted
    it = rows(docs, seed=seed)
  if pad_last_batch:
    it = it.batch(batch_size, drop_remainder=False).map(_pad_batch(batch_size, seq_len))
  else:
    it = it.batch(batch_size, drop_remainder=True)
  if num_workers > 0:
    from absl import flags  # grain's workers read absl flags, which a plain Python program never parsed
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  elif prefetch > 0:
    it = ge.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
  return it


def _rows(docs: Sequence[str], *, tokenizer: tk.Tokenizer, seed: int, offset: int = 0, pack_len: int, seq_len: int,
          shuffle: bool, num_epochs: int | None, shard_index: int, shard_count: int, add_eos: bool, sentences: bool,
          word_segmenter: str, packing: str, packing_bins: int) -> grain.IterDataset:
  """The packed rows (unbatched) of one source's documents; document_ids count from offset + 1.

  The documents are shuffled (each epoch anew) and repeated before each process takes every shard_count-th: one
  global order, whatever the number of processes."""
  _check_features(docs, sentences, word_segmenter)
  ds = grain.MapDataset.source(docs)
  if sentences:  # before sharding and shuffling: a document's id is its index in docs
    ds = ds.map_with_index(functools.partial(_with_index, offset))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)[shard_index::shard_count]
  prefix, suffix = specials.frame(tokenizer) if add_eos and tokenizer is not None else ((), (tk.EOS,))
  if isinstance(docs, prepared.PreparedSplit):
    featurize = FromTokens(add_eos, sentences, word_segmenter, prefix, suffix)
  else:
    featurize = Tokenize(tokenizer, add_eos, sentences, word_segmenter, prefix, suffix)
  ds = ds.map(featurize).filter(_has_tokens)
  it = ds.to_iter_dataset(read_options=_read_options(docs))
  lengths = {'tokens': pack_len, **({'sentence_ids': pack_len, 'document_ids': pack_len} if sentences else {}),
             **({'word_starts': pack_len} if word_segmenter else {})}
  if packing == 'concat':
    it = ge.ConcatThenSplitIterDataset(it, length_struct=lengths).map(_rename)
  else:
    it = ge.FlatMapIterDataset(it, _Chunk(pack_len, max_fan_out=1 << 20))
    if packing == 'first_fit':
      it = ge.FirstFitPackIterDataset(it, length_struct=lengths, num_packing_bins=packing_bins, seed=seed,
                                      shuffle_bins=shuffle).map(_rename)
    else:
      it = it.map(_pad_row(pack_len))
  if pack_len < seq_len:  # the room the objective fills: padding here
    it = it.map(_widen(seq_len))
  return it


# No reading threads: for data already in memory. grain's default (16 threads, 500 elements ahead) suits documents
# read from storage (TFDS array_record); for documents in memory the threads only contend for the GIL (grain's
# advice: no threads), with the packing and with the main thread's tracing of the step. Without them
# benchmarks/input_pipeline.py packed the default corpus 1.1-1.2x (concat), 2-4x (first_fit) and 2-6x (pad) as fast
# on 2 busy cores, a mixture of 1-3-word documents 4x, and a fine-tuning run of a tiny GPT traced its step in 0.5 s
# instead of 5 s; the batches and the iterator state are the same.
IN_MEMORY = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _read_options(docs: Sequence[str]) -> grain.ReadOptions | None:
  local = isinstance(docs, prepared.PreparedSplit) and docs.local  # a local read takes microseconds: no threads
  return IN_MEMORY if isinstance(docs, (list, tuple)) or local else None


def _pad_batch(batch_size: int, seq_len: int):
  def fn(batch):
    n = batch['tokens'].shape[0]
    if n == batch_size:
      return batch
    return {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  return fn


def fill_rate(batches) -> float:
  """Fraction of token positions that hold a real token (segment_ids > 0)."""
  real = total = 0
  for b in batches:
    real += int((b['segment_ids'] > 0).sum())
    total += b['segment_ids'].size
  return real / max(total, 1)

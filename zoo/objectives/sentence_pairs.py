"""BERT's MLM + next-sentence prediction (NSP) and ALBERT's MLM + sentence-order prediction (SOP).

Each example is "[CLS] A [SEP] B [SEP]" with token types 0 (A) and 1 (B), cut from the documents of the batch
at their sentence boundaries (the pipeline's `sentence_ids`):
  NSP: B is the text that follows A in the same document half of the time (label 1), and text from another
       document otherwise (label 0): another document *id* (the pipeline's document_ids), so a document that
       concat packing continues into the next row is never its own negative. A batch that holds one document
       draws the negative from the last `earlier` distinct documents of earlier batches; when there is none (the
       first batches of a run, a long document right after a resume), that row's pair has weight 0: no label
       is taught (never a forced positive), and the MLM loss still counts. The buffer is not in the checkpoint:
       right after a resume, a one-document batch's negatives differ from an uninterrupted run's;
  SOP: B follows A half of the time (label 1); otherwise the same two pieces come swapped (label 0).
Then MLM masking (any of Mlm's modes) applies to A and B. The loss is the MLM loss plus the pair loss.
"""
from __future__ import annotations

import collections
import dataclasses
import logging

import numpy as np

from zoo.objectives.base import Batch, cross_entropy
from zoo.objectives.mlm import Mlm

log = logging.getLogger('zoo')


def documents(batch: Batch, is_special) -> tuple[list[list[np.ndarray]], np.ndarray]:
  """The batch's document pieces (each packed segment of each row) as lists of sentences of ordinary tokens
  (is_special(ids): the tokenizer's special ids, left out: the framing of each document),
  and each piece's document id: the pipeline's document_ids (one document over all the rows it reaches), else
  one id per segment of each row (negative numbers). With the batch's `word_starts` (a Chinese word segmenter's),
  each token comes as `with_start`'s token * 2 + start, so that cutting and truncating keep the two together."""
  docs, ids = [], []
  t = batch['tokens'].shape[1]
  doc_ids = batch.get('document_ids')
  starts = batch.get('word_starts')
  for row, (tokens, seg, sent) in enumerate(zip(batch['tokens'], batch['segment_ids'], batch['sentence_ids'])):
    keep = ~is_special(tokens)
    values = tokens if starts is None else with_start(tokens, starts[row])
    for s in np.unique(seg[seg > 0]):
      in_doc = seg == s
      sentences = [values[in_doc & (sent == k) & keep] for k in np.unique(sent[in_doc])]
      sentences = [x for x in sentences if len(x)]
      if sentences:
        docs.append(sentences)
        ids.append(int(doc_ids[row][in_doc][0]) if doc_ids is not None else -(row * (t + 1) + int(s)))
  return docs, np.asarray(ids, np.int64)


def with_start(tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """token * 2 + (1 where a word starts): one int64 per token (`split_start` undoes it).

  >>> split_start(with_start(np.array([7, 9]), np.array([1, 0])))
  (array([7, 9]), array([1, 0]))
  """
  return np.asarray(tokens, np.int64) * 2 + (np.asarray(starts) > 0)


def split_start(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return values >> 1, values & 1


def truncate_pair(a: np.ndarray, b: np.ndarray, limit: int, rng) -> tuple[np.ndarray, np.ndarray]:
  """BERT's truncate_seq_pair: drop tokens from the longer piece, at its front or back at random."""
  while len(a) + len(b) > limit:
    if len(a) >= len(b):
      a = a[1:] if rng.random() < 0.5 else a[:-1]
    else:
      b = b[1:] if rng.random() < 0.5 else b[:-1]
  return a, b


@dataclasses.dataclass
class MlmNsp(Mlm):
  pair_task: str = 'nsp'  # 'nsp' (B from another document) or 'sop' (A and B swapped)
  positive_rate: float = 0.5  # fraction of pairs in order (label 1)
  earlier: int = 64  # NSP: distinct documents of earlier batches kept for a batch that holds only one document

  name = 'nsp'
  needs_sentences = True
  needs_tokens = ('mask', 'cls', 'sep')

  def __post_init__(self):
    self._earlier = collections.OrderedDict()  # document id -> its latest piece's sentences, oldest first

  def remember(self, docs, ids) -> None:
    """Keep the latest piece of each of the last `earlier` distinct documents (a long document that fills many
    batches takes one place, not all of them)."""
    for key, doc in zip(ids.tolist(), docs):
      self._earlier.pop(key, None)
      self._earlier[key] = doc
    while len(self._earlier) > max(self.earlier, 0):
      self._earlier.popitem(last=False)

  def negative(self, docs, ids, d: int, rng) -> list[np.ndarray] | None:
    """The sentences of a document piece whose document id is not ids[d]: from this batch, else an earlier one;
    None when there is none."""
    others = np.flatnonzero(ids != ids[d])
    if len(others):
      return docs[int(others[rng.integers(len(others))])]
    pool = [doc for key, doc in self._earlier.items() if key != ids[d]]
    if not pool:
      if not getattr(self, '_said', False):
        log.info("objective.pair_task='nsp': a batch holds one document and no earlier batch left another, so "
                 'its negative pairs are left out of the NSP loss (weight 0); more documents per batch (a larger '
                 'train.batch_size or a shorter train.seq_len) avoid it')
        self._said = True
      return None
    return pool[int(rng.integers(len(pool)))]

  def pair(self, docs, ids, rng, limit: int):
    """(A, B, label, weight): A and B as token arrays, label 1 when B follows A; weight 0 for a negative that has
    no other document to come from."""
    d = int(rng.integers(len(docs)))
    doc = docs[d]
    if len(doc) == 1:  # one sentence: split it in two pieces
      cut = max(1, len(doc[0]) // 2)
      doc = [doc[0][:cut], doc[0][cut:]] if len(doc[0]) > 1 else [doc[0], doc[0][:0]]
    split = int(rng.integers(1, len(doc)))
    a, b = np.concatenate(doc[:split]), np.concatenate(doc[split:])
    label, weight = int(rng.random() < self.positive_rate), 1.0
    if not label:
      if self.pair_task == 'sop':
        a, b = b, a
      else:  # NSP: B from another document, from a random sentence on
        other = self.negative(docs, ids, d, rng)
        if other is None:
          weight = 0.0
        else:
          b = np.concatenate(other[int(rng.integers(len(other))):])
    a, b = truncate_pair(a, b, limit, rng)
    return a, b, label, weight

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    if self.pair_task not in ('nsp', 'sop'):
      raise ValueError(f"objective.pair_task={self.pair_task!r}: use 'nsp' or 'sop'")
    b, t = batch['tokens'].shape
    docs, ids = documents(batch, self.ids.is_special)
    cls, sep = (self.ids.need(name, f'objective.name={self.name!r}') for name in ('cls', 'sep'))
    tokens = np.zeros((b, t), np.int32)
    types = np.zeros((b, t), np.int32)
    labels = np.zeros((b,), np.int32)
    weights = np.zeros((b,), np.float32)
    words = 'word_starts' in batch  # the segmenter's word boundaries go with the tokens into the pairs
    starts = np.zeros((b, t), np.int32)
    for row in range(b):
      if not docs:
        continue
      a, bb, labels[row], weights[row] = self.pair(docs, ids, rng, t - 3)
      if words:
        (a, a_starts), (bb, b_starts) = split_start(a), split_start(bb)
        row_starts = np.concatenate([[1], a_starts, [1], b_starts, [1]])  # [CLS] and [SEP] are words of their own
        starts[row, :len(row_starts)] = row_starts
      pair = np.concatenate([[cls], a, [sep], bb, [sep]]).astype(np.int32)
      tokens[row, :len(pair)] = pair
      types[row, len(a) + 2:len(pair)] = 1
    if 'document_ids' in batch:  # real documents (not a dummy batch's): kept for later one-document batches
      self.remember(docs, ids)
    seg = (tokens > 0).astype(np.int32)
    positions = np.where(seg > 0, np.arange(t, dtype=np.int32)[None], 0)
    out = super().example({'tokens': tokens, 'segment_ids': seg, 'positions': positions,
                           **({'word_starts': starts} if words else {})}, rng)
    out.update(token_types=types, pair_labels=labels, pair_weights=weights)
    return out

  def inputs(self, example):
    return {**super().inputs(example), 'token_types': example['token_types']}

  def terms(self, outputs, example):
    return {**super().terms(outputs, example),
            self.pair_task: cross_entropy(outputs['nsp_logits'], example['pair_labels'],
                                          example['pair_weights'], self.label_smoothing)}

  def counts(self, example):
    return {**super().counts(example), self.pair_task: example['pair_weights'].sum()}

  def dummy_batch(self, batch_size: int, seq_len: int) -> Batch:
    batch = super().dummy_batch(batch_size, seq_len)  # two documents a row (NSP needs another), two sentences each
    quarter = np.arange(seq_len) * 4 // max(seq_len, 1)
    batch['segment_ids'] = np.broadcast_to(quarter // 2 + 1, (batch_size, seq_len)).astype(np.int32)
    batch['sentence_ids'] = np.broadcast_to(quarter % 2 + 1, (batch_size, seq_len)).astype(np.int32)
    return batch


@dataclasses.dataclass
class MlmSop(MlmNsp):
  pair_task: str = 'sop'
  name = 'sop'

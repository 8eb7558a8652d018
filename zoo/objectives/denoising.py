"""BART-style denoising for encoder-decoders (BART, and the RNN encoder-decoder): the encoder reads a
corrupted document, the decoder reconstructs the original.

Noise, each with its rate (all combinable), applied per document of a packed row in fairseq's order
(`DenoisingDataset`: sentence permutation, whole-word masking, insertion, rotation last):
  permute_rate   fraction of documents whose sentences are shuffled (sentence permutation)
  mask_rate      ceil(mask_rate * words) whole words, every piece replaced by [MASK] (token masking)
  delete_rate    ceil(delete_rate * words) whole words deleted (token deletion)
  infill_rate    ceil(infill_rate * words) whole words removed in spans of Poisson(poisson_lambda) words, each span
                 replaced by a single [MASK]; a span of length 0 inserts a [MASK] (text infilling)
  insert_rate    ceil(insert_rate * tokens) [MASK]s inserted at random places (insertion)
  rotate_rate    fraction of documents rotated to start at a random token (document rotation)
  mask_random    fairseq's random_ratio: of the masked words (token masking), the spans (infilling) and the
                 insertions, this fraction gets a random token instead of [MASK] (BART: 0.1)
Words are whole words, as fairseq's mask_whole_words: a piece that starts with '▁' and the pieces after it that
do not (the tokenizer's `word_starts`, which the trainer passes as for MLM's whole-word masking, or the batch's
`word_starts` from a Chinese word segmenter); a span never starts or ends inside a word. Without word_starts
every token is a word (fairseq without mask_whole_words). Infilling spans neither overlap nor touch (fairseq's
may merge), so the rate is met exactly: lengths are drawn until they reach the budget (the last one trimmed)
and placed uniformly at random among all such placements.
With every rate at 0 the input is the document itself. The target is the original row (documents closed by
[EOS]); the decoder reads it shifted right behind [BOS].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from zoo.objectives.base import Batch, Seq2SeqObjective


@dataclasses.dataclass
class Denoising(Seq2SeqObjective):
  mask_rate: float = 0.0
  delete_rate: float = 0.0
  infill_rate: float = 0.3  # BART's best: text infilling of 30% of the words ...
  poisson_lambda: float = 3.0
  permute_rate: float = 1.0  # ... with every document's sentences permuted
  rotate_rate: float = 0.0
  insert_rate: float = 0.0
  mask_random: float = 0.0  # fairseq's default; BART's recipe (configs/bart.py) uses 0.1
  word_starts: Any = None  # bool per vocabulary id: the piece starts a word (from the tokenizer)

  name = 'denoising'
  kinds = ('encoder_decoder',)
  any_tokenizer = True
  needs_tokens = ('mask',)
  needs_sentences = True

  def starts_of(self, x: np.ndarray) -> np.ndarray:
    """Per token of x: it starts a word (the tokenizer's word_starts; every token without them)."""
    if self.word_starts is None:
      return np.ones(len(x), bool)
    return np.asarray(self.word_starts, bool)[x]

  @staticmethod
  def words(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The words of a sequence as [lo, hi) token ranges (its first token starts one whatever it is)."""
    starts = np.asarray(starts, bool).copy()
    if len(starts):
      starts[0] = True
    lo = np.flatnonzero(starts)
    return lo, np.append(lo[1:], len(starts)).astype(lo.dtype)

  def replacement(self, rng) -> int:
    """[MASK], or with probability mask_random a random (non-special) token."""
    if self.mask_random and rng.random() < self.mask_random:
      return self.ids.random_token(rng)
    return self.ids.need('mask', f'objective.name={self.name!r}')

  def span_lengths(self, budget: int, rng) -> np.ndarray:
    """Poisson(poisson_lambda) span lengths (in words) drawn until they cover `budget`, the last one trimmed to
    it (fairseq's add_whole_word_mask), in random order."""
    lengths = np.zeros(0, np.int64)
    while lengths.sum() < budget:
      lengths = np.append(lengths, rng.poisson(self.poisson_lambda, max(budget, 1)))
    last = int(np.argmax(np.cumsum(lengths) >= budget))
    lengths = lengths[:last + 1]
    lengths[last] -= lengths.sum() - budget
    return lengths[rng.permutation(len(lengths))]

  def infill(self, x: np.ndarray, rng, spans: list | None = None, starts=None) -> np.ndarray:
    """Text infilling of one document: spans of whole words covering ceil(infill_rate * words), each becoming one
    [MASK] (or a random token: mask_random). `spans` collects the span lengths in words."""
    lo, hi = self.words(self.starts_of(x) if starts is None else starts)
    m = len(lo)
    budget = min(math.ceil(self.infill_rate * m), m)
    if budget == 0:
      return np.asarray(x, np.int32)
    lengths = self.span_lengths(budget, rng)
    while budget + len(lengths) - 1 > m:  # no room for a gap between every two spans: fewer spans
      zero = np.flatnonzero(lengths == 0)
      if len(zero):
        lengths = np.delete(lengths, zero[0])
      else:
        lengths = np.append(lengths[:-2], lengths[-2:].sum())
    # uniform over placements with a gap of >= 1 word between neighbours: k sorted distinct slots in
    # [0, m - budget], each span shifted right by the words of the spans before it
    slots = np.sort(rng.choice(m - budget + 1, len(lengths), replace=False))
    first = slots + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out, prev = [], 0
    for s, length in zip(first, lengths):
      a = int(lo[s]) if s < m else len(x)
      b = int(hi[s + length - 1]) if length else a
      out += [x[prev:a], [self.replacement(rng)]]
      prev = b
      if spans is not None:
        spans.append(int(length))
    out.append(x[prev:])
    return np.concatenate(out).astype(np.int32)

  def choose_words(self, rate: float, starts: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """ceil(rate * words) whole words, at random: their [lo, hi) token ranges."""
    lo, hi = self.words(starts)
    picked = np.sort(rng.permutation(len(lo))[:math.ceil(rate * len(lo))])
    return lo[picked], hi[picked]

  def insert(self, x: np.ndarray, rng) -> np.ndarray:
    """Insertion noise: ceil(insert_rate * len(x)) new tokens at random places, ceil(mask_random of them)
    random tokens and the rest [MASK] (fairseq's add_insertion_noise)."""
    n = math.ceil(self.insert_rate * len(x))
    if n == 0:
      return x
    out = np.zeros(len(x) + n, np.int32)
    new = rng.permutation(len(out))[:n]
    num_random = math.ceil(n * self.mask_random)
    out[new] = self.ids.need('mask', f'objective.name={self.name!r}')
    out[new[:num_random]] = self.ids.random_tokens(rng, num_random)
    keep = np.ones(len(out), bool)
    keep[new] = False
    out[keep] = x
    return out

  def noise(self, sentences: list[np.ndarray], rng, starts: list[np.ndarray] | None = None) -> np.ndarray:
    """One document (its sentences, and optionally each one's word starts) -> its corrupted token sequence."""
    if starts is None:
      starts = [self.starts_of(s) for s in sentences]
    if len(sentences) > 1 and rng.random() < self.permute_rate:
      order = rng.permutation(len(sentences))
      sentences, starts = [sentences[i] for i in order], [starts[i] for i in order]
    x = np.concatenate(sentences).astype(np.int32) if sentences else np.zeros(0, np.int32)
    w = np.concatenate(starts).astype(bool) if starts else np.zeros(0, bool)
    if self.mask_rate and len(x):  # whole words, every piece [MASK] or (mask_random of the words) random
      x = x.copy()
      for a, b in zip(*self.choose_words(self.mask_rate, w, rng)):
        rand = self.mask_random and rng.random() < self.mask_random
        x[a:b] = self.ids.random_tokens(rng, b - a) if rand else self.ids.need('mask', f'objective.name={self.name!r}')
    if self.delete_rate and len(x):
      keep = np.ones(len(x), bool)
      for a, b in zip(*self.choose_words(self.delete_rate, w, rng)):
        keep[a:b] = False
      x, w = x[keep], w[keep]
    if self.infill_rate and len(x):
      x = self.infill(x, rng, starts=w)
    if self.insert_rate and len(x):
      x = self.insert(x, rng)
    if len(x) > 1 and rng.random() < self.rotate_rate:  # last, as fairseq: the noised document is rolled
      x = np.roll(x, -int(rng.integers(1, len(x))))
    return x.astype(np.int32)

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg, sent = batch['tokens'], batch['segment_ids'], batch['sentence_ids']
    b, t = tokens.shape
    pad = self.ids.pad
    inputs = np.full((b, t), pad, np.int32)
    for row in range(b):
      pieces = []
      for s in np.unique(seg[row][seg[row] > 0]):
        doc = tokens[row][seg[row] == s]
        ids = sent[row][seg[row] == s]
        # word starts: the batch's (a Chinese word segmenter) or the tokenizer's
        w = batch['word_starts'][row][seg[row] == s].astype(bool) if 'word_starts' in batch else self.starts_of(doc)
        # the document's framing (zoo's [EOS] after it; BART's <s> before and </s> after) stays as it is
        special = self.ids.is_special(doc)
        lead = int(len(doc) > 1 and special[0] and doc[0] != self.ids.end)
        tail = int(len(doc) > lead and special[-1])
        body = slice(lead, len(doc) - tail)
        text, text_ids, text_w = doc[body], ids[body], w[body]
        keys = np.unique(text_ids)
        pieces.append(doc[:lead])
        pieces.append(self.noise([text[text_ids == k] for k in keys], rng, [text_w[text_ids == k] for k in keys]))
        pieces.append(doc[len(doc) - tail:])
      row_in = np.concatenate(pieces)[:t].astype(np.int32) if pieces else np.zeros(0, np.int32)
      inputs[row, :len(row_in)] = row_in
    targets = np.where(seg > 0, tokens, pad).astype(np.int32)
    decoder_tokens = np.full_like(targets, pad)
    decoder_tokens[:, 0] = self.ids.decoder_start
    decoder_tokens[:, 1:] = targets[:, :-1]
    return {'tokens': inputs, 'decoder_tokens': decoder_tokens, 'targets': targets,
            'weights': (seg > 0).astype(np.float32)}

  def dummy_batch(self, batch_size: int, seq_len: int) -> Batch:
    batch = super().dummy_batch(batch_size, seq_len)
    batch['sentence_ids'] = np.ones((batch_size, seq_len), np.int32)
    return batch

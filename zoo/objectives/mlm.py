"""Masked language modelling (BERT): 15% of the maskable tokens are chosen; of those 80% become [MASK],
10% a random token and 10% stay; the loss is over the chosen positions only.

Maskable: real tokens (segment > 0) that are not special tokens. What is chosen (`masking`):
  'token'       single tokens, uniformly (BERT)
  'whole_word'  whole words: all the pieces of a chosen word, never part of one (BERT-wwm). A word is a piece
                that starts with '▁' and the pieces after it that do not; text without spaces (Chinese) needs
                a word segmenter upstream, as Chinese BERT-wwm does
  'span'        contiguous spans of whole words, lengths from a geometric distribution (p = span_p) clipped at
                span_max words (SpanBERT)
The mask is drawn afresh each time a batch is drawn (dynamic masking, as RoBERTa), from a generator seeded by
(seed, step): a resumed run draws the same. dynamic=False fixes one mask per example instead (the original
BERT's static masking), seeded by the example's tokens: it takes effect where the same rows come back (pad
or first_fit packing of short documents); with concat packing and a new shuffle each epoch, rows rarely
repeat, so masks differ anyway.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any

import numpy as np

from zoo.data import tokenizer as tk
from zoo.objectives.base import Batch, Objective, cross_entropy


@dataclasses.dataclass
class Mlm(Objective):
  mask_rate: float = 0.15  # fraction of maskable tokens chosen for prediction
  mask_token_rate: float = 0.8  # of the chosen: replaced by [MASK]
  random_token_rate: float = 0.1  # of the chosen: replaced by a random (non-special) token; the rest stay
  masking: str = 'token'  # 'token', 'whole_word' or 'span'
  span_p: float = 0.2  # span masking: geometric parameter of the span length in words
  span_max: int = 10  # span masking: longest span, in words
  dynamic: bool = True  # False: the same mask every time an example is seen
  word_starts: Any = None  # bool per vocabulary id: the piece starts a word (from the tokenizer)

  name = 'mlm'
  kinds = ('encoder',)

  def max_predictions(self, seq_len: int) -> int:
    """Prediction slots per row: the budget, plus room for a last word or span that passes it."""
    rate = self.mask_rate if self.masking == 'token' else 1.25 * self.mask_rate
    return min(seq_len, max(1, math.ceil(rate * seq_len)))

  def choose(self, tokens: np.ndarray, maskable: np.ndarray, rng: np.random.Generator,
             starts=None) -> np.ndarray:
    """Positions chosen in one row: about mask_rate of its maskable tokens (BERT rounds per row)."""
    if self.masking not in ('token', 'whole_word', 'span'):
      raise ValueError(f"objective.masking={self.masking!r}: use 'token', 'whole_word' or 'span'")
    idx = np.flatnonzero(maskable)
    n = min(math.ceil(self.mask_rate * len(tokens)), int(round(self.mask_rate * len(idx))))
    if len(idx) and n == 0 and rng.random() < self.mask_rate * len(idx):
      n = 1  # short rows: keep the expected rate
    if not n:
      return idx[:0]
    if self.masking == 'token':
      return np.sort(rng.choice(idx, n, replace=False))
    return self._choose_words(tokens, maskable, n, rng, starts=starts)

  def words(self, tokens: np.ndarray, maskable: np.ndarray, starts=None) -> list[np.ndarray]:
    """The maskable words of a row, each as its token positions (a word with any unmaskable piece is
    left out: it would be masked in part). starts: per-token word starts from the pipeline (a Chinese
    word segmenter), else the tokenizer's '▁' pieces."""
    if starts is None:
      if self.word_starts is None:
        raise ValueError(f"objective.masking={self.masking!r} needs word boundaries: pass the tokenizer's "
                         f"word_starts (the trainer does)")
      starts = np.asarray(self.word_starts)[tokens]
    starts = np.asarray(starts, bool) | ~maskable
    starts[0] = True
    ids = np.cumsum(starts)
    bounds = np.flatnonzero(np.diff(np.concatenate([[0], ids, [ids[-1] + 1]])))
    words = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return [w for w in words if maskable[w].all()]

  def _choose_words(self, tokens, maskable, budget: int, rng, spans: list | None = None,
                    starts=None) -> np.ndarray:
    """Whole words (or spans of them) until `budget` tokens are chosen; `spans` collects span lengths."""
    words = self.words(tokens, maskable, starts)
    limit = self.max_predictions(len(tokens))
    picked: list[np.ndarray] = []
    count = 0
    if self.masking == 'whole_word':  # BERT-wwm: whole words in random order while they fit the budget
      for i in rng.permutation(len(words)):
        if count + len(words[i]) <= budget:
          picked.append(words[i])
          count += len(words[i])
    else:  # SpanBERT: a span length, then a start where it fits, until the budget is reached
      taken = np.zeros(len(words), bool)
      for _ in range(4 * len(words)):
        if count >= budget or taken.all():
          break
        length = min(int(rng.geometric(self.span_p)), self.span_max, len(words))
        for _ in range(20):  # another start for the same length, so overlaps do not favour short spans
          start = int(rng.integers(len(words) - length + 1))
          span = np.arange(start, start + length)
          if not taken[span].any():
            break
        else:
          continue
        pieces = np.concatenate([words[i] for i in span])
        if count + len(pieces) > limit:
          break
        taken[span] = True
        picked.append(pieces)
        count += len(pieces)
        if spans is not None:
          spans.append(length)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg = batch['tokens'], batch['segment_ids']
    b, t = tokens.shape
    maskable = (seg > 0) & (tokens >= self.num_special)
    p = self.max_predictions(t)
    inputs = tokens.copy()
    mlm_positions = np.zeros((b, p), np.int32)
    mlm_labels = np.zeros((b, p), np.int32)
    mlm_weights = np.zeros((b, p), np.float32)
    for row in range(b):
      # static masking: the same draws whenever this row's tokens come back
      r = rng if self.dynamic else np.random.default_rng(zlib.crc32(tokens[row].tobytes()))
      chosen = self.choose(tokens[row], maskable[row], r,
                           None if 'word_starts' not in batch else batch['word_starts'][row])
      n = len(chosen)
      u = r.random(n)
      to_mask = chosen[u < self.mask_token_rate]
      to_random = chosen[(u >= self.mask_token_rate) & (u < self.mask_token_rate + self.random_token_rate)]
      inputs[row, to_mask] = tk.MASK
      inputs[row, to_random] = r.integers(self.num_special, self.vocab_size, len(to_random))
      mlm_positions[row, :n] = chosen
      mlm_labels[row, :n] = tokens[row, chosen]
      mlm_weights[row, :n] = 1.0
    return {'tokens': inputs, 'segment_ids': seg, 'positions': batch['positions'],
            'mlm_positions': mlm_positions, 'mlm_labels': mlm_labels, 'mlm_weights': mlm_weights}

  def inputs(self, example):
    return {'tokens': example['tokens'], 'segment_ids': example['segment_ids'],
            'positions': example['positions'], 'mlm_positions': example['mlm_positions']}

  def terms(self, outputs, example):
    return {'mlm': cross_entropy(outputs['mlm_logits'], example['mlm_labels'], example['mlm_weights'])}

  def counts(self, example):
    return {'mlm': example['mlm_weights'].sum()}

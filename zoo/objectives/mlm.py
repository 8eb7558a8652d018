"""Masked language modelling (BERT): 15% of the maskable tokens are chosen; of those 80% become [MASK],
10% a random token and 10% stay; the loss is over the chosen positions only.

Maskable: real tokens (segment > 0) that are not special tokens. What is chosen (`masking`):
  'token'       single tokens, uniformly (BERT)
  'whole_word'  whole words: all the pieces of a chosen word, never part of one (BERT-wwm). A word is a piece
                that starts with '▁' and the pieces after it that do not; text without spaces (Chinese) needs
                a word segmenter upstream, as Chinese BERT-wwm does
  'span'        contiguous spans of whole words (SpanBERT, Joshi et al. 2020): span lengths in words from a
                geometric distribution (p = span_p) truncated at span_max words by resampling (mean 3.8 words
                at 0.2 and 10, not clipping's 4.5); the 80/10/10 replacement is decided per span: all of a
                span's tokens become [MASK], or all random tokens, or all stay
ngram_max > 1 (ALBERT, Lan et al. 2020) chooses n-grams of tokens ('token') or of whole words ('whole_word'),
n <= ngram_max with p(n) proportional to 1/n; their replacement is per token, as ALBERT's. Spans and n-grams
cover contiguous text only (never across a special token, padding or a word left out).
sbo=True (with masking='span') adds SpanBERT's span boundary objective, a second loss term 'sbo': each token of a
masked span is also predicted from the encoder outputs of the two tokens just outside its span and its position in
the span (zoo.objectives.sbo: the boundaries on the host; zoo.models.bert.SpanBoundaryHead: the head, scored by
the MLM head's tied output projection). The loss is MLM + SBO.
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

from zoo.objectives import sbo as sbo_lib
from zoo.objectives.base import Batch, Objective, cross_entropy


@dataclasses.dataclass
class Mlm(Objective):
  mask_rate: float = 0.15  # fraction of maskable tokens chosen for prediction
  mask_token_rate: float = 0.8  # of the chosen: replaced by [MASK]
  random_token_rate: float = 0.1  # of the chosen: replaced by a random (non-special) token; the rest stay
  masking: str = 'token'  # 'token', 'whole_word' or 'span'
  span_p: float = 0.2  # span masking: geometric parameter of the span length in words
  span_max: int = 10  # span masking: longest span, in words (longer draws are drawn again)
  ngram_max: int = 1  # > 1: n-grams of n <= ngram_max tokens or whole words, p(n) ~ 1/n (ALBERT: 3)
  dynamic: bool = True  # False: the same mask every time an example is seen
  word_starts: Any = None  # bool per vocabulary id: the piece starts a word (from the tokenizer)
  sbo: bool = False  # SpanBERT's span boundary objective, a second term 'sbo' (needs masking='span')

  name = 'mlm'
  kinds = ('encoder',)
  any_tokenizer = True
  needs_tokens = ('mask',)

  def max_predictions(self, seq_len: int) -> int:
    """Prediction slots per row: the budget, plus room for a last word or span that passes it."""
    rate = self.mask_rate if self.masking == 'token' and self.ngram_max == 1 else 1.25 * self.mask_rate
    return min(seq_len, max(1, math.ceil(rate * seq_len)))

  def model_fields(self) -> dict[str, Any]:
    """sbo: the model builds its span boundary head."""
    self._check_sbo()
    return {'sbo': True} if self.sbo else {}

  def _check_sbo(self) -> None:
    if self.sbo and self.masking != 'span':
      raise ValueError(f"objective.sbo=True (SpanBERT's span boundary objective) predicts masked spans from their "
                       f"boundaries: it needs objective.masking='span', not {self.masking!r}")

  def choose(self, tokens: np.ndarray, maskable: np.ndarray, rng: np.random.Generator,
             starts=None) -> tuple[np.ndarray, np.ndarray]:
    """Positions chosen in one row, about mask_rate of its maskable tokens (BERT rounds per row), and for each
    the group whose 80/10/10 replacement it shares: its own index, or its span's under span masking."""
    if self.masking not in ('token', 'whole_word', 'span'):
      raise ValueError(f"objective.masking={self.masking!r}: use 'token', 'whole_word' or 'span'")
    if self.ngram_max < 1:
      raise ValueError(f'objective.ngram_max={self.ngram_max}: use 1 (no n-grams) or more (ALBERT: 3)')
    idx = np.flatnonzero(maskable)
    n = min(math.ceil(self.mask_rate * len(tokens)), int(round(self.mask_rate * len(idx))))
    if len(idx) and n == 0 and rng.random() < self.mask_rate * len(idx):
      n = 1  # short rows: keep the expected rate
    if not n:
      return idx[:0], idx[:0]
    if self.masking == 'span':
      return self._choose_spans(tokens, maskable, n, rng, starts=starts)
    if self.ngram_max > 1:  # ALBERT: the replacement stays per token
      chosen = self._choose_spans(tokens, maskable, n, rng, starts=starts)[0]
      return chosen, np.arange(len(chosen))
    if self.masking == 'token':
      chosen = np.sort(rng.choice(idx, n, replace=False))
    else:
      chosen = self._choose_words(tokens, maskable, n, rng, starts=starts)
    return chosen, np.arange(len(chosen))

  def units(self, tokens: np.ndarray, maskable: np.ndarray, starts=None,
            words: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The maskable units of a row as [lo, hi) token ranges: its tokens, or its whole words (masking
    whole_word or span, or words=True; a word with any unmaskable piece is left out: it would be masked in
    part). starts: per-token word starts from the pipeline (a Chinese word segmenter), else the tokenizer's
    '▁' pieces."""
    if not (self.masking != 'token' if words is None else words):
      idx = np.flatnonzero(maskable)
      return idx, idx + 1
    if starts is None:
      if self.word_starts is None:
        raise ValueError(f"objective.masking={self.masking!r} needs word boundaries: pass the tokenizer's "
                         f"word_starts (the trainer does)")
      starts = np.asarray(self.word_starts)[tokens]
    starts = np.asarray(starts, bool) | ~maskable
    starts[0] = True
    lo = np.flatnonzero(starts)
    hi = np.append(lo[1:], len(tokens))
    whole = np.add.reduceat(~maskable, lo) == 0
    return lo[whole], hi[whole]

  def words(self, tokens: np.ndarray, maskable: np.ndarray, starts=None) -> list[np.ndarray]:
    """The maskable whole words of a row, each as its token positions (see `units`)."""
    lo, hi = self.units(tokens, maskable, starts, words=True)
    return [np.arange(a, b) for a, b in zip(lo, hi)]

  def length_pmf(self) -> np.ndarray:
    """p(length) of spans (in words) or n-grams, lengths 1, 2, ...: SpanBERT's geometric truncated at span_max
    (Geometric(span_p) given <= span_max: a resampled draw, not a clipped one), or ALBERT's p(n) ~ 1/n."""
    if self.masking == 'span':
      k = np.arange(1, self.span_max + 1)
      pmf = self.span_p * (1 - self.span_p) ** (k - 1)
    else:
      pmf = 1.0 / np.arange(1, self.ngram_max + 1)
    return pmf / pmf.sum()

  def _choose_spans(self, tokens, maskable, budget: int, rng, spans: list | None = None,
                    starts=None) -> tuple[np.ndarray, np.ndarray]:
    """Spans (or n-grams) of contiguous units until `budget` tokens are chosen: a length from `length_pmf`,
    then a start where it fits (another start for the same length, so overlaps do not favour short spans).
    Returns the positions and each one's span index; `spans` collects the span lengths in units."""
    lo, hi = self.units(tokens, maskable, starts)
    m = len(lo)
    limit = self.max_predictions(len(tokens))
    pmf = self.length_pmf()
    # breaks[j]: units j and j + 1 are not adjacent in the text; a span never straddles one
    breaks = np.concatenate([[0], np.cumsum(hi[:-1] != lo[1:])]) if m else np.zeros(1, np.int64)
    taken = np.zeros(m + 1, np.int64)  # cumulative count of taken units, refreshed per span
    used = np.zeros(m, bool)
    lengths = rng.choice(len(pmf), size=4 * budget + 8, p=pmf) + 1 if m else []  # attempts, ample
    picked_lo, picked_hi, count = [], [], 0
    for length in lengths:
      if count >= budget:
        break
      if length > m:
        continue  # a row too short for this length: draw another
      cand = rng.integers(0, m - length + 1, 20)
      fits = (taken[cand + length] == taken[cand]) & (breaks[cand + length - 1] == breaks[cand])
      if not fits.any():
        continue
      s = int(cand[np.argmax(fits)])
      a, b = int(lo[s]), int(hi[s + length - 1])
      if count + b - a > limit:
        break
      used[s:s + length] = True
      taken[1:] = np.cumsum(used)
      picked_lo.append(a)
      picked_hi.append(b)
      count += b - a
      if spans is not None:
        spans.append(int(length))
    if not picked_lo:
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(picked_lo)
    sizes = np.asarray(picked_hi)[order] - np.asarray(picked_lo)[order]
    positions = np.concatenate([np.arange(picked_lo[i], picked_hi[i]) for i in order])
    return positions, np.repeat(np.arange(len(order)), sizes)

  def _choose_words(self, tokens, maskable, budget: int, rng, starts=None) -> np.ndarray:
    """BERT-wwm: whole words in random order while they fit the budget."""
    lo, hi = self.units(tokens, maskable, starts)
    picked: list[np.ndarray] = []
    count = 0
    for i in rng.permutation(len(lo)):
      if count + hi[i] - lo[i] <= budget:
        picked.append(np.arange(lo[i], hi[i]))
        count += hi[i] - lo[i]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    self._check_sbo()
    tokens, seg = batch['tokens'], batch['segment_ids']
    b, t = tokens.shape
    maskable = (seg > 0) & ~self.ids.is_special(tokens)
    mask_id = self.ids.need('mask', f'objective.name={self.name!r}')
    p = self.max_predictions(t)
    inputs = tokens.copy()
    mlm_positions = np.zeros((b, p), np.int32)
    mlm_labels = np.zeros((b, p), np.int32)
    mlm_weights = np.zeros((b, p), np.float32)
    spans = np.zeros((3, b, p), np.int32)  # sbo: left and right boundary, offset in the span, per prediction slot
    for row in range(b):
      # static masking: the same draws whenever this row's tokens come back
      r = rng if self.dynamic else np.random.default_rng(zlib.crc32(tokens[row].tobytes()))
      chosen, group = self.choose(tokens[row], maskable[row], r,
                                  None if 'word_starts' not in batch else batch['word_starts'][row])
      n = len(chosen)
      u = r.random(group[-1] + 1 if n else 0)[group]  # one draw per replacement group: per token, or per span
      to_mask = chosen[u < self.mask_token_rate]
      to_random = chosen[(u >= self.mask_token_rate) & (u < self.mask_token_rate + self.random_token_rate)]
      inputs[row, to_mask] = mask_id
      inputs[row, to_random] = self.ids.random_tokens(r, len(to_random))
      mlm_positions[row, :n] = chosen
      mlm_labels[row, :n] = tokens[row, chosen]
      mlm_weights[row, :n] = 1.0
      if self.sbo:
        spans[:, row, :n] = sbo_lib.boundaries(chosen, group, seg[row])
    out = {'tokens': inputs, 'segment_ids': seg, 'positions': batch['positions'],
           'mlm_positions': mlm_positions, 'mlm_labels': mlm_labels, 'mlm_weights': mlm_weights}
    if self.sbo:  # every chosen token is in a span: the SBO targets are the MLM's
      out.update(sbo_left=spans[0], sbo_right=spans[1], sbo_offsets=spans[2], sbo_labels=mlm_labels.copy(),
                 sbo_weights=mlm_weights.copy())
    return out

  def inputs(self, example):
    out = {'tokens': example['tokens'], 'segment_ids': example['segment_ids'],
           'positions': example['positions'], 'mlm_positions': example['mlm_positions']}
    if self.sbo:
      out.update(sbo_left=example['sbo_left'], sbo_right=example['sbo_right'], sbo_offsets=example['sbo_offsets'])
    return out

  def terms(self, outputs, example):
    out = {'mlm': cross_entropy(outputs['mlm_logits'], example['mlm_labels'], example['mlm_weights'],
                                self.label_smoothing)}
    if self.sbo:
      out['sbo'] = cross_entropy(outputs['sbo_logits'], example['sbo_labels'], example['sbo_weights'],
                                 self.label_smoothing)
    return out

  def counts(self, example):
    out = {'mlm': example['mlm_weights'].sum()}
    if self.sbo:
      out['sbo'] = example['sbo_weights'].sum()
    return out

"""BART-style denoising for encoder-decoders (BART, and the RNN encoder-decoder): the encoder reads a
corrupted document, the decoder reconstructs the original.

Noise, each with its rate (all combinable; applied per document of a packed row, in this order):
  permute_rate   fraction of documents whose sentences are shuffled (sentence permutation)
  rotate_rate    fraction of documents rotated to start at a random token (document rotation)
  mask_rate      each token replaced by [MASK] with this probability (token masking)
  delete_rate    each token deleted with this probability (token deletion)
  infill_rate    fraction of tokens removed in spans of Poisson(poisson_lambda) length, each span replaced
                 by a single [MASK]; a span of length 0 inserts a [MASK] (text infilling)
With every rate at 0 the input is the document itself. The target is the original row (documents closed by
[EOS]); the decoder reads it shifted right behind [BOS].
"""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data import tokenizer as tk
from zoo.objectives.base import Batch, Seq2SeqObjective


@dataclasses.dataclass
class Denoising(Seq2SeqObjective):
  mask_rate: float = 0.0
  delete_rate: float = 0.0
  infill_rate: float = 0.3  # BART's best: text infilling of 30% of the tokens ...
  poisson_lambda: float = 3.0
  permute_rate: float = 1.0  # ... with every document's sentences permuted
  rotate_rate: float = 0.0

  name = 'denoising'
  kinds = ('encoder_decoder',)
  needs_sentences = True

  def infill(self, x: np.ndarray, rng, spans: list | None = None) -> np.ndarray:
    """Text infilling of one document: spans covering about infill_rate of x, each becoming one [MASK]."""
    n = len(x)
    budget = int(round(self.infill_rate * n))
    removed = np.zeros(n, bool)
    mask_before = np.zeros(n + 1, bool)  # a [MASK] goes before position i
    covered = 0
    for _ in range(4 * n + 4):
      if covered >= budget:
        break
      length = min(int(rng.poisson(self.poisson_lambda)), budget - covered)
      for _ in range(10):  # a start where the span touches nothing masked yet
        start = int(rng.integers(n - length + 1))
        lo, hi = max(start - 1, 0), min(start + length + 1, n)
        if not removed[lo:hi].any() and not mask_before[start:start + length + 1].any():
          break
      else:
        continue
      removed[start:start + length] = True
      mask_before[start] = True
      covered += length
      if spans is not None:
        spans.append(length)
    out = []
    for i in range(n + 1):
      if mask_before[i]:
        out.append(tk.MASK)
      if i < n and not removed[i]:
        out.append(x[i])
    return np.asarray(out, np.int32)

  def noise(self, sentences: list[np.ndarray], rng) -> np.ndarray:
    """One document (its sentences) -> its corrupted token sequence."""
    if len(sentences) > 1 and rng.random() < self.permute_rate:
      sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    x = np.concatenate(sentences) if sentences else np.zeros(0, np.int32)
    if len(x) > 1 and rng.random() < self.rotate_rate:
      x = np.roll(x, -int(rng.integers(1, len(x))))
    if self.mask_rate:
      x = np.where(rng.random(len(x)) < self.mask_rate, tk.MASK, x)
    if self.delete_rate:
      x = x[rng.random(len(x)) >= self.delete_rate]
    if self.infill_rate and len(x):
      x = self.infill(x, rng)
    return x.astype(np.int32)

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg, sent = batch['tokens'], batch['segment_ids'], batch['sentence_ids']
    b, t = tokens.shape
    inputs = np.zeros((b, t), np.int32)
    for row in range(b):
      pieces = []
      for s in np.unique(seg[row][seg[row] > 0]):
        doc = tokens[row][seg[row] == s]
        ids = sent[row][seg[row] == s]
        eos = doc[-1] == tk.EOS
        body, body_ids = (doc[:-1], ids[:-1]) if eos else (doc, ids)
        sentences = [body[body_ids == k] for k in np.unique(body_ids)]
        pieces.append(self.noise(sentences, rng))
        if eos:
          pieces.append(np.array([tk.EOS], np.int32))
      row_in = np.concatenate(pieces)[:t] if pieces else np.zeros(0, np.int32)
      inputs[row, :len(row_in)] = row_in
    targets = np.where(seg > 0, tokens, 0).astype(np.int32)
    decoder_tokens = np.zeros_like(targets)
    decoder_tokens[:, 0] = tk.BOS
    decoder_tokens[:, 1:] = targets[:, :-1]
    return {'tokens': inputs, 'decoder_tokens': decoder_tokens, 'targets': targets,
            'weights': (seg > 0).astype(np.float32)}

  def dummy_batch(self, batch_size: int, seq_len: int) -> Batch:
    batch = super().dummy_batch(batch_size, seq_len)
    batch['sentence_ids'] = np.ones((batch_size, seq_len), np.int32)
    return batch

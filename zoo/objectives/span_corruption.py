"""T5 span corruption: about 15% of the tokens, in spans of mean length 3, are each replaced in the input by a
sentinel; the target lists each sentinel followed by the tokens it replaced, then [EOS].

  input:  Thank you <extra_id_0> me to your party <extra_id_1> week .
  target: <extra_id_0> for inviting <extra_id_1> last <EOS>

Each packed row is one example. The decoder reads the target shifted right behind [PAD] (T5's start id 0).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo.objectives.base import Batch, Seq2SeqObjective


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float, rng: np.random.Generator,
                            max_spans: int | None = None) -> np.ndarray:
  """T5's `random_spans_noise_mask` in numpy: a boolean [length] mask of noise spans, non-noise first."""
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_span)), 1)
  if max_spans:
    num_spans = min(num_spans, max_spans)
  num_nonnoise = length - num_noise
  num_spans = min(num_spans, num_nonnoise)

  def segmentation(num_items, num_segments):
    first = np.arange(num_items - 1) < num_segments - 1
    rng.shuffle(first)
    ids = np.cumsum(np.concatenate([[0], first]))
    return np.bincount(ids, minlength=num_segments)

  noise_lengths = segmentation(num_noise, num_spans)
  nonnoise_lengths = segmentation(num_nonnoise, num_spans)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  starts = np.cumsum(interleaved)[:-1]
  indicator = np.zeros(length, np.int32)
  indicator[starts] = 1
  return np.cumsum(indicator) % 2 == 1


@dataclasses.dataclass
class SpanCorruption(Seq2SeqObjective):
  noise_density: float = 0.15
  mean_span_length: float = 3.0
  num_sentinels: int = 100  # the tokenizer's

  name = 'span_corruption'
  kinds = ('encoder_decoder',)
  any_tokenizer = True
  needs_tokens = ('eos', 'sentinels')
  recurrent = False  # the RNN encoder-decoder trains with denoising

  def targets_length(self, seq_len: int) -> int:
    noise = int(round(seq_len * self.noise_density))
    spans = max(1, int(round(noise / self.mean_span_length)))
    return noise + min(spans, self.num_sentinels) + 2

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    tokens, seg = batch['tokens'], batch['segment_ids']
    b, t = tokens.shape
    t_out = self.targets_length(t)
    sentinels = np.asarray(self.ids.sentinels, np.int32)  # T5's <extra_id_0>, <extra_id_1>, ...
    eos = self.ids.need('eos', f'objective.name={self.name!r}')
    inputs = np.zeros((b, t), np.int32)
    targets = np.zeros((b, t_out), np.int32)
    for row in range(b):
      real = tokens[row, seg[row] > 0]
      if len(real) < 2:
        inputs[row, :len(real)] = real
        continue
      noise = random_spans_noise_mask(len(real), self.noise_density, self.mean_span_length, rng,
                                      self.num_sentinels)
      starts = noise & ~np.concatenate([[False], noise[:-1]])
      sentinel_ids = sentinels[np.cumsum(starts) - 1]
      row_in = np.where(starts, sentinel_ids, real)[~noise | starts]
      # the target: each span's sentinel, then the span's tokens; [EOS] closes it
      pairs = np.stack([np.where(starts, sentinel_ids, -1), real], axis=1)[noise].reshape(-1)
      row_out = np.append(pairs[pairs >= 0], eos)
      inputs[row, :len(row_in)] = row_in
      targets[row, :len(row_out)] = row_out[:t_out]
    decoder_tokens = np.zeros_like(targets)
    decoder_tokens[:, 1:] = targets[:, :-1]
    return {'tokens': inputs, 'decoder_tokens': decoder_tokens, 'targets': targets,
            'weights': (targets > 0).astype(np.float32)}

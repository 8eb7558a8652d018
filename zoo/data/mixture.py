"""Weighted mixtures of corpora: `data.source='mix:<source>@<weight>,<source>@<weight>,...'`.

  --config.data.source='mix:text:wiki/*.txt@0.7,jsonl:web/*.jsonl:text@0.3'

Each part is any other source spec (`text:`, `jsonl:`, `parquet:`, `tfds:`, `default`; ':' inside a part is
fine). A trailing `@<weight>` is the part's weight: a positive number, normalized to sum to 1 (`@7` and `@3` are
0.7 and 0.3). Weights on every part, or on none (equal shares); a mixture has at least two parts, and no part
is itself a mixture.

What a weight means: the share of the **packed rows**, and so of the token positions, that its source fills.
Each source is read, split, shuffled, tokenized and packed into rows on its own (a row never holds two
sources), and grain's `IterDataset.mix` interleaves the rows in the weights' proportions: a fixed,
deterministic order (the same for every seed, weights resolved to 1/100 of the smallest) in which every run of
rows holds the sources at their weights to within a row, so every batch does too. With `data.packing='concat'`
(the default: no padding) the delivered tokens follow the weights exactly, whatever the documents' lengths; with
'first_fit' rows are about 98% full and the shares stay within a point or two; with 'pad' a weight counts rows,
and a source of short documents delivers fewer real tokens than its weight.

Weights are per source, whatever its size: each source repeats on its own, an epoch at a time, each epoch in a
new order (its seed is `seed + i` for the i-th part), so a small source at a large weight is seen many times
while a large one is seen partly. The iterator's state is every source's position and the mixture's index, so a
restored pipeline continues bit-exactly (`grain.checkpoint.CheckpointSave`, as the trainer saves it).

Validation: each source's own validation split (a TFDS split, or a fixed held-out fraction of its documents),
mixed with the same weights for `train.eval_batches` > 0; one full pass (`train.eval_batches=0`) reads every
validation document of every source once, unweighted. The tokenizer (data.tokenizer='train') trains on every
training document of every source, unweighted.

Each row carries its source's index as `source` (int32 [batch]); `ShareMeter` turns it into the measured share
of real tokens per source, which the train loop logs as `mix_share_<i>` in metrics.jsonl and TensorBoard; the
run's first line lists the parts, their weights and sizes.

>>> [(p.source, round(p.weight, 2)) for p in parse('mix:text:wiki/*.txt@7,jsonl:web/*.jsonl:text@3')]
[('text:wiki/*.txt', 0.7), ('jsonl:web/*.jsonl:text', 0.3)]
>>> [p.weight for p in parse('mix:default,text:a.txt')]
[0.5, 0.5]
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Sequence

import numpy as np

PREFIX = 'mix:'
_HOW = "write data.source='mix:<source>@<weight>,<source>@<weight>', e.g. 'mix:text:a/*.txt@0.7,text:b/*.txt@0.3'"


@dataclasses.dataclass(frozen=True)
class Part:
  """One source of a mixture and its normalized weight."""
  source: str
  weight: float


def is_mixture(spec: str) -> bool:
  return spec.startswith(PREFIX)


def _weight(text: str, part: str) -> float:
  try:
    w = float(text)
  except ValueError:
    w = float('nan')
  if not (math.isfinite(w) and w > 0):
    raise ValueError(f'data.source: the weight {text!r} of {part!r} is not a positive number: {_HOW}')
  return w


def parse(spec: str) -> list[Part]:
  """The parts of a 'mix:...' spec with weights normalized to sum to 1 (see the module docstring)."""
  if not is_mixture(spec):
    raise ValueError(f'data.source={spec!r} is not a mixture: {_HOW}')
  pieces = [p.strip() for p in spec[len(PREFIX):].split(',')]
  if any(not p for p in pieces):
    raise ValueError(f'data.source={spec!r} has an empty part (a stray comma?): {_HOW}')
  sources, weights = [], []
  for piece in pieces:
    source, at, text = piece.rpartition('@')
    if not at or '/' in text:  # no weight ('@' inside a path is not one)
      source, text = piece, None
    source = source.strip()
    if not source:
      raise ValueError(f'data.source: the part {piece!r} names no source: {_HOW}')
    if is_mixture(source):
      raise ValueError(f'data.source: a part of a mixture cannot be a mixture ({piece!r}): list its sources in '
                       f'the one mixture')
    sources.append(source)
    weights.append(None if text is None else _weight(text.strip(), piece))
  if len(sources) < 2:
    raise ValueError(f'data.source={spec!r} mixes one source: give two or more, or drop the {PREFIX!r} prefix to '
                     f'train on {sources[0]!r} alone')
  missing = [s for s, w in zip(sources, weights) if w is None]
  if missing and len(missing) < len(sources):
    raise ValueError(f'data.source: {", ".join(map(repr, missing))} has no @<weight> while other parts have one: '
                     f'weight every part, or none (equal shares)')
  if missing:
    weights = [1.0] * len(sources)
  total = sum(weights)
  return [Part(s, w / total) for s, w in zip(sources, weights)]


def locate(offsets: Sequence[int], i: int) -> tuple[int, int]:
  """(part, index inside it) of item i (negative: from the end) of parts that start at `offsets` (the last one:
  the total).

  >>> locate([0, 3, 5], 4), locate([0, 3, 5], -5)
  ((1, 1), (0, 0))
  """
  n = offsets[-1]
  if not -n <= i < n:
    raise IndexError(i)
  i = int(i) % n
  k = bisect.bisect_right(offsets, i) - 1
  return k, i - offsets[k]


class MixedDocuments(Sequence[str]):
  """The documents of every part of a mixture: as a sequence, all of them one part after the other (what the
  tokenizer trains on and a one-pass evaluation reads); `parts`, `weights`, `offsets`, `stats` per part."""

  def __init__(self, parts: Sequence[Part], documents: Sequence[Sequence[str]], stats: Sequence = ()):
    self.parts, self.documents, self.stats = tuple(parts), tuple(documents), tuple(stats)
    self.offsets = tuple(int(x) for x in np.cumsum([0] + [len(d) for d in documents]))  # start of each part

  @property
  def weights(self) -> tuple[float, ...]:
    return tuple(p.weight for p in self.parts)

  def __len__(self) -> int:
    return self.offsets[-1]

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    k, j = locate(self.offsets, i)
    return self.documents[k][j]

  def __iter__(self):
    for docs in self.documents:
      yield from docs


def describe(docs) -> str:
  """For the run's first line: each part's index, source, weight and size ('' for a single source)."""
  if not isinstance(docs, MixedDocuments):
    return ''
  sizes = [f'{len(d):,} documents' + (f', {s.characters:,} characters' if getattr(s, 'characters', 0) else '')
           for d, s in zip(docs.documents, docs.stats or [None] * len(docs.parts))]
  return 'mix of ' + '; '.join(f'[{i}] {p.source} {100 * p.weight:.4g}% ({size})'
                               for i, (p, size) in enumerate(zip(docs.parts, sizes)))


class ShareMeter:
  """The measured share of real tokens (segment_ids > 0) per source of the batches seen, from their `source`
  rows; `metrics()` is {'mix_share_<i>': share} (empty for a single source). The train loop counts from the step
  it started (or resumed) at, on each process its own batches (process 0's are logged).

  >>> meter = ShareMeter()
  >>> meter.add({'source': np.array([0, 1]), 'segment_ids': np.array([[1, 1, 1], [1, 0, 0]])})
  >>> meter.metrics()
  {'mix_share_0': 0.75, 'mix_share_1': 0.25}
  """

  def __init__(self):
    self.tokens = np.zeros(0, np.int64)

  def add(self, batch: dict) -> None:
    if 'source' not in batch:
      return
    source = np.asarray(batch['source']).reshape(-1)
    real = (np.asarray(batch['segment_ids']) > 0).reshape(len(source), -1).sum(axis=1)
    counts = np.bincount(source, weights=real).astype(np.int64)
    if len(counts) > len(self.tokens):
      self.tokens = np.pad(self.tokens, (0, len(counts) - len(self.tokens)))
    self.tokens[:len(counts)] += counts

  def metrics(self) -> dict:
    total = int(self.tokens.sum())
    return {f'mix_share_{i}': float(n / total) for i, n in enumerate(self.tokens)} if total else {}

"""What every fine-tuning task shares: fixed-length features on the host, an objective the trainer runs, and
predictions scored on the host with the task's metric."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

import grain
import numpy as np

from zoo.data import pipeline
from zoo.objectives.base import Objective


def column(record: dict, name: str, field: str, where: str):
  """record[name], or an error naming the config field and the columns there are."""
  if name not in record:
    raise ValueError(f'{field}={name!r} is not a column of {where}; its columns are {sorted(record)}: set '
                     f'{field} to one of them')
  return record[name]


class Rows(Sequence[dict]):
  """Row i of a dict of equally long arrays (a grain source)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self.n = len(next(iter(arrays.values())))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


@dataclasses.dataclass
class Task(Objective):
  """A supervised task. Subclasses implement `featurize`, `inputs`, `terms`, `predict`, `score`.

  featurize(records, tokenizer) -> (arrays, host): arrays are what batches hold ([N, ...] numpy, including a
  float `weights` [N] or [N, T]); host is what scoring needs besides (offsets, gold answers). The trainer trains
  on batches of arrays, and evaluates by running `predict` on every validation row in order, then `score`.
  """
  seq_len: int = 128
  model_head: str = ''  # the Bert head this task needs ('' : the model as it is)
  num_labels: int = 0

  name = 'task'
  label_names: tuple = ()

  def featurize(self, records: list[dict], tokenizer, where: str) -> tuple[dict[str, np.ndarray], Any]:
    raise NotImplementedError

  def example(self, batch, rng):
    del rng
    return dict(batch)

  def dummy_batch(self, batch_size: int, seq_len: int):
    arrays, _ = self.featurize([], None, 'dummy')
    return {k: np.zeros((batch_size,) + v.shape[1:], v.dtype) for k, v in arrays.items()}

  def counts(self, example):
    return {k: example['weights'].sum() for k in self.term_names}

  term_names = ('task',)

  def predict(self, outputs, example) -> dict[str, Any]:
    """On device: what `score` needs per row (argmax labels, spans ...)."""
    raise NotImplementedError

  def model_fields(self) -> dict[str, Any]:
    """The head this task puts on the model (Bert's head, num_labels, pooling); none for SFT."""
    if not self.model_head:
      return {}
    fields = {'head': self.model_head, 'num_labels': self.num_labels}
    if getattr(self, 'pooling', 'cls') != 'cls':
      fields['pooling'] = self.pooling
    return fields

  def score(self, predictions: dict[str, np.ndarray], arrays: dict[str, np.ndarray], host: Any) -> dict:
    raise NotImplementedError


class Epochs(Sequence[dict]):
  """`rows` over and over (num_epochs times; None: forever), each epoch in its own order: a permutation drawn from
  (seed, epoch) when shuffle, else the rows' order. grain's `MapDataset.shuffle` pays about 23 ms per epoch on a
  small source whatever its size (8 rows: 2.8 ms a row, 45 ms a step of a batch of 8, as long as the tiny model's
  step); a task's rows fit in memory, so each epoch's permutation is drawn once."""

  def __init__(self, rows: Rows, *, seed: int, shuffle: bool = True, num_epochs: int | None = None):
    self.rows, self.seed, self.shuffle, self.num_epochs = rows, seed, shuffle, num_epochs
    self._order = (-1, np.arange(len(rows)))

  def __len__(self):
    return len(self.rows) * self.num_epochs if self.num_epochs is not None else sys.maxsize

  def __getitem__(self, i):
    epoch, position = divmod(i, len(self.rows))
    order = self._order
    if self.shuffle and order[0] != epoch:
      order = self._order = (epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.rows)))
    return self.rows[int(order[1][position])]


def dataset(arrays: dict[str, np.ndarray], batch_size: int, *, seed: int, shuffle: bool = True,
            num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1):
  """Batches of rows (per process), shuffled anew each epoch, as a checkpointable grain IterDataset."""
  rows = Rows({k: v[shard_index::shard_count] for k, v in arrays.items()})
  if len(rows) < batch_size:
    raise ValueError(f'the task has {len(rows)} training examples per process, fewer than a batch of {batch_size}: '
                     f'lower train.batch_size or add examples')
  ds = grain.MapDataset.source(Epochs(rows, seed=seed, shuffle=shuffle, num_epochs=num_epochs))
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(read_options=pipeline.IN_MEMORY)  # rows in memory: no reading threads


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int):
  """Every row in order, in batches of batch_size; the last is padded with rows of weight 0.
  Yields (batch, number of real rows)."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
    real = len(batch['weights'])
    if real < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, real


def f1(tp: float, fp: float, fn: float) -> float:
  return 2 * tp / max(2 * tp + fp + fn, 1e-9)

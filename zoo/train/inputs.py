"""Where a run's batches come from: `CorpusInputs` (pretraining: documents -> tokenizer -> packed rows, and the
objective draws masks per step) or `TaskInputs` (fine-tuning: a task's examples, featurized once). Both give
the loop a training dataset, evaluation examples in a fixed order and a summary of the evaluation sums."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import jax
import numpy as np

from zoo import tasks
from zoo.data import mixture, pipeline
from zoo.train import steps


class Inputs:
  """What the loop and evaluation ask of a run's inputs."""

  def train_dataset(self, run):
    """A checkpointable grain dataset of this process's training batches (its iterator resumes exactly)."""
    raise NotImplementedError

  def eval_examples(self, run) -> Iterator[tuple[dict, int | None]]:
    """(this process's rows of a host example, how many rows of the global batch are real or None), in a fixed
    order with fixed masks."""
    raise NotImplementedError

  def summarize(self, run, sums: dict, predictions: dict) -> dict:
    """Evaluation metrics from the summed '{term}/count|loss|correct' and the per-row predictions."""
    raise NotImplementedError

  def describe(self) -> str:
    """For the run's first log line: the objective, or the task and its example counts."""
    raise NotImplementedError


def _perplexity(metrics: dict, run) -> dict:
  if run.objective.perplexity:
    metrics['perplexity'] = math.exp(min(metrics['loss'], 50.0))
  return metrics


class CorpusInputs(Inputs):
  """Pretraining: the documents of data.source, tokenized and packed; validation batches with fixed masks."""

  def __init__(self, config, read: Callable):
    self.config = config
    self.read = read  # read(config, split) -> documents (cached)

  def describe(self) -> str:
    mix = mixture.describe(self.read(self.config, 'train'))  # a mixture's parts, weights and sizes
    return self.config.objective.name + (f' | {mix}' if mix else '')

  def train_dataset(self, run):
    cfg = self.config
    docs = self.read(cfg, 'train')
    text_len = run.objective.input_length(cfg.train.seq_len)
    pipeline.check_corpus_fits(docs, run.tokenizer, cfg.train.seq_len, cfg.train.batch_size, cfg.data.packing,
                               jax.process_count(), text_len=text_len)
    self.read(cfg, 'validation')  # a missing or empty validation split fails now, not after training
    return pipeline.make_dataset(docs, run.tokenizer, seq_len=cfg.train.seq_len, batch_size=run.local_batch,
                                 seed=cfg.seed, packing=cfg.data.packing, shard_index=jax.process_index(),
                                 shard_count=jax.process_count(), num_workers=cfg.data.num_workers,
                                 sentences=run.objective.needs_sentences, word_segmenter=cfg.data.word_segmenter,
                                 text_len=text_len)

  def eval_examples(self, run):
    """train.eval_batches batches of the validation split (0: one pass), the same masks every time."""
    cfg = self.config
    n_batches = cfg.train.eval_batches
    if n_batches <= 0 and jax.process_count() > 1:
      raise ValueError('train.eval_batches=0 (one pass) needs a single process: give a number of batches')
    ds = pipeline.make_dataset(self.read(cfg, 'validation'), run.tokenizer, seq_len=cfg.train.seq_len,
                               batch_size=run.local_batch, packing=cfg.data.packing, shuffle=False,
                               num_epochs=None if n_batches > 0 else 1, shard_index=jax.process_index(),
                               shard_count=jax.process_count(), pad_last_batch=True, prefetch=0,
                               sentences=run.objective.needs_sentences, word_segmenter=cfg.data.word_segmenter,
                               text_len=run.objective.input_length(cfg.train.seq_len))
    it = iter(ds)
    for i in range(n_batches if n_batches > 0 else 1 << 30):
      try:
        batch = next(it)
      except StopIteration:
        return
      yield run.objective.example(batch, steps.example_rng(cfg.seed, i, stream=1)), None

  def summarize(self, run, sums, predictions):
    metrics = {'loss': 0.0}
    for k in {key.split('/')[0] for key in sums}:
      n = max(sums[f'{k}/count'], 1.0)
      metrics[f'{k}_loss'] = sums[f'{k}/loss'] / n
      metrics[f'{k}_accuracy'] = sums[f'{k}/correct'] / n
      metrics[f'{k}_predictions'] = int(sums[f'{k}/count'])
      metrics['loss'] += metrics[f'{k}_loss']
    return _perplexity(metrics, run)


class TaskInputs(Inputs):
  """Fine-tuning: a task's records by split, featurized once; every validation example scored in order."""

  def __init__(self, task, records: dict, tokenizer, config):
    self.task = task
    self.records = records
    self.tokenizer = tokenizer
    self.config = config
    self._features: dict = {}

  def features(self, split: str):
    """The task's (arrays, host info) for a split, made once."""
    if split not in self._features:
      self._features[split] = self.task.featurize(self.records[split], self.tokenizer,
                                                  f'task.{split}={self.config.task[split]!r}')
    return self._features[split]

  def describe(self) -> str:
    return (f'task {self.config.task.name} ({len(self.records["train"])} train / '
            f'{len(self.records["validation"])} validation)')

  def train_dataset(self, run):
    return tasks.dataset(self.features('train')[0], run.local_batch, seed=self.config.seed,
                         shard_index=jax.process_index(), shard_count=jax.process_count())

  def eval_examples(self, run):
    """Every validation example in order: each process feeds its rows of each global batch."""
    if not self.records.get('validation'):
      return
    arrays, _ = self.features('validation')
    lb, pid = run.local_batch, jax.process_index()
    for batch, real in tasks.eval_batches(arrays, self.config.train.batch_size):
      yield {k: v[pid * lb:(pid + 1) * lb] for k, v in batch.items()}, real

  def summarize(self, run, sums, predictions):
    if not self.records.get('validation'):
      return {'loss': float('nan'), 'examples': 0}
    terms = {key.split('/')[0] for key in sums}
    metrics = _perplexity({'loss': sum(sums[f'{k}/loss'] / max(sums[f'{k}/count'], 1.0) for k in terms)}, run)
    arrays, host = self.features('validation')
    metrics.update(run.objective.score({k: np.concatenate(v) for k, v in predictions.items()}, arrays, host))
    return metrics

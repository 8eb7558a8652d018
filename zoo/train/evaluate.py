"""Evaluation: the run's evaluation examples through the eval step, summed over the batches, then summarized
by the run's inputs (per-term loss and accuracy for pretraining; the task's metric for fine-tuning)."""
from __future__ import annotations

import numpy as np

from zoo.train import steps


def evaluate(run, params, eval_step=None) -> dict:
  """Metrics over the validation split: for pretraining, train.eval_batches batches with the same masks every
  time; for a fine-tuning task, every validation example, in order, scored with the task's metric."""
  eval_step = eval_step or steps.make_eval_step(run)
  sums: dict[str, float] = {}
  predictions: dict[str, list] = {}
  for example, real in run.inputs.eval_examples(run):
    out = eval_step(params, run.placement.put(example))
    rows = out.pop('predictions')
    out = run.placement.fetch(out)
    for k, c in out['counts'].items():
      loss_sum, correct = out['terms'][k]
      for name, value in (('count', c), ('loss', loss_sum), ('correct', correct)):
        sums[f'{k}/{name}'] = sums.get(f'{k}/{name}', 0.0) + float(value)
    if rows:
      for k, v in run.placement.fetch_rows(rows).items():
        predictions.setdefault(k, []).append(np.asarray(v)[:real])
  return run.inputs.summarize(run, sums, predictions)

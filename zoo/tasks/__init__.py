"""Fine-tuning tasks by name: classification, tagging, qa (extractive), sft (supervised causal / seq2seq),
translation (sft on `source` / `target` columns).

A recipe names a task and a pretraining workdir (`task.init_from`); `train.py` restores the weights, adds the
task's head and fine-tunes (see configs/finetune_*.py).

>>> from zoo.tasks import make
>>> task = make('classification', vocab_size=100, num_special=9, seq_len=16, labels=('neg', 'pos'))
>>> task.num_labels, task.model_head
(2, 'classification')
"""
from __future__ import annotations

from zoo import registry
from zoo.tasks.base import Task, dataset, eval_batches
from zoo.tasks.classification import Classification
from zoo.tasks.qa import QuestionAnswering, best_span
from zoo.tasks.records import read_records
from zoo.tasks.sft import Sft
from zoo.tasks.tagging import Tagging, bio_entities
from zoo.tasks.translation import Translation

TASKS: dict[str, type[Task]] = {
    'classification': Classification,
    'qa': QuestionAnswering,
    'sft': Sft,
    'tagging': Tagging,
    'translation': Translation,
}


def make(name: str, **fields) -> Task:
  """The task `name` with its fields (vocab_size, num_special, seq_len and the task's columns)."""
  task = registry.make(TASKS, name, 'task', **fields)
  if getattr(task, 'labels', ()):
    task.num_labels = len(task.labels)
  return task

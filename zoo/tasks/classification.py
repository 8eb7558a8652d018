"""Single-sentence and sentence-pair classification from BERT's pooled [CLS] representation.

Input: [CLS] a [SEP] (b [SEP]), token types 0 for a and 1 for b, the longer text cut first. Metrics: accuracy,
F1 of the second label for a two-label task, and the majority-class accuracy to compare with.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from zoo.data import specials
from zoo.objectives.base import cross_entropy
from zoo.tasks.base import Task, column, f1


def encode_pair(tokenizer, a: str, b: str | None, seq_len: int, ids_of=None) -> tuple[list[int], list[int]]:
  """[CLS] a [SEP] (b [SEP]) cut to seq_len (the longer part first), in the ids of `ids_of` (a
  zoo.data.specials.Specials; default: the tokenizer's); returns (ids, token types)."""
  ids_a = tokenizer.encode(a)
  ids_b = tokenizer.encode(b) if b is not None else None
  budget = seq_len - 2 - (1 if ids_b is not None else 0)
  if budget < 2:
    raise ValueError(f'train.seq_len={seq_len} leaves no room for the text')
  while len(ids_a) + (len(ids_b) if ids_b is not None else 0) > budget:
    if ids_b is not None and len(ids_b) > len(ids_a):
      ids_b.pop()
    else:
      ids_a.pop()
  ids_of = ids_of or specials.of(tokenizer)
  cls, sep = ids_of.need('cls', 'a [CLS] text [SEP] task'), ids_of.need('sep', 'a [CLS] text [SEP] task')
  ids = [cls] + ids_a + [sep]
  types = [0] * len(ids)
  if ids_b is not None:
    ids += ids_b + [sep]
    types += [1] * (len(ids_b) + 1)
  return ids, types


def pad(rows: list[list[int]], seq_len: int, value: int = 0) -> np.ndarray:
  out = np.full((len(rows), seq_len), value, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@dataclasses.dataclass
class Classification(Task):
  """Columns: text_field, text_pair_field ('' for single sentences), label_field."""
  text_field: str = 'sentence'
  text_pair_field: str = ''
  label_field: str = 'label'
  labels: tuple = ()  # label names in index order (set from the training set when empty)
  pooling: str = 'cls'  # 'cls': BERT's pooled [CLS]; 'mean': the mean of the token states (no pooler)
  model_head: str = 'classification'

  name = 'classification'
  any_tokenizer = True
  kinds = ('encoder',)
  term_names = ('cls',)

  def set_labels(self, records: list[dict], where: str) -> None:
    if not self.labels:
      values = sorted({str(column(r, self.label_field, 'task.label_field', where)) for r in records})
      if len(values) < 2:
        raise ValueError(f'{where}: task.label_field={self.label_field!r} has {len(values)} distinct value(s); '
                         f'classification needs at least 2')
      self.labels = tuple(values)
    self.num_labels = len(self.labels)

  def featurize(self, records, tokenizer, where):
    ids, types, labels = [], [], []
    index = {name: i for i, name in enumerate(self.labels)}
    for r in records:
      a = str(column(r, self.text_field, 'task.text_field', where))
      b = str(column(r, self.text_pair_field, 'task.text_pair_field', where)) if self.text_pair_field else None
      i, t = encode_pair(tokenizer, a, b, self.seq_len, self.ids)
      label = str(column(r, self.label_field, 'task.label_field', where))
      if label not in index:
        raise ValueError(f'{where}: label {label!r} is not among the labels {list(self.labels)} (from the '
                         f'training set or task.labels)')
      ids.append(i)
      types.append(t)
      labels.append(index[label])
    n = len(records)
    arrays = {'tokens': pad(ids, self.seq_len), 'token_types': pad(types, self.seq_len),
              'labels': np.asarray(labels, np.int32).reshape(n), 'weights': np.ones((n,), np.float32)}
    return arrays, None

  def inputs(self, example):
    return {'tokens': example['tokens'], 'token_types': example['token_types']}

  def terms(self, outputs, example):
    return {'cls': cross_entropy(outputs['logits'], example['labels'], example['weights'], self.label_smoothing)}

  def predict(self, outputs, example):
    return {'label': outputs['logits'].argmax(-1)}

  def score(self, predictions, arrays, host):
    gold, pred = arrays['labels'], predictions['label']
    counts = collections.Counter(gold.tolist())
    out = {'accuracy': float((gold == pred).mean()) if len(gold) else 0.0,
           'majority_accuracy': max(counts.values()) / len(gold) if len(gold) else 0.0,
           'examples': int(len(gold))}
    if self.num_labels == 2:
      tp = float(((pred == 1) & (gold == 1)).sum())
      out['f1'] = f1(tp, float(((pred == 1) & (gold == 0)).sum()), float(((pred == 0) & (gold == 1)).sum()))
    return out

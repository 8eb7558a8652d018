"""Token tagging (named entities, chunks) with BIO tags: each word's label sits on its first piece; the metric
is entity-level F1 (an entity counts when its type and both ends are right, as conlleval and seqeval count).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo.objectives.base import cross_entropy
from zoo.tasks.base import Task, column, f1


def bio_entities(tags) -> set[tuple[str, int, int]]:
  """(type, first word, last word) of every entity in a BIO (or IOB1) tag sequence.

  >>> sorted(bio_entities(['B-PER', 'I-PER', 'O', 'I-LOC', 'B-LOC', 'B-LOC', 'I-ORG']))
  [('LOC', 3, 3), ('LOC', 4, 4), ('LOC', 5, 5), ('ORG', 6, 6), ('PER', 0, 1)]
  """
  entities, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ['O']):
    prefix, _, t = tag.partition('-')
    continues = prefix == 'I' and kind == t
    if start is not None and not continues:
      entities.add((kind, start, i - 1))
      start, kind = None, None
    if prefix in ('B', 'I') and not continues:
      start, kind = i, t
  return entities


@dataclasses.dataclass
class Tagging(Task):
  """Columns: tokens_field (a list of words, or a string split on spaces) and tags_field (one tag per word)."""
  tokens_field: str = 'tokens'
  tags_field: str = 'tags'
  labels: tuple = ()  # tag names in index order ('O' first; set from the training set when empty)
  model_head: str = 'tagging'

  name = 'tagging'
  any_tokenizer = True
  kinds = ('encoder',)
  term_names = ('tag',)

  def _words_tags(self, r, where):
    words = column(r, self.tokens_field, 'task.tokens_field', where)
    tags = column(r, self.tags_field, 'task.tags_field', where)
    words = words.split() if isinstance(words, str) else [str(w) for w in words]
    tags = tags.split() if isinstance(tags, str) else [str(t) for t in tags]
    if len(words) != len(tags):
      raise ValueError(f'{where}: an example has {len(words)} words but {len(tags)} tags ({words[:5]}...)')
    return words, tags

  def set_labels(self, records, where):
    if not self.labels:
      tags = {t for r in records for t in self._words_tags(r, where)[1]}
      self.labels = tuple(['O'] + sorted(tags - {'O'}))
    self.num_labels = len(self.labels)

  def featurize(self, records, tokenizer, where):
    n, t = len(records), self.seq_len
    arrays = {'tokens': np.zeros((n, t), np.int32), 'labels': np.zeros((n, t), np.int32),
              'weights': np.zeros((n, t), np.float32), 'word_index': np.full((n, t), -1, np.int32)}
    gold = []
    index = {name: i for i, name in enumerate(self.labels)}
    ids_of = self.ids
    cls, sep = ids_of.need('cls', 'task.name=tagging'), ids_of.need('sep', 'task.name=tagging')
    unk = ids_of.unk if ids_of.unk is not None else ids_of.pad
    for row, r in enumerate(records):
      words, tags = self._words_tags(r, where)
      gold.append(tags)
      ids = [cls]
      for w, (word, tag) in enumerate(zip(words, tags)):
        pieces = tokenizer.encode(word) or [unk]
        if len(ids) + len(pieces) > t - 1:
          break  # the remaining words are predicted 'O'
        if tag not in index:
          raise ValueError(f'{where}: tag {tag!r} is not among {list(self.labels)} (from the training set)')
        arrays['labels'][row, len(ids)] = index[tag]
        arrays['weights'][row, len(ids)] = 1.0
        arrays['word_index'][row, len(ids)] = w
        ids += pieces
      ids.append(sep)
      arrays['tokens'][row, :len(ids)] = ids
    return arrays, gold

  def inputs(self, example):
    return {'tokens': example['tokens']}

  def terms(self, outputs, example):
    return {'tag': cross_entropy(outputs['logits'], example['labels'], example['weights'], self.label_smoothing)}

  def predict(self, outputs, example):
    return {'tags': outputs['logits'].argmax(-1)}

  def score(self, predictions, arrays, host):
    tp = fp = fn = correct = total = 0
    for row, gold in enumerate(host):
      pred = ['O'] * len(gold)
      for pos in np.nonzero(arrays['word_index'][row] >= 0)[0]:
        pred[arrays['word_index'][row, pos]] = self.labels[predictions['tags'][row, pos]]
      g, p = bio_entities(gold), bio_entities(pred)
      tp, fp, fn = tp + len(g & p), fp + len(p - g), fn + len(g - p)
      correct += sum(a == b for a, b in zip(gold, pred))
      total += len(gold)
    return {'entity_f1': f1(tp, fp, fn), 'entity_precision': tp / max(tp + fp, 1), 'entity_recall': tp / max(tp + fn, 1),
            'word_accuracy': correct / max(total, 1), 'examples': len(host)}

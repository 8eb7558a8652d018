"""Extractive question answering (SQuAD v1 style): start and end logits over the context tokens, decoded to the
best valid span (start <= end, at most max_answer_len tokens, inside the context); exact match and F1 on the
answer text, after SQuAD's normalisation (lower case, no punctuation, no articles, single spaces).

Input: [CLS] question [SEP] context [SEP]; a context longer than the window is cut (examples whose answer was
cut off do not train, and score as missed).
"""
from __future__ import annotations

import collections
import dataclasses
import re
import string

import jax.numpy as jnp
import numpy as np

from zoo.data import tokenizer as tk
from zoo.objectives.base import cross_entropy
from zoo.tasks.base import Task, column


def best_span(start_logits, end_logits, context_mask, max_answer_len: int):
  """The (start, end) maximising start_logits[s] + end_logits[e] with s <= e < s + max_answer_len and both in
  the context. Works on numpy or jax arrays [B, T]; returns two int arrays [B].

  >>> s = np.array([[0., 5., 1., 0.]]); e = np.array([[9., 0., 0., 4.]]); m = np.array([[0, 1, 1, 1]])
  >>> [int(x[0]) for x in best_span(s, e, m, 3)]  # e=0 is outside the context, (1, 3) is the best valid span
  [1, 3]
  """
  t = start_logits.shape[-1]
  i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
  valid = (j >= i) & (j < i + max_answer_len)
  valid = valid[None] & (context_mask[:, :, None] > 0) & (context_mask[:, None, :] > 0)
  scores = jnp.where(valid, start_logits[:, :, None] + end_logits[:, None, :], -jnp.inf)
  flat = jnp.argmax(scores.reshape(scores.shape[0], -1), axis=-1)
  return flat // t, flat % t


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lower case, punctuation and articles removed, white space collapsed."""
  text = ''.join(c for c in text.lower() if c not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
  """SQuAD's F1 over the words of the normalised answers."""
  p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
  common = sum((collections.Counter(p) & collections.Counter(g)).values())
  if not p or not g:
    return float(p == g)
  if common == 0:
    return 0.0
  precision, recall = common / len(p), common / len(g)
  return 2 * precision * recall / (precision + recall)


def _char_starts(text: str, byte_offsets) -> np.ndarray:
  """Character offsets of UTF-8 byte offsets into text."""
  chars = np.cumsum([0] + [len(c.encode('utf-8')) for c in text])  # byte offset of each char
  return np.searchsorted(chars, np.asarray(byte_offsets), side='left')


@dataclasses.dataclass
class QuestionAnswering(Task):
  """Columns: question_field, context_field, answers_field (SQuAD's {'text': [...], 'answer_start': [...]}, a
  list of strings, or one string; without a start, the first occurrence in the context is used)."""
  question_field: str = 'question'
  context_field: str = 'context'
  answers_field: str = 'answers'
  max_answer_len: int = 30  # tokens
  max_question_len: int = 64  # tokens
  model_head: str = 'span'

  name = 'qa'
  kinds = ('encoder',)
  term_names = ('start', 'end')

  def _answers(self, r, context, where):
    ans = column(r, self.answers_field, 'task.answers_field', where)
    if isinstance(ans, dict):
      texts, starts = list(ans.get('text', [])), list(ans.get('answer_start', []))
    else:
      texts, starts = ([ans] if isinstance(ans, str) else list(ans)), []
    starts = [int(s) for s in starts] + [context.find(t) for t in texts[len(starts):]]
    return [str(t) for t in texts], starts

  def featurize(self, records, tokenizer, where):
    n, t = len(records), self.seq_len
    arrays = {'tokens': np.zeros((n, t), np.int32), 'token_types': np.zeros((n, t), np.int32),
              'context_mask': np.zeros((n, t), np.int32), 'start': np.zeros((n,), np.int32),
              'end': np.zeros((n,), np.int32), 'weights': np.zeros((n,), np.float32)}
    host = []
    for row, r in enumerate(records):
      question = str(column(r, self.question_field, 'task.question_field', where))
      context = str(column(r, self.context_field, 'task.context_field', where))
      texts, starts = self._answers(r, context, where)
      q = tokenizer.encode(question)[:self.max_question_len]
      c_ids, c_bytes = tokenizer.encode_offsets(context)
      room = t - len(q) - 3
      c_ids = c_ids[:room]
      begin = _char_starts(context, c_bytes[:room])
      end = np.append(begin[1:], len(context)) if len(c_ids) == len(c_bytes) else \
          _char_starts(context, c_bytes[1:room + 1])
      ids = [tk.CLS] + q + [tk.SEP] + c_ids + [tk.SEP]
      first = len(q) + 2
      arrays['tokens'][row, :len(ids)] = ids
      arrays['token_types'][row, first:len(ids)] = 1
      arrays['context_mask'][row, first:first + len(c_ids)] = 1
      if texts and starts[0] >= 0 and len(c_ids):
        a0, a1 = starts[0], starts[0] + len(texts[0])
        s = int(np.searchsorted(begin, a0, side='right')) - 1
        e = int(np.searchsorted(begin, a1, side='left')) - 1
        if 0 <= s <= e and a1 <= end[-1]:  # the answer lies inside the window
          arrays['start'][row], arrays['end'][row], arrays['weights'][row] = first + s, first + e, 1.0
      host.append({'context': context, 'answers': texts, 'first': first,
                   'begin': begin, 'end': end})
    return arrays, host

  def inputs(self, example):
    return {'tokens': example['tokens'], 'token_types': example['token_types']}

  def _logits(self, outputs, example):
    logits = jnp.where(example['context_mask'][..., None] > 0, outputs['logits'], -1e9)
    return logits[..., 0], logits[..., 1]

  def terms(self, outputs, example):
    start, end = self._logits(outputs, example)
    return {'start': cross_entropy(start, example['start'], example['weights'], self.label_smoothing),
            'end': cross_entropy(end, example['end'], example['weights'], self.label_smoothing)}

  def predict(self, outputs, example):
    start, end = self._logits(outputs, example)
    s, e = best_span(start, end, example['context_mask'], self.max_answer_len)
    return {'span_start': s, 'span_end': e}

  def answer_text(self, info: dict, s: int, e: int) -> str:
    first = info['first']
    if not (first <= s <= e < first + len(info['begin'])):
      return ''
    return info['context'][info['begin'][s - first]:info['end'][e - first]].strip()

  def score(self, predictions, arrays, host):
    em = f1 = 0.0
    for row, info in enumerate(host):
      text = self.answer_text(info, int(predictions['span_start'][row]), int(predictions['span_end'][row]))
      if info['answers']:
        em += max(exact_match(text, g) for g in info['answers'])
        f1 += max(token_f1(text, g) for g in info['answers'])
    n = max(len(host), 1)
    return {'exact_match': em / n, 'f1': f1 / n, 'examples': len(host)}

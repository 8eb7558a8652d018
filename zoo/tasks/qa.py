"""Extractive question answering (SQuAD v1 style): start and end logits over the context tokens, decoded to the
best valid span (start <= end, at most max_answer_len tokens, inside the context); exact match and F1 on the
answer text, after SQuAD's normalisation (lower case, no punctuation, no articles, single spaces).

Input: [CLS] question [SEP] context-window [SEP], as Hugging Face's run_qa.py lays it out. A context longer than
the room a window leaves (seq_len - question - 3) is split into overlapping windows: successive windows share
`doc_stride` tokens (HF's `--doc_stride`, the tokenizer's `stride`: 128 with 384-token windows there), and the
last ends at the context's end. An answer of at most doc_stride + 1 tokens lies wholly inside some window.

Training, as run_qa.py does (SQuAD v1 too): every window of an example trains; a window that holds the whole
answer points start and end at its tokens, any other window at [CLS] (position 0), so the model learns to give
[CLS] the highest score where there is no answer. Examples whose answer cannot be located in the context train
nowhere (weight 0). Evaluation, as HF's postprocess_qa_predictions: each window's best span inside its context,
scored start_logit + end_logit; per example the best over all its windows; exact match and F1 per example.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import string

import jax.numpy as jnp
import numpy as np

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


def window_starts(n: int, room: int, doc_stride: int) -> list[int]:
  """Where each window of a context of n tokens begins, each window holding `room` tokens: successive windows
  share doc_stride tokens and the last ends at n (it may hold fewer); one window when n <= room.

  >>> window_starts(10, 4, 1)  # windows [0, 4) [3, 7) [6, 10)
  [0, 3, 6]
  >>> window_starts(3, 4, 1)
  [0]
  """
  if n > room and room <= doc_stride:
    raise ValueError(f'a window of {room} context tokens <= doc_stride {doc_stride} would not advance')
  starts = [0]
  while starts[-1] + room < n:
    starts.append(starts[-1] + room - doc_stride)
  return starts


def best_rows(examples, scores) -> dict[int, int]:
  """For each example id in `examples` (one per row), the row of the highest score (the first on a tie).

  >>> best_rows([0, 0, 1, 1, 1], [0.5, 2.0, -1.0, 3.0, 3.0])
  {0: 1, 1: 3}
  """
  best: dict[int, int] = {}
  for row, (ex, sc) in enumerate(zip(examples, scores)):
    if int(ex) not in best or sc > scores[best[int(ex)]]:
      best[int(ex)] = row
  return best


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
  list of strings, or one string; without a start, the first occurrence in the context is used).

  featurize gives one row per window; host[row] names its example (`example`, the record's index) and maps the
  window's tokens to characters of the context. predict gives each window's best span and its score; score picks
  each example's best window.
  """
  question_field: str = 'question'
  context_field: str = 'context'
  answers_field: str = 'answers'
  max_answer_len: int = 30  # tokens
  max_question_len: int = 64  # tokens
  # tokens successive windows share (HF's doc_stride). In zoo's 64-token QA rows (configs/finetune.py) a 6-token
  # question leaves 55 context tokens: windows advance 39, and any answer of up to 17 tokens fits in one
  doc_stride: int = 16
  model_head: str = 'span'

  name = 'qa'
  any_tokenizer = True
  kinds = ('encoder',)
  term_names = ('start', 'end')

  def __post_init__(self):
    if self.doc_stride < 0:
      raise ValueError(f'task.fields.doc_stride={self.doc_stride}: the tokens successive windows share must be '
                       f'>= 0 (HF uses 128 with 384-token windows)')

  def _answers(self, r, context, where):
    ans = column(r, self.answers_field, 'task.answers_field', where)
    if isinstance(ans, dict):
      texts, starts = list(ans.get('text', [])), list(ans.get('answer_start', []))
    else:
      texts, starts = ([ans] if isinstance(ans, str) else list(ans)), []
    starts = [int(s) for s in starts] + [context.find(t) for t in texts[len(starts):]]
    return [str(t) for t in texts], starts

  def _room(self, q_len: int, n: int) -> int:
    """Context tokens a window holds after [CLS] question [SEP] ... [SEP]; an error if windows cannot advance."""
    room = max(self.seq_len - q_len - 3, 0)
    if n > room and room <= self.doc_stride:
      raise ValueError(f'a question of {q_len} tokens leaves {room} context tokens in a window of train.seq_len='
                       f'{self.seq_len}, not more than task.fields.doc_stride={self.doc_stride}: raise '
                       f'train.seq_len, or lower task.fields.doc_stride or task.fields.max_question_len')
    return room

  def featurize(self, records, tokenizer, where):
    t = self.seq_len
    rows, host = [], []
    ids_of = self.ids
    cls, sep = ids_of.need('cls', 'task.name=qa'), ids_of.need('sep', 'task.name=qa')
    for index, r in enumerate(records):
      question = str(column(r, self.question_field, 'task.question_field', where))
      context = str(column(r, self.context_field, 'task.context_field', where))
      texts, starts = self._answers(r, context, where)
      q = tokenizer.encode(question)[:self.max_question_len]
      c_ids, c_bytes = tokenizer.encode_offsets(context)
      begin = _char_starts(context, c_bytes)
      end = np.append(begin[1:], len(context)).astype(begin.dtype)
      span = None  # the answer's tokens in the whole context
      if texts and starts[0] >= 0 and len(c_ids) and starts[0] + len(texts[0]) <= len(context):
        a0, a1 = starts[0], starts[0] + len(texts[0])
        s = int(np.searchsorted(begin, a0, side='right')) - 1
        e = int(np.searchsorted(begin, a1, side='left')) - 1
        span = (s, e) if 0 <= s <= e else None
      room, first = self._room(len(q), len(c_ids)), len(q) + 2
      for w0 in window_starts(len(c_ids), room, self.doc_stride):
        w1 = min(w0 + room, len(c_ids))
        ids = [cls] + q + [sep] + list(c_ids[w0:w1]) + [sep]
        inside = span is not None and w0 <= span[0] and span[1] < w1
        rows.append((ids, first, w1 - w0, first + span[0] - w0 if inside else 0,
                     first + span[1] - w0 if inside else 0, float(span is not None)))
        host.append({'example': index, 'context': context, 'answers': texts, 'first': first,
                     'begin': begin[w0:w1], 'end': end[w0:w1]})
    n = len(rows)
    arrays = {'tokens': np.zeros((n, t), np.int32), 'token_types': np.zeros((n, t), np.int32),
              'context_mask': np.zeros((n, t), np.int32), 'start': np.zeros((n,), np.int32),
              'end': np.zeros((n,), np.int32), 'weights': np.zeros((n,), np.float32)}
    for row, (ids, first, length, s, e, w) in enumerate(rows):
      arrays['tokens'][row, :len(ids)] = ids
      arrays['token_types'][row, first:len(ids)] = 1
      arrays['context_mask'][row, first:first + length] = 1
      arrays['start'][row], arrays['end'][row], arrays['weights'][row] = s, e, w
    return arrays, host

  def inputs(self, example):
    return {'tokens': example['tokens'], 'token_types': example['token_types']}

  def _logits(self, outputs, example):
    """Start and end logits, -1e9 outside the context but for [CLS] (position 0: a window without the answer)."""
    keep = (example['context_mask'] > 0) | (jnp.arange(example['context_mask'].shape[-1]) == 0)
    logits = jnp.where(keep[..., None], outputs['logits'], -1e9)
    return logits[..., 0], logits[..., 1]

  def terms(self, outputs, example):
    start, end = self._logits(outputs, example)
    return {'start': cross_entropy(start, example['start'], example['weights'], self.label_smoothing),
            'end': cross_entropy(end, example['end'], example['weights'], self.label_smoothing)}

  def predict(self, outputs, example):
    """Per window: the best span inside its context and its score start_logit + end_logit."""
    start, end = self._logits(outputs, example)
    s, e = best_span(start, end, example['context_mask'], self.max_answer_len)
    score = jnp.take_along_axis(start, s[:, None], -1)[:, 0] + jnp.take_along_axis(end, e[:, None], -1)[:, 0]
    return {'span_start': s, 'span_end': e, 'span_score': score}

  def answer_text(self, info: dict, s: int, e: int) -> str:
    first = info['first']
    if not (first <= s <= e < first + len(info['begin'])):
      return ''
    return info['context'][info['begin'][s - first]:info['end'][e - first]].strip()

  def choose(self, predictions, host) -> dict[int, int]:
    """Each example's best window (row), by span_score (the first window when there are no scores)."""
    scores = np.asarray(predictions.get('span_score', np.zeros(len(host))), np.float64)
    return best_rows([info['example'] for info in host], scores)

  def answers(self, predictions, host) -> dict[int, str]:
    """The predicted answer text of each example: its best window's span."""
    return {ex: self.answer_text(host[row], int(predictions['span_start'][row]), int(predictions['span_end'][row]))
            for ex, row in self.choose(predictions, host).items()}

  def score(self, predictions, arrays, host):
    em = f1 = 0.0
    texts = self.answers(predictions, host)
    golds = {info['example']: info['answers'] for info in host}
    for ex, text in texts.items():
      if golds[ex]:
        em += max(exact_match(text, g) for g in golds[ex])
        f1 += max(token_f1(text, g) for g in golds[ex])
    n = max(len(texts), 1)
    return {'exact_match': em / n, 'f1': f1 / n, 'examples': len(texts), 'windows': len(host)}

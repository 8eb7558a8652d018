"""Extractive QA over long contexts (zoo.tasks.qa), as HF's run_qa.py: overlapping windows that share doc_stride
tokens and cover the whole context, labels at the answer in the windows that hold it and at [CLS] in the others,
the best span over all windows of an example, scored per example; and a tiny BERT fine-tuned on answers that lie
beyond the first window answers them."""
import importlib
import json
import pathlib
import re
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from zoo import config as config_lib
from zoo import tasks, train
from zoo.data import tokenizer as tk
from zoo.tasks import qa

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


class WordTokenizer:
  """One token per white-space word, a new id per new word (ASCII text: byte offsets are characters)."""

  def __init__(self):
    self.ids: dict[str, int] = {}

  def encode(self, text):
    return self.encode_offsets(text)[0]

  def encode_offsets(self, text):
    words = list(re.finditer(r'\S+', text))
    ids = [self.ids.setdefault(m.group(), 100 + len(self.ids)) for m in words]
    return ids, np.array([m.start() for m in words], np.int64)


def _records(lengths, answers):
  """Contexts 'w0 w1 ... w{n-1}'; the answer of record i is words answers[i] = (first, last) (None: none)."""
  out = []
  for n, a in zip(lengths, answers):
    words = [f'w{k}' for k in range(n)]
    context = ' '.join(words)
    if a is None:
      out.append({'question': 'q', 'context': context, 'answers': []})
      continue
    text = ' '.join(words[a[0]:a[1] + 1])
    out.append({'question': 'q', 'context': context,
                'answers': {'text': [text], 'answer_start': [len(' '.join(words[:a[0]])) + (a[0] > 0)]}})
  return out


def _featurize(records, seq_len=16, doc_stride=4):
  tok = WordTokenizer()
  task = tasks.make('qa', vocab_size=1000, num_special=9, seq_len=seq_len, doc_stride=doc_stride)
  arrays, host = task.featurize(records, tok, 'test')
  word = {i: w for w, i in tok.ids.items()}
  return task, arrays, host, word


def _window_words(arrays, word, row):
  """The context word numbers a row holds, in order."""
  return [int(word[int(i)][1:]) for i in arrays['tokens'][row][arrays['context_mask'][row] > 0]]


def test_windows_cover_the_context_and_share_doc_stride_tokens():
  # question 'q' (1 token) in 16: room 12 context tokens, windows advance 12 - 4 = 8
  lengths = [1, 11, 12, 13, 20, 21, 37, 50]
  task, arrays, host, word = _featurize(_records(lengths, [None] * len(lengths)))
  examples = np.array([info['example'] for info in host])
  assert sorted(set(examples)) == list(range(len(lengths))) and np.all(np.diff(examples) >= 0)
  for ex, n in enumerate(lengths):
    windows = [_window_words(arrays, word, row) for row in np.flatnonzero(examples == ex)]
    assert len(windows) == len(qa.window_starts(n, 12, 4)) == (1 if n <= 12 else 1 + -(-(n - 12) // 8))
    assert windows[0][0] == 0 and windows[-1][-1] == n - 1  # from the start to the context's end
    assert sorted(set(sum(windows, []))) == list(range(n))  # every token in some window
    for a, b in zip(windows, windows[1:]):
      assert a == list(range(a[0], a[0] + 12)) and b == list(range(b[0], b[-1] + 1))  # full, contiguous
      assert len(set(a) & set(b)) == 4 and b[0] == a[-1] - 3  # exactly doc_stride shared, the last ones of a
  for row, info in enumerate(host):  # each window's tokens read back as their words
    words = _window_words(arrays, word, row)
    assert [task.answer_text(info, info['first'] + j, info['first'] + j) for j in range(len(words))] == \
        [f'w{k}' for k in words]


def test_windows_are_those_of_hf_tokenizers_stride():
  """HF's own windowing (run_qa.py: truncation='only_second', stride=doc_stride, overflowing tokens) on the same
  words gives the same windows."""
  hf = pytest.importorskip('tokenizers')
  vocab = {'[UNK]': 0, '[CLS]': 1, '[SEP]': 2, 'q': 3, **{f'w{k}': 10 + k for k in range(60)}}
  ref = hf.Tokenizer(hf.models.WordLevel(vocab, unk_token='[UNK]'))
  ref.pre_tokenizer = hf.pre_tokenizers.WhitespaceSplit()
  ref.post_processor = hf.processors.TemplateProcessing(
      single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1', special_tokens=[('[CLS]', 1), ('[SEP]', 2)])
  ref.enable_truncation(max_length=16, stride=4, strategy='only_second')
  lengths = [1, 12, 13, 20, 37, 50, 60]
  records = _records(lengths, [None] * len(lengths))
  _, arrays, host, word = _featurize(records)
  for ex, r in enumerate(records):
    enc = ref.encode(r['question'], r['context'])
    want = [[i - 10 for i, s in zip(e.ids, e.sequence_ids) if s == 1] for e in [enc] + enc.overflowing]
    assert [_window_words(arrays, word, row) for row, info in enumerate(host) if info['example'] == ex] == want


def test_short_contexts_give_one_window_each():
  records = _records([3, 12, 7], [(0, 0), (5, 11), (2, 4)])
  task, arrays, host, word = _featurize(records)
  assert len(host) == len(arrays['tokens']) == 3 and [info['example'] for info in host] == [0, 1, 2]
  assert arrays['weights'].tolist() == [1, 1, 1]
  assert [task.answer_text(host[r], arrays['start'][r], arrays['end'][r]) for r in range(3)] == \
      ['w0', 'w5 w6 w7 w8 w9 w10 w11', 'w2 w3 w4']


def test_labels_point_at_the_answer_where_a_window_holds_it_else_cls():
  rng = np.random.default_rng(0)
  lengths = rng.integers(13, 60, 40)
  answers = []
  for n in lengths:
    a = int(rng.integers(0, n))
    answers.append((a, min(a + int(rng.integers(0, 5)), n - 1)))  # 1 to 5 words: at most doc_stride + 1
  records = _records(lengths, answers) + _records([30], [None])
  task, arrays, host, word = _featurize(records)
  for ex, (a, b) in enumerate(answers):
    rows = [r for r, info in enumerate(host) if info['example'] == ex]
    holding = 0
    for row in rows:
      words = _window_words(arrays, word, row)
      s, e = int(arrays['start'][row]), int(arrays['end'][row])
      assert arrays['weights'][row] == 1.0  # every window trains (HF): to the answer or to [CLS]
      if a in words and b in words:
        holding += 1
        assert int(word[int(arrays['tokens'][row, s])][1:]) == a and int(word[int(arrays['tokens'][row, e])][1:]) == b
        assert task.answer_text(host[row], s, e) == records[ex]['answers']['text'][0]
      else:
        assert s == e == 0 and arrays['tokens'][row, 0] == tk.CLS
    assert holding >= 1  # an answer of at most doc_stride + 1 tokens lies wholly in some window
  assert arrays['weights'][[r for r, info in enumerate(host) if info['example'] == len(answers)]].sum() == 0


def _brute_best(start, end, mask, rows, max_len):
  best, arg = -np.inf, None
  for row in rows:
    idx = np.flatnonzero(mask[row])
    for i in idx:
      for j in idx:
        if i <= j < i + max_len and start[row, i] + end[row, j] > best:
          best, arg = start[row, i] + end[row, j], (row, int(i), int(j))
  return arg


def test_best_span_over_windows_matches_brute_force():
  rng = np.random.default_rng(1)
  lengths = [5, 12, 13, 30, 45, 8, 27]
  records = _records(lengths, [(0, 0)] * len(lengths))
  task, arrays, host, _ = _featurize(records)
  task.max_answer_len = 4
  logits = rng.normal(size=arrays['tokens'].shape + (2,)).astype(np.float32)
  pred = task.predict({'logits': jnp.asarray(logits)}, {k: jnp.asarray(v) for k, v in arrays.items()})
  pred = {k: np.asarray(v) for k, v in pred.items()}
  chosen, texts = task.choose(pred, host), task.answers(pred, host)
  assert sorted(chosen) == list(range(len(lengths)))
  for ex in range(len(lengths)):
    rows = [r for r, info in enumerate(host) if info['example'] == ex]
    row, s, e = _brute_best(logits[..., 0], logits[..., 1], arrays['context_mask'], rows, 4)
    assert (chosen[ex], int(pred['span_start'][row]), int(pred['span_end'][row])) == (row, s, e)
    assert pred['span_score'][row] == pytest.approx(logits[row, s, 0] + logits[row, e, 1], abs=1e-5)
    assert texts[ex] == task.answer_text(host[row], s, e)


def test_exact_match_is_per_example_from_its_best_window():
  records = _records([40, 40, 9], [(30, 31), (2, 2), (4, 5)])
  task, arrays, host, _ = _featurize(records)
  assert len(host) == 5 + 5 + 1  # 40 tokens: windows at 0, 8, 16, 24, 32
  holds = (arrays['start'] > 0).astype(np.float32)  # the windows that hold the answer
  labels = {'span_start': arrays['start'], 'span_end': arrays['end']}
  right = task.score({**labels, 'span_score': holds}, arrays, host)
  assert right == {'exact_match': 1.0, 'f1': 1.0, 'examples': 3, 'windows': 11}
  # the windows without the answer win: '' for the long two, the short one still right (its only window)
  wrong = task.score({**labels, 'span_score': 1.0 - holds}, arrays, host)
  assert wrong['exact_match'] == pytest.approx(1 / 3) and wrong['examples'] == 3


def test_a_window_too_small_to_advance_is_refused():
  with pytest.raises(ValueError, match='task.fields.doc_stride=4'):
    _featurize(_records([40], [None]), seq_len=8)  # room 4 <= doc_stride 4
  _featurize(_records([4], [None]), seq_len=8)  # a context that fits needs no stride
  with pytest.raises(ValueError, match='task.fields.doc_stride=-1'):
    tasks.make('qa', vocab_size=1000, num_special=9, seq_len=16, doc_stride=-1)


# single pieces of the test tokenizer (tests/conftest.py): filler, and the words an answer is made of
FILLER = ['the', 'and', 'for', 'can', 'with', 'are', 'not', 'this', 'each', 'from', 'also', 'may', 'one', 'has',
          'its', 'into', 'only', 'other', 'some', 'more', 'must', 'over', 'same', 'both']
ANSWERS = ['socket', 'server', 'parser', 'binary', 'archive', 'handler', 'integer', 'keyword']


def _late_answers(rng, n):
  """Contexts of 40 to 60 filler words with one ANSWERS word at a random place after word 30: beyond the first
  window of a 32-token row, and not at one position."""
  rows = []
  for _ in range(n):
    words = [str(w) for w in rng.choice(FILLER, int(rng.integers(40, 61)))]
    at = int(rng.integers(30, len(words)))
    words[at] = str(rng.choice(ANSWERS))
    rows.append({'question': 'which one?', 'context': ' '.join(words),
                 'answers': {'text': [words[at]], 'answer_start': [len(' '.join(words[:at])) + 1]}})
  return rows


@pytest.mark.slow
def test_answers_beyond_the_first_window_are_found_after_fine_tuning(tokenizer_path, tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (('train', 64), ('validation', 32)):
    (tmp_path / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in _late_answers(rng, n)))
  c = importlib.import_module('configs.finetune').get_config('qa')
  c = config_lib.override(c, {
      'task.init_from': '', 'task.train': f'jsonl:{tmp_path}/train.jsonl',
      'task.validation': f'jsonl:{tmp_path}/validation.jsonl', 'task.fields.doc_stride': 8,
      'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'train.seq_len': 32, 'train.batch_size': 32,
      'train.steps': 60, 'train.eval_every': 0, 'optimizer.learning_rate': 5e-3, 'optimizer.warmup_steps': 10,
      'model.dropout_rate': 0.0, 'mesh.devices': 1, 'log.every': 20, 'log.tensorboard': False})
  config_lib.set_model(c, 'bert', 'tiny')
  tok = tk.Tokenizer.load(tokenizer_path)
  task = tasks.make('qa', vocab_size=1000, num_special=9, seq_len=32, doc_stride=8)
  records = [json.loads(line) for line in open(tmp_path / 'validation.jsonl')]
  arrays, host = task.featurize(records, tok, 'test')
  first = {info['example']: row for row, info in reversed(list(enumerate(host)))}
  assert all(arrays['start'][row] == 0 for row in first.values())  # no answer lies in its first window
  metrics = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert metrics['examples'] == 32 and metrics['windows'] == len(host) > 2 * 32
  assert metrics['exact_match'] >= 0.9, metrics

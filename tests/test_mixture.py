"""Weighted mixtures of corpora (`data.source='mix:...'`): the parser, the delivered token shares, the exact
resume, the validation split and the errors for bad input."""
import json
import pathlib
import sys

import numpy as np
import pytest

from zoo import checkpoint as ckpt
from zoo.data import mixture, pipeline, sources
from zoo.data import tokenizer as tk

A_LETTERS, B_LETTERS = 'abcdefghijklm', 'nopqrstuvwxyz'  # two corpora that share no letter


def _words(rng, letters, n):
  return ' '.join(''.join(rng.choice(list(letters), size=rng.integers(2, 7))) for _ in range(n))


@pytest.fixture(scope='module')
def corpora(tmp_path_factory):
  """Short documents (1-3 words) in a-m, long ones (80-200 words) in n-z: their lengths differ ~50 times."""
  d = tmp_path_factory.mktemp('mix')
  rng = np.random.default_rng(0)
  (d / 'short.txt').write_text('\n'.join(_words(rng, A_LETTERS, rng.integers(1, 4)) for _ in range(120)))
  (d / 'long.txt').write_text('\n'.join(_words(rng, B_LETTERS, rng.integers(80, 200)) for _ in range(30)))
  return d


@pytest.fixture(scope='module')
def spec(corpora):
  return f'mix:text:{corpora}/short.txt@0.7,text:{corpora}/long.txt@0.3'


@pytest.fixture(scope='module')
def tok(spec):
  docs, _ = sources.read_documents(spec)
  return tk.train_tokenizer(docs, vocab_size=300, num_sentinels=2)


def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def same(a, b):
  return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                  for x, y in zip(a, b))


# ---------------------------------------------------------------- parser

def test_parser_weights_and_nested_specs():
  parts = mixture.parse('mix:text:gs://bucket/wiki/*.txt@0.7,jsonl:web/*.jsonl:text@0.3')
  assert [p.source for p in parts] == ['text:gs://bucket/wiki/*.txt', 'jsonl:web/*.jsonl:text']
  assert [p.weight for p in parts] == pytest.approx([0.7, 0.3])
  parts = mixture.parse('mix: parquet:a/*.parquet:body @ 3 , tfds:wikipedia/20230601.en:text@1,default@4')
  assert [p.source for p in parts] == ['parquet:a/*.parquet:body', 'tfds:wikipedia/20230601.en:text', 'default']
  assert [p.weight for p in parts] == pytest.approx([0.375, 0.125, 0.5])  # normalized to sum to 1
  assert [p.weight for p in mixture.parse('mix:text:a.txt,text:b.txt,default')] == pytest.approx([1 / 3] * 3)
  # '@' inside a path is not a weight: only a trailing '@<number>' without '/'
  parts = mixture.parse('mix:text:snap@2024/*.txt@0.25,text:b.txt@0.75')
  assert [(p.source, p.weight) for p in parts] == [('text:snap@2024/*.txt', 0.25), ('text:b.txt', 0.75)]
  assert mixture.parse('mix:text:x@1/a.txt,text:b.txt')[0].source == 'text:x@1/a.txt'


@pytest.mark.parametrize('spec, message', [
    ('mix:text:a.txt@0,text:b.txt@1', r"data.source: the weight '0' of 'text:a.txt@0' is not a positive number"),
    ('mix:text:a.txt@-0.5,text:b.txt@1', r"the weight '-0.5' .* is not a positive number"),
    ('mix:text:a.txt@seven,text:b.txt@3', r"the weight 'seven' .* is not a positive number: write "
                                          r"data.source='mix:<source>@<weight>"),
    ('mix:text:a.txt@nan,text:b.txt@1', r"the weight 'nan'"),
    ('mix:text:a.txt@inf,text:b.txt@1', r"the weight 'inf'"),
    ('mix:text:a.txt@0.7,text:b.txt', r"data.source: 'text:b.txt' has no @<weight> while other parts have one: "
                                      r'weight every part, or none \(equal shares\)'),
    ('mix:text:a.txt@1', r"data.source='mix:text:a.txt@1' mixes one source: give two or more, or drop the 'mix:' "
                         r"prefix to train on 'text:a.txt' alone"),
    ('mix:', r"data.source='mix:' has an empty part"),
    ('mix:text:a.txt@1,,text:b.txt@1', r'has an empty part \(a stray comma\?\)'),
    ('mix:text:a.txt@1,@2', r"data.source: the part '@2' names no source"),
    ('mix:mix:text:a.txt@1,text:b.txt@1', r'a part of a mixture cannot be a mixture'),
])
def test_parser_refuses_bad_input_naming_the_field(spec, message):
  with pytest.raises(ValueError, match=message):
    mixture.parse(spec)
  with pytest.raises(ValueError, match=message):  # the same error from where the trainer reads
    sources.read_documents(spec)


def test_parts_that_are_empty_or_missing(corpora, tmp_path):
  (tmp_path / 'empty.txt').write_text('\n\n')
  with pytest.raises(ValueError, match=r"data.source='text:.*empty.txt' holds no text .*point it at non-empty"):
    sources.read_documents(f'mix:text:{corpora}/short.txt@1,text:{tmp_path}/empty.txt@1')
  with pytest.raises(FileNotFoundError, match=r"data.source: no file matches '.*nothing\*.txt'"):
    sources.read_documents(f'mix:text:{corpora}/short.txt@1,text:{tmp_path}/nothing*.txt@1')


# ---------------------------------------------------------------- shares

def _row_sources(batches, tok):
  """Each row's source from its tokens alone (a-m pieces: 0, n-z pieces: 1), and its real tokens."""
  plain = [not tok.piece(i).startswith(('<', '[')) for i in range(tok.vocab_size)]  # not bytes nor specials
  in_a = np.array([p and any(c in A_LETTERS for c in tok.piece(i)) for i, p in enumerate(plain)])
  in_b = np.array([p and any(c in B_LETTERS for c in tok.piece(i)) for i, p in enumerate(plain)])
  found, real = [], []
  for b in batches:
    for tokens, seg in zip(b['tokens'], b['segment_ids']):
      a, z = in_a[tokens].any(), in_b[tokens].any()
      assert a != z  # a row holds one source: they are packed apart
      found.append(0 if a else 1)
      real.append(int((seg > 0).sum()))
  return np.array(found), np.array(real)


@pytest.mark.parametrize('packing', ['concat', 'first_fit'])
def test_two_sources_deliver_tokens_at_their_weights(spec, tok, packing):
  docs, _ = sources.read_documents(spec)
  lengths = [np.mean([len(tok.encode(d)) + 1 for d in part]) for part in docs.documents]
  # mixing documents at 0.7/0.3 would give the short source ~5% of the tokens, not 70%
  assert lengths[1] > 40 * lengths[0] and 0.7 * lengths[0] / (0.7 * lengths[0] + 0.3 * lengths[1]) < 0.06
  batches = take(pipeline.make_dataset(docs, tok, seq_len=16, batch_size=4, seed=0, packing=packing), 200)
  found, real = _row_sources(batches, tok)
  share = real[found == 0].sum() / real.sum()
  assert abs(share - 0.7) < 0.02, share
  assert np.array_equal(np.concatenate([b['source'] for b in batches]), found)  # the `source` feature is right
  meter = mixture.ShareMeter()
  for b in batches:
    meter.add(b)
  assert meter.metrics() == pytest.approx({'mix_share_0': share, 'mix_share_1': 1 - share})
  if packing == 'concat':  # rows are full: the token shares are the row shares, 0.7 to grain's 1/100 rounding
    assert (real == 16).all() and abs(share - 0.7) < 0.001
  # the short source (119 documents) went round many epochs; each repeats on its own
  assert real[found == 0].sum() > 5 * sum(len(tok.encode(d)) + 1 for d in docs.documents[0])


def test_weights_follow_the_spec_and_sampling_is_deterministic(corpora, tok):
  spec = f'mix:text:{corpora}/short.txt@1,text:{corpora}/long.txt@3'
  docs, _ = sources.read_documents(spec)
  a = take(pipeline.make_dataset(docs, tok, seq_len=16, batch_size=4, seed=0), 50)
  found, real = _row_sources(a, tok)
  assert abs(real[found == 0].sum() / real.sum() - 0.25) < 0.01
  assert same(a, take(pipeline.make_dataset(docs, tok, seq_len=16, batch_size=4, seed=0), 50))
  assert not same(a, take(pipeline.make_dataset(docs, tok, seq_len=16, batch_size=4, seed=1), 50))


# ---------------------------------------------------------------- resume

def test_resume_from_a_trainer_checkpoint_is_bit_exact(spec, tok, tmp_path):
  def make():  # as the trainer does it: documents read afresh, a new pipeline
    docs, _ = sources.read_documents(spec)
    return iter(pipeline.make_dataset(docs, tok, seq_len=16, batch_size=4, seed=3, packing='first_fit'))
  it = make()
  for _ in range(30):  # past the end of the short source's first epoch (~80 tokens a batch from 480)
    next(it)
  saver = ckpt.Checkpointer(str(tmp_path), async_save=False)
  saver.save(30, {'step': np.full(1, 30)}, it)
  saver.close()
  want = [next(it) for _ in range(6)]  # the uninterrupted run
  resumed = make()
  restorer = ckpt.Checkpointer(str(tmp_path))
  restorer.restore(30, {'step': np.zeros(1, int)}, resumed)
  restorer.close()
  got = [next(resumed) for _ in range(6)]
  assert same(want, got) and {0, 1} <= set(np.concatenate([b['source'] for b in got]))
  assert not same(want, take(make(), 6))  # the restore moved it: a fresh one starts elsewhere


# ---------------------------------------------------------------- validation, sizes, logging

def test_validation_is_each_sources_own_split_mixed_at_the_weights(spec, corpora, tok):
  val, stats = sources.read_documents(spec, split='validation', validation_fraction=0.1)
  own = [sources.read_documents(f'text:{corpora}/{f}.txt', split='validation', validation_fraction=0.1)[0]
         for f in ('short', 'long')]
  assert list(val.documents) == own and list(val) == own[0] + own[1] and val.weights == pytest.approx((0.7, 0.3))
  assert stats.documents == len(own[0]) + len(own[1]) == 15
  train, _ = sources.read_documents(spec, validation_fraction=0.1)
  assert not set(train) & set(val)
  # a fixed number of evaluation batches: mixed at the weights, in a fixed order
  ev = take(pipeline.make_dataset(val, tok, seq_len=16, batch_size=4, shuffle=False, prefetch=0,
                                  pad_last_batch=True), 20)
  assert np.mean(np.concatenate([b['source'] for b in ev]) == 0) == pytest.approx(0.7, abs=0.01)
  # one full pass: every validation document of every source once
  once = list(pipeline.make_dataset(val, tok, seq_len=1024, batch_size=4, packing='pad', shuffle=False,
                                    num_epochs=1, prefetch=0, pad_last_batch=True, add_eos=False))
  texts = [tok.decode(row[seg > 0]) for b in once for row, seg in zip(b['tokens'], b['segment_ids']) if seg.any()]
  assert sorted(texts) == sorted(val) and len(once) == 4  # 15 documents, a row each, the last batch padded

def test_sizes_are_described_and_a_part_needs_a_document_per_process(spec, tok):
  docs, _ = sources.read_documents(spec)
  text = mixture.describe(docs)
  assert text.startswith('mix of [0] text:') and 'short.txt 70% (119 documents, ' in text
  assert '[1] text:' in text and 'long.txt 30% (29 documents, ' in text
  assert mixture.describe(['a', 'b']) == ''
  with pytest.raises(ValueError, match=r"data.source: the mixture's part 'text:.*long.txt' has 29 training "
                                       r'document\(s\), fewer than the 32 processes'):
    pipeline.check_corpus_fits(docs, tok, seq_len=16, global_batch=32, packing='concat', shard_count=32)
  pipeline.check_corpus_fits(docs, tok, seq_len=16, global_batch=32, packing='concat', shard_count=8)


@pytest.mark.slow
def test_mixture_resumes_exactly_with_worker_processes(spec, tok):
  docs, _ = sources.read_documents(spec)
  make = lambda: iter(pipeline.make_dataset(docs, tok, seq_len=16, batch_size=4, seed=0,  # noqa: E731
                                            num_workers=2))
  it = make()
  for _ in range(10):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(40)]
  again = make()
  again.set_state(state)
  got = [next(again) for _ in range(40)]
  it.close(), again.close()
  assert same(want, got)
  found, real = _row_sources(want, tok)
  assert abs(real[found == 0].sum() / real.sum() - 0.7) < 0.02


@pytest.mark.slow
def test_the_train_loop_logs_each_sources_share(spec, tmp_path, capsys):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # configs/
  from configs import gpt
  from zoo import config as config_lib
  from zoo import train
  c = config_lib.override(gpt.get_config('tiny'), {
      'data.source': spec, 'data.vocab_size': 300, 'data.num_sentinels': 2, 'log.tensorboard': False,
      'train.steps': 3, 'train.batch_size': 8, 'train.seq_len': 32, 'train.eval_batches': 1, 'log.every': 1})
  train.train_and_evaluate(c, str(tmp_path / 'wd'))
  assert 'mix of [0] text:' in capsys.readouterr().out  # the first line: the parts, weights and sizes
  rows = [json.loads(line) for line in (tmp_path / 'wd' / 'metrics.jsonl').read_text().splitlines()]
  logged = [(r['mix_share_0'], r['mix_share_1']) for r in rows if 'loss' in r]
  # the same batches from the pipeline: the share of their tokens from each source, cumulative per step
  docs, _ = sources.read_documents(spec, validation_fraction=c.data.validation_fraction)
  tok = tk.Tokenizer.load(str(tmp_path / 'wd' / 'tokenizer.model'))
  found, real = _row_sources(take(pipeline.make_dataset(docs, tok, seq_len=32, batch_size=8, seed=c.seed), 3), tok)
  want = [(real[:8 * s][found[:8 * s] == 0].sum() / real[:8 * s].sum()) for s in (1, 2, 3)]
  assert [a for a, _ in logged] == pytest.approx(want) and [a + b for a, b in logged] == pytest.approx([1] * 3)
  assert want[0] == 0.75  # 6 of the first 8 rows: grain's fixed 233:100 interleave

"""Prepared corpora: `python -m zoo.data.prepare` writes token shards, `data.source=prepared:DIR` reads them."""
import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from zoo import paths
from zoo.data import cache, pipeline, prepare, prepared, sources, units
from zoo.data import tokenizer as tk
from zoo import train

WORDS = ('The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times; '
         'numbers like 3.14159 and 2024 appear too.').split() + list('自然语言处理是人工智能的一个重要方向。')


def write_corpus(root, files=3, lines=120, seed=0) -> list[str]:
  """Numbered (so distinct) documents in `files` text files; returns the files' paths."""
  rng = np.random.default_rng(seed)
  out = []
  for f in range(files):
    path = os.path.join(root, f'part{f}.txt')
    with open(path, 'w', encoding='utf-8') as fh:
      for i in range(lines):
        fh.write(f'doc {f}-{i}: ' + ' '.join(rng.choice(WORDS, size=rng.integers(3, 40))) + '\n')
    out.append(path)
  return out


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  write_corpus(str(root))
  docs, _ = sources.read_text(f'{root}/*.txt')
  tok = tk.train_tokenizer(docs, vocab_size=400, num_sentinels=4)
  tok.save(str(root / 'tok.model'))
  return root, docs, tok


def make(corpus, out, **kwargs):
  root, _, _ = corpus
  kwargs.setdefault('tokenizer', str(root / 'tok.model'))
  return prepare.prepare(f'text:{root}/*.txt', str(out), workers=1, progress=False, unit_bytes=1500, **kwargs)


@pytest.fixture(scope='module')
def ready(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'out'
  make(corpus, out)
  return out


def all_docs(directory) -> list[list[int]]:
  return [list(d['tokens']) for s in prepared.SPLITS for d in prepared.PreparedSplit(str(directory), s)]


def test_units_cut_files_at_lines_and_keep_every_document(corpus, ready):
  root, docs, tok = corpus
  manifest = prepared.load_manifest(str(ready))
  assert len(manifest['units']) > 3 * 3  # several units per file: ranges cut inside lines
  assert sorted(all_docs(ready)) == sorted(tok.encode_batch(docs))  # each document once, as the text source reads it
  by_epath = prepared.PreparedSplit(str(ready), local=False)  # a bucket's way: seek and read through etils.epath
  assert all(np.array_equal(a['tokens'], b['tokens']) for a, b in zip(by_epath, prepared.PreparedSplit(str(ready))))
  n_val = manifest['totals']['validation']['documents']
  assert 1 <= n_val < 0.1 * len(docs)
  assert manifest['totals']['train']['tokens'] == prepared.PreparedSplit(str(ready)).num_tokens
  val = {tok.decode(d['tokens']) for d in prepared.PreparedSplit(str(ready), 'validation')}
  assert val == {d for d in docs if units.is_validation(d, 0.01)} | {docs[0]}  # by hash, and the first document


def test_a_killed_preparation_rerun_gives_the_same_shards(corpus, tmp_path):
  root, _, _ = corpus
  write_corpus(str(tmp_path), lines=2000, seed=1)  # about 600 units: the kill lands midway
  run = dict(tokenizer=f'{root}/tok.model', workers=1, progress=False, unit_bytes=1500)
  code = f'from zoo.data import prepare; prepare.prepare("text:{tmp_path}/*.txt", "{tmp_path}/killed", **{run!r})'
  proc = subprocess.Popen([sys.executable, '-c', code])
  deadline = time.time() + 60
  while not list(tmp_path.glob('killed/units/*.json')) and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out, fresh = tmp_path / 'killed', tmp_path / 'fresh'
  prepare.prepare(f'text:{tmp_path}/*.txt', str(fresh), **run)
  done, total = len(list(out.glob('units/*.json'))), len(prepared.load_manifest(str(fresh))['units'])
  assert 0 < done < total and not (out / 'manifest.json').exists()
  with pytest.raises(prepared.PreparedError, match='has not finished: run the same'):
    prepared.PreparedSplit(str(out))
  prepare.prepare(f'text:{tmp_path}/*.txt', str(out), **run)
  files = lambda d: {p.relative_to(d): p.read_bytes() for p in d.rglob('*') if p.is_file()}  # noqa: E731
  assert files(out) == files(fresh)  # byte for byte, the manifest included; no temporary file left
  assert prepare.verify(str(out)) == sum(len(prepared.PreparedSplit(str(out), s)) for s in prepared.SPLITS)


def test_shards_of_a_preparation_make_what_one_machine_makes(corpus, ready, tmp_path):
  out = tmp_path / 'out'
  assert make(corpus, out, shard=1, num_shards=3) is None  # the others' units are missing: no manifest yet
  assert make(corpus, out, shard=0, num_shards=3) is None and not (out / 'manifest.json').exists()
  assert make(corpus, out, shard=2, num_shards=3) is not None  # the last to finish writes it
  files = lambda d: {p.relative_to(d): p.read_bytes() for p in d.rglob('*') if p.is_file()}  # noqa: E731
  assert files(out) == files(ready)


def rows_to_docs(batches) -> list[tuple]:
  """Each 'pad' row's document (packing='pad' with room for the longest: one whole document per row)."""
  return [tuple(row[seg > 0]) for b in batches for row, seg in zip(b['tokens'], b['segment_ids'])]


@pytest.mark.parametrize('shards', [2, 8])
def test_process_shards_are_the_global_order_dealt_out(ready, corpus, shards):
  _, _, tok = corpus
  train = prepared.PreparedSplit(str(ready))
  read = lambda i, n, epochs=1, rows=None: rows_to_docs(itertools.islice(pipeline.make_dataset(  # noqa: E731
      train, tok, seq_len=128, batch_size=1, packing='pad', seed=7, num_epochs=epochs, shard_index=i,
      shard_count=n, prefetch=0), rows))
  whole = read(0, 1)
  parts = [read(i, shards) for i in range(shards)]
  assert sorted(whole) == sorted(tuple(d['tokens']) + (tk.EOS,) for d in train)  # one epoch: every document once
  for i, part in enumerate(parts):  # the same global order on 1 and on `shards` processes: each takes every n-th
    assert part == whole[i::shards][:len(part)] and len(whole) // shards <= len(part)
  assert sum(map(len, parts)) == len(whole) and len(set().union(*map(set, parts))) == len(set(whole))
  assert read(0, 1) == whole and read(0, 1, epochs=None, rows=len(whole)) == whole  # seeded


@pytest.mark.parametrize('packing', pipeline.PACKINGS)
def test_a_restored_reader_continues_with_the_next_batch(ready, corpus, packing):
  _, _, tok = corpus
  ds = lambda: pipeline.make_dataset(prepared.PreparedSplit(str(ready)), tok, seq_len=32, batch_size=4,  # noqa
                                     seed=3, packing=packing)
  it = iter(ds())
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint holds
  want = [next(it) for _ in range(5)]
  again = iter(ds())
  again.set_state(state)
  got = [next(again) for _ in range(5)]
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(want, got) for k in a)


def test_a_restored_mixture_of_prepared_sources_continues_exactly(ready, corpus):
  _, _, tok = corpus
  ds = lambda: pipeline.make_dataset(sources.read_documents(f'mix:prepared:{ready}@3,prepared:{ready}@1')[0],  # noqa
                                     tok, seq_len=32, batch_size=4, seed=5)
  it = iter(ds())
  for _ in range(6):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  again = iter(ds())
  again.set_state(state)
  assert all(np.array_equal(a[k], b[k]) for a, b in zip(want, [next(again) for _ in range(4)]) for k in a)
  assert sum((b['source'] == 0).sum() for b in want) == 12  # the weights hold: 3 of every 4 rows


def test_prepared_features_equal_the_in_memory_ones(corpus, tmp_path):
  """Sentence and word starts recorded at preparation give the batches tokenizing the text gives."""
  root, docs, tok = corpus
  out = tmp_path / 'flags'
  make(corpus, out, sentences=True, word_segmenter='jieba')
  train = prepared.PreparedSplit(str(out))
  assert train.features == ('sentence_starts', 'word_starts')
  texts = {tuple(tok.encode(d)): d for d in docs}
  want = pipeline.Tokenize(tok, sentences=True, word_segmenter='jieba')
  got = pipeline.FromTokens(sentences=True, word_segmenter='jieba')
  for i in range(0, len(train), 7):
    a, b = got((i, train[i])), want((i, texts[tuple(train[i]['tokens'])]))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  plain = prepared.PreparedSplit(str(ready_dir(corpus, tmp_path)))
  with pytest.raises(ValueError, match='without sentence starts.*--sentences'):
    pipeline.make_dataset(plain, tok, seq_len=32, batch_size=2, sentences=True)


def ready_dir(corpus, tmp_path):
  out = tmp_path / 'plain'
  make(corpus, out)
  return out


def test_bad_inputs_are_counted_or_refused(corpus, tmp_path):
  root, _, tok = corpus
  src = tmp_path / 'src'
  src.mkdir()
  (src / 'a.txt').write_bytes(b'first good line\n\xff\xfe broken bytes here\nlast line\n')
  (src / 'empty.txt').write_bytes(b'')
  (src / 'blank.txt').write_bytes(b'\n  \n')
  out = tmp_path / 'out'
  m = prepare.prepare(f'text:{src}/*.txt', str(out), tokenizer=str(root / 'tok.model'), workers=1, progress=False)
  assert m['stats']['invalid_utf8_lines'] == 1 and m['stats']['empty_files'] == 2 and m['stats']['documents'] == 3
  decoded = {tok.decode(d['tokens']) for s in prepared.SPLITS for d in prepared.PreparedSplit(str(out), s)}
  assert '\ufffd\ufffd broken bytes here' in decoded
  # another tokenizer, into the same directory or at training: refused
  other = tk.train_tokenizer(['something else entirely'] * 50, vocab_size=300, num_sentinels=0)
  other.save(str(tmp_path / 'other.model'))
  with pytest.raises(ValueError, match='another tokenizer'):
    prepare.prepare(f'text:{src}/*.txt', str(out), tokenizer=str(tmp_path / 'other.model'), workers=1, progress=False)
  config = importlib.import_module('configs.gpt').get_config('tiny')
  config.data.source = f'prepared:{out}'
  assert train.load_tokenizer(config, str(tmp_path / 'run')).model_proto == tok.model_proto
  assert (tmp_path / 'run' / 'tokenizer.model').read_bytes() == tok.model_proto
  config.data.tokenizer = str(tmp_path / 'other.model')
  with pytest.raises(ValueError, match='is not the tokenizer prepared:'):
    train.load_tokenizer(config, str(tmp_path / 'run2'))
  # a manifest whose tokenizer file was replaced, a truncated shard, a corrupt one
  (out / 'tokenizer.model').write_bytes(other.model_proto)
  with pytest.raises(prepared.PreparedError, match='sha256 differs'):
    prepared.tokenizer_proto(str(out))
  unit = prepared.load_manifest(str(out))['units'][0]['name']
  tokens = out / 'units' / f'{unit}.train.tokens'
  good = tokens.read_bytes()
  tokens.write_bytes(good[:-2])
  with pytest.raises(prepared.PreparedError, match='truncated or damaged'):
    prepared.PreparedSplit(str(out))
  tokens.write_bytes(b'\xff' * len(good))
  with pytest.raises(prepared.PreparedError, match='outside the tokenizer'):
    [d for d in prepared.PreparedSplit(str(out))]
  with pytest.raises(prepared.PreparedError, match='does not match its sha256'):
    prepare.verify(str(out))


def test_the_tokenizer_sample_is_bounded_and_uniform(tmp_path):
  write_corpus(str(tmp_path), files=4, lines=2000)
  opts = units.Options(source=f'text:{tmp_path}/*.txt')
  plan = units.plan_units(opts, unit_bytes=50_000)
  size = sum(u['end'] - u['start'] for u in plan)
  sample = units.sample_documents(plan, opts, budget_chars=size // 10)
  chars = sum(map(len, sample))
  assert size // 10 <= chars <= size // 10 + 1000
  per_file = np.bincount([int(t.split()[1].split('-')[0]) for t in sample], minlength=4)
  assert (per_file > 0.15 * len(sample)).all()  # from every part of the corpus, not its start
  assert units.sample_documents(plan, opts, budget_chars=size // 10) == sample  # seeded
  assert not any(units.is_validation(t, 0.01) for t in sample)  # the training split's


def test_prepared_sources_in_a_mixture_and_errors(ready, corpus, tmp_path):
  _, _, tok = corpus
  docs, stats = sources.read_documents(f'mix:prepared:{ready}@3,prepared:{ready}@1')
  assert [round(w, 2) for w in docs.weights] == [0.75, 0.25] and 'tokens' in stats.report()
  ds = pipeline.make_dataset(docs, tok, seq_len=32, batch_size=8, seed=0)
  assert np.bincount(next(iter(ds))['source'], minlength=2).tolist() == [6, 2]
  with pytest.raises(prepared.PreparedError, match='prepare it first'):
    sources.read_documents(f'prepared:{tmp_path}/nothing')
  with pytest.raises(ValueError, match='prepare each source of a mixture'):
    prepare.prepare(f'mix:prepared:{ready}@1,default@1', str(tmp_path / 'x'), tokenizer='t', progress=False)


@pytest.mark.slow
def test_prepare_command_line(corpus, tmp_path):
  root, _, _ = corpus
  run = lambda *a: subprocess.run([sys.executable, '-m', 'zoo.data.prepare', *a], capture_output=True,  # noqa
                                  text=True, timeout=120)
  r = run(f'--source=text:{tmp_path}/none/*.txt', f'--out={tmp_path}/o', f'--tokenizer={root}/tok.model')
  assert r.returncode == 2 and r.stderr.strip().startswith('error: --source: no file matches')
  assert 'Traceback' not in r.stderr
  r = run(f'--source=text:{root}/*.txt', f'--out={tmp_path}/o', '--vocab_size=400', '--num_sentinels=4', '--workers=2')
  assert r.returncode == 0, r.stderr
  assert 'train with --config.data.source=prepared:' in r.stdout
  assert paths.is_file(f'{tmp_path}/o/manifest.json') and tk.Tokenizer.load(f'{tmp_path}/o/tokenizer.model')


def test_a_huggingface_dataset_on_disk(corpus, tmp_path):
  datasets = pytest.importorskip('datasets')
  root, docs, tok = corpus
  splits = datasets.DatasetDict({'train': datasets.Dataset.from_dict({'body': docs[:300], 'n': list(range(300))}),
                                 'test': datasets.Dataset.from_dict({'body': docs[300:320]})})
  splits.save_to_disk(str(tmp_path / 'dd'))
  datasets.Dataset.from_dict({'text': docs}).save_to_disk(str(tmp_path / 'flat'))
  m = prepare.prepare(f'hf:{tmp_path}/dd:body', str(tmp_path / 'a'), tokenizer=str(root / 'tok.model'),
                      workers=1, progress=False, unit_bytes=100 * 2048)
  assert len(m['units']) == 3 + 1  # 100 records a unit
  read = lambda d, s: [tok.decode(x['tokens']) for x in prepared.PreparedSplit(str(tmp_path / d), s)]  # noqa
  assert read('a', 'train') == docs[:300] and read('a', 'validation') == docs[300:320]  # the dataset's own splits
  prepare.prepare(f'hf:{tmp_path}/flat', str(tmp_path / 'b'), tokenizer=str(root / 'tok.model'), progress=False)
  assert sorted(read('b', 'train') + read('b', 'validation')) == sorted(docs)
  assert set(read('b', 'validation')) == {d for d in docs if units.is_validation(d, 0.01)} | {docs[0]}
  with pytest.raises(ValueError, match="no column 'txt'"):
    prepare.prepare(f'hf:{tmp_path}/flat:txt', str(tmp_path / 'c'), tokenizer=str(root / 'tok.model'),
                    progress=False)


def test_train_py_prepares_into_a_cache_once(corpus, tmp_path):
  root, _, tok = corpus
  config = importlib.import_module('configs.gpt').get_config('tiny')
  config.data.update(prepare=True, prepared_dir=str(tmp_path / 'cache'), source=f'text:{root}/*.txt',
                     vocab_size=400, num_sentinels=4)
  spec = train.source(config, str(tmp_path / 'run'))
  directory = prepared.directory_of(spec)
  assert directory.startswith(str(tmp_path / 'cache')) and (tmp_path / 'cache').exists()
  stamp = os.stat(f'{directory}/manifest.json').st_mtime_ns
  assert train.load_tokenizer(config, str(tmp_path / 'run')).model_proto == (tmp_path / 'run' / 'tokenizer.model'
                                                                             ).read_bytes()
  assert len(train.read(config, 'train')) + len(train.read(config, 'validation')) == 360
  config.data.max_doc_chars = 99_999  # another key: prepared again, elsewhere; then found again
  other = prepared.directory_of(train.source(config))
  assert other != directory and prepared.directory_of(train.source(config)) == other
  config.data.max_doc_chars = 100_000
  assert train.source(config) == spec and os.stat(f'{directory}/manifest.json').st_mtime_ns == stamp  # reused
  (root / 'part0.txt').touch()  # an edited file: prepared anew
  assert train.source(config) != spec
  config.data.source = f'mix:text:{root}/part0.txt@2,text:{root}/part1.txt@1'
  mix, _ = sources.read_documents(train.source(config))
  assert [round(w, 3) for w in mix.weights] == [0.667, 0.333]
  a, b = (prepared.tokenizer_proto(p.directory) for p in mix.documents)
  assert a == b  # the later part takes the first one's tokenizer
  config.data.prepared_dir = ''
  with pytest.raises(ValueError, match='data.prepared_dir to a path every process sees'):
    cache.ensure(config.data, sentences=False, shard=0, num_shards=2)


def test_a_huggingface_tokenizer_directory(corpus, tmp_path):
  import io
  import sentencepiece as spm
  from zoo.data import hf_tokenizer
  root, docs, _ = corpus
  model = io.BytesIO()  # a T5-style vocabulary (spiece.model): pad 0, eos 1, unk 2, 100 sentinels above it
  spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=model, vocab_size=120, pad_id=0,
                                 eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  (tmp_path / 'hf').mkdir()
  (tmp_path / 'hf' / 'spiece.model').write_bytes(model.getvalue())
  hf = hf_tokenizer.HFTokenizer.load(str(tmp_path / 'hf'))
  m = prepare.prepare(f'text:{root}/*.txt', str(tmp_path / 'out'), tokenizer=str(tmp_path / 'hf'), workers=1,
                      progress=False)
  assert m['tokenizer']['kind'] == 'hf' and m['tokenizer']['vocab_size'] == hf.vocab_size == 220
  assert sorted(all_docs(tmp_path / 'out')) == sorted(hf.encode_batch(docs))  # its ids, no special tokens added
  assert (tmp_path / 'out' / 'tokenizer' / 'spiece.model').read_bytes() == model.getvalue()
  with pytest.raises(ValueError, match='another tokenizer'):
    make(corpus, tmp_path / 'out')
  config = importlib.import_module('configs.gpt').get_config('tiny')
  config.data.source = f'prepared:{tmp_path}/out'
  read = train.load_tokenizer(config, str(tmp_path / 'run'))  # training reads it as the HF tokenizer it was
  assert isinstance(read, hf_tokenizer.HFTokenizer) and read.encode_batch(docs[:5]) == hf.encode_batch(docs[:5])

"""Tokenizers, sources, packing and the grain pipeline: determinism, sharding, exact resume, bad input."""
import json
import logging
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from zoo.data import pipeline, prepare, prepared, sources, tfds_text
from zoo.data import tokenizer as tk

ENGLISH = ('The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of '
           'times; numbers like 3.14159 and 2024 appear too.')
CHINESE = '自然语言处理是人工智能的一个重要方向。中文文本没有空格，词与词之间不分开。今天天气很好！'
EMOJI = 'Emoji 🙂🚀 and symbols © ∑ — tabs\tand  double  spaces, a new\nline.'


@pytest.fixture(scope='module')
def corpus():
  """A few hundred varied documents (numbered, so each is unique)."""
  words = ENGLISH.split() + list(CHINESE)
  rng = np.random.default_rng(0)
  return [f'doc {i}: ' + ' '.join(rng.choice(words, size=rng.integers(3, 40))) for i in range(400)]


@pytest.fixture(scope='module')
def tok(corpus):
  return tk.train_tokenizer(corpus + [ENGLISH, CHINESE, EMOJI] * 5, vocab_size=400, num_sentinels=10)


# ---------------------------------------------------------------- tokenizer

@pytest.mark.parametrize('model_type', ['unigram', 'bpe'])
def test_tokenizer_round_trip_and_special_ids(corpus, model_type):
  tok = tk.train_tokenizer(corpus + [ENGLISH, CHINESE], vocab_size=400, model_type=model_type, num_sentinels=10)
  for text in (ENGLISH, CHINESE, EMOJI, '未见过的字：龘𠀋', ' leading and trailing  '):
    ids = tok.encode(text)
    assert tk.UNK not in ids
    assert tok.decode(ids) == text
  assert [tok.piece(i) for i in range(9)] == ['[PAD]', '[UNK]', '[BOS]', '[EOS]', '[CLS]', '[SEP]', '[MASK]',
                                               '[sop]', '[eop]']
  assert (tk.PAD, tk.EOS, tk.CLS, tk.SEP, tk.MASK, tk.SOP, tk.EOP) == (0, 3, 4, 5, 6, 7, 8)
  assert tok.num_sentinels == 10 and tok.piece(tok.sentinel(9)) == '<extra_id_9>' and tok.sentinel(0) == 9
  assert tok.vocab_size == 400
  assert tok.is_special([0, 8, 18]).all() and not tok.is_special([19]).any()


def test_word_starts_mark_whole_words(tok):
  ids = tok.encode('quick brown foxes')
  starts = tok.word_starts(ids)
  words = []
  for i, s in zip(ids, starts):
    if s:
      words.append('')
    words[-1] += tok.piece(i)
  assert [w.replace('\u2581', '') for w in words] == ['quick', 'brown', 'foxes']


def test_tokenizer_files_and_checks(tok, tmp_path):
  path = str(tmp_path / 'spm.model')
  tok.save(path)
  loaded = tk.Tokenizer.load(path, model_vocab_size=512)
  assert loaded.encode(ENGLISH) == tok.encode(ENGLISH)
  with pytest.raises(ValueError, match='has 400 pieces but model.vocab_size is 300'):
    tk.Tokenizer.load(path, model_vocab_size=300)
  with pytest.raises(FileNotFoundError, match='data.tokenizer'):
    tk.Tokenizer.load(str(tmp_path / 'missing.model'))
  import sentencepiece as spm  # a plain SentencePiece model lacks zoo's ids
  spm.SentencePieceTrainer.train(sentence_iterator=iter([ENGLISH] * 50), model_prefix=str(tmp_path / 'plain'),
                                 vocab_size=50, minloglevel=2)
  with pytest.raises(ValueError, match='not a zoo tokenizer'):
    tk.Tokenizer.load(str(tmp_path / 'plain.model'))


def english_40kb() -> str:
  """The first 40 KB of the default corpus: English prose too small for the default vocabularies."""
  docs, _ = sources.read_documents('default')
  return '\n'.join(docs).encode('utf-8')[:40_000].decode('utf-8', errors='ignore')


def chinese_poems(lines: int = 1000, distinct: int = 4000) -> tuple[list[str], list[str]]:
  """Quatrains of 5- or 7-character lines drawn from `distinct` CJK Unified Ideographs with Zipf frequencies
  (the k-th most frequent ~ 1/k), as in Tang and Song poetry; and the characters, most frequent first."""
  rng = np.random.default_rng(0)
  chars = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FA6), size=distinct, replace=False)]
  p = 1 / np.arange(1, distinct + 1)
  poems = []
  for _ in range(lines):
    n = int(rng.choice([5, 7]))
    c = ''.join(chars[i] for i in rng.choice(distinct, size=4 * n, p=p / p.sum()))
    poems.append('，'.join(c[i * n:(i + 1) * n] for i in range(4)) + '。')
  return poems, chars


@pytest.mark.parametrize('vocab_size', [2000, 8000])  # the tiny recipes' data.vocab_size, and zoo.config's
def test_a_40_kb_english_file_trains_the_largest_vocabulary_it_supports(vocab_size, tmp_path, caplog):
  (tmp_path / 'small.txt').write_text(english_40kb())
  docs, _ = sources.read_documents(f'text:{tmp_path}/small.txt')
  with caplog.at_level(logging.INFO, logger='zoo'):
    tok = tk.train_tokenizer(docs, vocab_size, source='small.txt')
  assert 1000 < tok.vocab_size < 2000 and tok.requested_vocab_size == vocab_size
  assert (f'data.vocab_size={vocab_size} is more than this corpus supports: trained the largest vocabulary it '
          f'does, {tok.vocab_size:,} pieces (set data.vocab_size={tok.vocab_size}') in caplog.text
  assert f'training a {vocab_size:,}-piece unigram tokenizer on small.txt' in caplog.text
  assert re.search(rf'done in \d+\.\d s: {tok.vocab_size:,} pieces, in memory', caplog.text)
  assert tok.num_sentinels == 100 and tok.piece(tok.sentinel(99)) == '<extra_id_99>'
  for text in docs[:50] + ['naïve café: ∑ ≈ Ω, 🙂 and 你好', EMOJI]:
    ids = tok.encode(text)
    assert tk.UNK not in ids and tok.decode(ids) == text


@pytest.mark.parametrize('vocab_size', [2000, 8000])
def test_chinese_poems_train_a_vocabulary_smaller_than_their_characters(vocab_size, caplog):
  poems, chars = chinese_poems()
  assert len(set(''.join(poems))) > 2500  # more characters than 2000 pieces hold
  with caplog.at_level(logging.INFO, logger='zoo'):
    tok = tk.train_tokenizer(poems, vocab_size)
  assert tok.requested_vocab_size == vocab_size and tok.num_sentinels == 100
  if vocab_size == 2000:  # 1,635 pieces left after the bytes and 109 reserved ids: the rarest characters go
    assert tok.vocab_size == 2000
    assert re.search(r'data.vocab_size=2000 leaves room for 1,2\d\d of the 2,\d{3} characters of this corpus: the '
                     r'rarest .* are spelled in UTF-8 bytes', caplog.text)
  else:  # every character fits; 1,000 poems support fewer than 8000 pieces
    assert 2500 < tok.vocab_size < 8000 and 'leaves room' not in caplog.text
  rare = [c for c in chars[::-1] if tok.piece_id(c) == tk.UNK][:10]  # the rarest characters without a piece
  assert len(rare) == 10
  assert sum(tok.piece(i).startswith('<0x') for i in tok.encode(''.join(rare))) == 30  # 3 UTF-8 bytes each
  line = '床前明月光，' + ''.join(rare) + '。'
  ids = tok.encode(line)
  assert tk.UNK not in ids and tok.decode(ids) == line
  assert all(tok.decode(tok.encode(p)) == p for p in poems)


def test_vocabulary_sizes_a_corpus_cannot_support(corpus, caplog):
  with caplog.at_level(logging.INFO, logger='zoo'):
    tok = tk.train_tokenizer(corpus, vocab_size=50000)
  assert 400 < tok.vocab_size < 5000 and tok.requested_vocab_size == 50000
  assert f'data.vocab_size=50000 is more than this corpus supports: trained the largest vocabulary it does, ' \
         f'{tok.vocab_size:,} pieces' in caplog.text
  with pytest.raises(ValueError, match=r'^data.vocab_size=200 is too small: 109 ids are reserved for special tokens '
                                       r'and sentinels and 256 for byte fallback; use at least 366$'):
    tk.train_tokenizer(corpus, vocab_size=200)
  with pytest.raises(ValueError, match='data.vocab_size=365 is too small'):
    tk.train_tokenizer(corpus, vocab_size=365)
  tok = tk.train_tokenizer(corpus, vocab_size=366)  # the bytes, the reserved ids and '▁': all in bytes
  assert tok.vocab_size == 366 and tok.piece(365) == tk.WORD_START
  assert all(tok.decode(tok.encode(text)) == text for text in corpus[:20] + [ENGLISH, CHINESE, EMOJI])


def test_tokenizer_command_line(tmp_path):
  (tmp_path / 'a.txt').write_text('\n'.join([ENGLISH, CHINESE, EMOJI] * 30))
  out = tmp_path / 'cli.model'
  run = subprocess.run([sys.executable, '-m', 'zoo.data.tokenizer', f'--source=text:{tmp_path}/*.txt',
                        f'--output={out}', '--vocab_size=360', '--num_sentinels=5', '--model_type=bpe'],
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert 'wrote' in run.stdout and tk.Tokenizer.load(str(out)).vocab_size == 360
  bad = subprocess.run([sys.executable, '-m', 'zoo.data.tokenizer', f'--source=text:{tmp_path}/*.txt',
                        f'--output={out}', '--vocab_size=300'], capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.startswith('error: --vocab_size=300 is too small: 109 ids are reserved')
  assert 'Traceback' not in bad.stderr


# ---------------------------------------------------------------- sources

def test_text_sources_and_bad_input(tmp_path):
  (tmp_path / 'a.txt').write_text('first doc\n\nsecond doc\nstill second\n\n\nthird\n')
  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'bad.txt').write_bytes(b'good line\nbad \xff\xfe bytes\n')
  (tmp_path / 'long.txt').write_text('x' * 3_000_000)  # one line of 3 MB
  docs, stats = sources.read_text(str(tmp_path / '*.txt'), 'line', max_doc_chars=1_000_000)
  assert stats.empty_files == 1 and stats.invalid_utf8_lines == 1 and stats.split_long_documents == 1
  assert 'bad \ufffd\ufffd bytes' in docs and docs.count('x' * 1_000_000) == 3
  assert {'first doc', 'second doc', 'still second', 'third', 'good line'} <= set(docs)
  assert '1 empty files' in stats.report() and '1 invalid utf8 lines' in stats.report()
  para, _ = sources.read_text(str(tmp_path / 'a.txt'), 'paragraph')
  assert para == ['first doc', 'second doc\nstill second', 'third']
  with pytest.raises(FileNotFoundError, match="data.source: no file matches"):
    sources.read_documents(f'text:{tmp_path}/nothing*.txt')
  with pytest.raises(ValueError, match='holds no text'):
    sources.read_documents(f'text:{tmp_path}/empty.txt')
  with pytest.raises(ValueError, match="is not a source: use 'default'"):
    sources.read_documents('wiki')


def test_jsonl_source(tmp_path):
  lines = [json.dumps({'body': f'text {i}', 'id': i}) for i in range(10)] + ['{not json', json.dumps({'x': 1})]
  (tmp_path / 'a.jsonl').write_text('\n'.join(lines))
  docs, stats = sources.read_jsonl(str(tmp_path / '*.jsonl'), 'body')
  assert docs == [f'text {i}' for i in range(10)]
  assert stats.bad_json_lines == 1 and stats.missing_field_lines == 1
  with pytest.raises(ValueError, match="no line of .* has the field 'text'"):
    sources.read_documents(f'jsonl:{tmp_path}/*.jsonl:text')


def write_parquet(path, texts, row_group_size=7, **columns):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({'text': texts, **columns}), str(path), row_group_size=row_group_size)


def test_parquet_source_streams_batches_in_order(tmp_path):
  import pyarrow.parquet as pq
  texts = [f'parquet document {i}: {CHINESE[i % 10:]}' for i in range(40)]
  write_parquet(tmp_path / 'a.parquet', texts[:30] + [None, '  '], ids=list(range(32)))
  write_parquet(tmp_path / 'b.parquet', texts[30:], ids=list(range(10)))
  assert pq.ParquetFile(str(tmp_path / 'a.parquet')).num_row_groups == 5  # the reader crosses row groups
  docs, stats = sources.read_parquet(str(tmp_path / '*.parquet'), 'text', batch_rows=4)
  assert docs == texts and stats.files == 2 and stats.null_values == 1
  assert '1 null values' in stats.report()
  train, _ = sources.read_documents(f'parquet:{tmp_path}/*.parquet:text', validation_fraction=0.1)
  val, _ = sources.read_documents(f'parquet:{tmp_path}/*.parquet:text', split='validation', validation_fraction=0.1)
  assert len(val) == 4 and sorted(train + val) == sorted(texts)
  assert train == [t for t in texts if t not in val]  # the split keeps the files' order


def test_parquet_source_errors_name_the_path_or_column(tmp_path):
  write_parquet(tmp_path / 'a.parquet', ['one', 'two'], ids=[1, 2])
  (tmp_path / 'notes.parquet').write_text('not parquet')
  with pytest.raises(ValueError, match=r"a.parquet has no column 'body'; its columns are \['text', 'ids'\]: name "
                                       r'the column that holds the text, as parquet:<glob>:<column>'):
    sources.read_documents(f'parquet:{tmp_path}/a.parquet:body')
  with pytest.raises(ValueError, match=r"column 'ids' of .*a.parquet holds int64, not text"):
    sources.read_documents(f'parquet:{tmp_path}/a.parquet:ids')
  with pytest.raises(FileNotFoundError, match=r"data.source: no file matches '.*missing.parquet'"):
    sources.read_documents(f'parquet:{tmp_path}/missing.parquet:text')
  with pytest.raises(FileNotFoundError, match='data.source: no file matches'):
    sources.read_documents(f'parquet:{tmp_path}/*.pq:text')
  with pytest.raises(ValueError, match=r'notes.parquet is not a readable Parquet file'):
    sources.read_documents(f'parquet:{tmp_path}/*.parquet:text')
  with pytest.raises(ValueError, match="is not a source: use 'default'"):
    sources.read_documents(f'parquet:{tmp_path}/a.parquet')  # no column


def test_parquet_corpus_resumes_with_the_next_batch(corpus, tok, tmp_path):
  write_parquet(tmp_path / 'c.parquet', corpus, row_group_size=64)
  docs, _ = sources.read_documents(f'parquet:{tmp_path}/c.parquet:text')
  assert docs == sources.read_documents(f'parquet:{tmp_path}/c.parquet:text')[0] and len(docs) == 396
  it = iter(pipeline.make_dataset(docs, tok, seq_len=32, batch_size=4, seed=3))
  for _ in range(5):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  again = iter(pipeline.make_dataset(sources.read_documents(f'parquet:{tmp_path}/c.parquet:text')[0], tok,
                                     seq_len=32, batch_size=4, seed=3))
  again.set_state(state)
  assert same(want, [next(again) for _ in range(4)])


def test_a_checkpointed_iterator_resumes_exactly_also_where_a_row_ends_a_document(corpus, tok, tmp_path):
  """Through zoo's checkpoints (grain's JSON file): at a batch whose last row ended a document, grain's packing
  reads its state's (-1, -1) back from JSON as a list, and without zoo's conversion it skipped a document."""
  import jax.numpy as jnp

  from zoo import checkpoint as ckpt
  ds = lambda: pipeline.make_dataset(corpus, tok, seq_len=8, batch_size=1, seed=3)  # noqa: E731
  it, ended = iter(ds()), {}
  for k in range(1, 80):
    next(it)
    remainder = it.get_state()['remainder_slices']['tokens']
    ended.setdefault(tuple(remainder) == (-1, -1), k)
  assert set(ended) == {True, False}  # both kinds of position occur in the first 80 rows
  checkpointer = ckpt.Checkpointer(str(tmp_path), async_save=False)
  for k in sorted(ended.values()):
    it = iter(ds())
    for _ in range(k):
      next(it)
    checkpointer.save(k, {'x': jnp.zeros(2)}, it, force=True)
    want = [next(it) for _ in range(6)]
    again = iter(ds())
    checkpointer.restore(k, {'x': jnp.zeros(2)}, again)
    assert same(want, [next(again) for _ in range(6)]), k


def test_split_is_fixed_disjoint_and_complete(tmp_path):
  (tmp_path / 'a.txt').write_text('\n'.join(f'line {i}' for i in range(500)))
  spec = f'text:{tmp_path}/a.txt'
  train, _ = sources.read_documents(spec, split='train', validation_fraction=0.1)
  val, _ = sources.read_documents(spec, split='validation', validation_fraction=0.1)
  assert len(val) == 50 and not set(train) & set(val) and len(set(train) | set(val)) == 500
  assert sources.read_documents(spec, split='validation', validation_fraction=0.1)[0] == val


def test_default_corpus_is_real_offline_text():
  docs, stats = sources.read_documents('default')
  assert stats.characters > 1_000_000 and len(docs) > 1000
  text = ' '.join(docs[:200])
  assert text.count(' the ') > 100  # English prose, not code


def test_tfds_builder_without_tensorflow(tmp_path, monkeypatch):
  (tmp_path / 'c.txt').write_text('\n'.join(f'sentence number {i}' for i in range(40)))
  builder = tfds_text.prepare(str(tmp_path / '*.txt'), data_dir=str(tmp_path / 'tfds'), validation_fraction=0.25)
  name = f'zoo_text/{builder.builder_config.name}'
  train, stats = sources.read_documents(f'tfds:{name}', split='train', data_dir=str(tmp_path / 'tfds'))
  val, _ = sources.read_documents(f'tfds:{name}', split='validation', data_dir=str(tmp_path / 'tfds'))
  assert len(train) == 30 and len(val) == 10
  assert set(train) | set(val) == {f'sentence number {i}' for i in range(40)}
  assert 'tensorflow' not in sys.modules
  tok = tk.train_tokenizer(list(train), vocab_size=300, num_sentinels=0)
  tok.save(str(tmp_path / 'tok.model'))
  prepare.prepare(f'tfds:{name}', str(tmp_path / 'p'), tokenizer=str(tmp_path / 'tok.model'), progress=False,
                  data_dir=str(tmp_path / 'tfds'), unit_bytes=10 * 2048)  # 10 records a unit
  for split, docs in (('train', train), ('validation', val)):  # the dataset's own splits, in its order
    assert [tok.decode(d['tokens']) for d in prepared.PreparedSplit(str(tmp_path / 'p'), split)] == list(docs)
  with pytest.raises(FileNotFoundError, match=r'tfds:lm1b is not prepared in .*tfds build lm1b'):
    sources.read_documents('tfds:lm1b', data_dir=str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match="has no feature 'body'"):
    sources.read_documents(f'tfds:{name}:body', data_dir=str(tmp_path / 'tfds'))

  class TfRecordInfo:  # the same dataset as if prepared in TFRecord format, which needs TensorFlow to read
    file_format = 'tfrecord'
    splits = builder.info.splits
  monkeypatch.setattr(type(builder), 'info', property(lambda self: TfRecordInfo()))
  with pytest.raises(RuntimeError, match=r'was prepared as tfrecord, which needs TensorFlow to read: '
                                         r'`pip install tensorflow`, or prepare it again with --file_format=array_record'):
    sources.read_prepared(builder, name, 'text', 'train')


# ---------------------------------------------------------------- pipeline

def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize('packing', pipeline.PACKINGS)
def test_same_seed_same_batches_and_well_formed_packing(corpus, tok, packing):
  make = lambda seed: pipeline.make_dataset(corpus, tok, seq_len=32, batch_size=4, seed=seed,  # noqa: E731
                                            packing=packing)
  a, b, c = take(make(0), 6), take(make(0), 6), take(make(1), 6)
  assert same(a, b) and not same(a, c)
  for batch in a:
    tokens, seg, pos = batch['tokens'], batch['segment_ids'], batch['positions']
    assert tokens.dtype == np.int32 and tokens.shape == (4, 32)
    assert ((tokens == 0) == (seg == 0)).all()  # padding exactly where segment 0
    for row in range(4):
      for t in range(32):
        if seg[row, t] == 0:
          continue
        if t == 0 or seg[row, t] != seg[row, t - 1]:
          assert pos[row, t] == 0 or (packing == 'concat' and t == 0)
        else:
          assert pos[row, t] == pos[row, t - 1] + 1
      assert (np.diff(seg[row][seg[row] > 0]) >= 0).all()
  if packing == 'concat':
    assert pipeline.fill_rate(a) == 1.0


def test_process_shards_are_disjoint_and_cover_the_data(corpus, tok):
  seen = []
  for index in range(3):
    ds = pipeline.make_dataset(corpus, tok, seq_len=128, batch_size=1, packing='pad', num_epochs=1,
                               shard_index=index, shard_count=3, add_eos=False)
    seen.append({tok.decode(row['tokens'][0][row['segment_ids'][0] > 0]) for row in ds})
  assert all(len(s) > 100 for s in seen)
  assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
  assert seen[0] | seen[1] | seen[2] == set(corpus)


@pytest.mark.parametrize('workers', [0, pytest.param(2, marks=pytest.mark.slow)])
def test_restored_iterator_continues_with_the_next_batch(corpus, tok, workers):
  ds = pipeline.make_dataset(corpus, tok, seq_len=32, batch_size=4, seed=3, num_workers=workers)
  it = iter(ds)
  for _ in range(5):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  again = iter(pipeline.make_dataset(corpus, tok, seq_len=32, batch_size=4, seed=3, num_workers=workers))
  again.set_state(state)
  assert same(want, [next(again) for _ in range(4)])


def test_iterator_state_in_an_orbax_checkpoint(corpus, tok, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  make = lambda: iter(pipeline.make_dataset(corpus, tok, seq_len=32, batch_size=4, seed=5))  # noqa: E731
  it = make()
  for _ in range(7):
    next(it)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  want = [next(it) for _ in range(3)]
  resumed = make()
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(resumed)))
  assert same(want, [next(resumed) for _ in range(3)])


def test_evaluation_pads_the_last_batch(corpus, tok):
  docs = corpus[:10]
  batches = list(pipeline.make_dataset(docs, tok, seq_len=256, batch_size=4, packing='pad', shuffle=False,
                                       num_epochs=1, pad_last_batch=True))
  assert len(batches) == 3 and batches[-1]['tokens'].shape == (4, 256)
  assert (batches[-1]['segment_ids'][2:] == 0).all() and (batches[-1]['segment_ids'][:2, 0] == 1).all()


def test_corpus_smaller_than_one_batch(tok):
  with pytest.raises(ValueError, match=r'data.source is too small: .* fewer than one batch of '
                                       r'train.batch_size=64: add text, or lower train.batch_size'):
    pipeline.check_corpus_fits(['a few words', 'and a few more'], tok, seq_len=128, global_batch=64,
                               packing='concat')
  pipeline.check_corpus_fits(['word ' * 50] * 40, tok, seq_len=16, global_batch=8, packing='concat')


def test_default_corpus_packs_above_95_percent():
  docs, _ = sources.read_documents('default')
  tok = tk.train_tokenizer(docs[:2000], vocab_size=2000, num_sentinels=10)
  for packing, floor in (('concat', 0.999), ('first_fit', 0.95)):
    batches = take(pipeline.make_dataset(docs, tok, seq_len=128, batch_size=16, packing=packing), 30)
    assert pipeline.fill_rate(batches) >= floor, packing


def test_sentence_boundaries_survive_tokenizing_and_packing(tok):
  text = 'The fox ran. The dog slept! 今天天气很好。我们去公园？ Done.'
  starts = tk.sentence_starts(text)
  pieces = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
  assert pieces == ['The fox ran.', ' The dog slept!', ' 今天天气很好。', '我们去公园？', ' Done.']
  ids, sentence_ids = tok.encode_sentences(text)
  assert ids == tok.encode(text)
  for n, piece in enumerate(pieces, start=1):  # the tokens of sentence n decode to sentence n
    assert tok.decode(np.asarray(ids)[sentence_ids == n]) == piece.lstrip(' ')  # decode drops a leading '▁'
  docs = [text, 'One. Two. Three.'] * 20
  for packing in pipeline.PACKINGS:
    batch = take(pipeline.make_dataset(docs, tok, seq_len=64, batch_size=2, packing=packing, sentences=True,
                                       shuffle=False), 1)[0]
    sent, seg = batch['sentence_ids'], batch['segment_ids']
    assert ((sent == 0) == (seg == 0)).all()
    row = batch['tokens'][0][(seg[0] == 1)]
    first_doc = tok.decode(row[sent[0][seg[0] == 1] == 1])
    assert first_doc in ('The fox ran.', 'One.'), (packing, first_doc)


def test_get_tokenizer_trains_once_into_the_workdir(corpus, tmp_path):
  calls = []

  def documents():
    calls.append(1)
    return corpus
  a = tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=400, num_sentinels=10)
  b = tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=400, num_sentinels=10)
  assert len(calls) == 1 and (tmp_path / 'tokenizer.model').exists()
  assert a.encode(ENGLISH) == b.encode(ENGLISH)
  with pytest.raises(ValueError, match='has 400 pieces but data.vocab_size is 500'):
    tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=500)
  c = tk.get_tokenizer(str(tmp_path / 'tokenizer.model'), workdir=None, documents=documents, vocab_size=0)
  assert c.vocab_size == 400


def test_a_workdir_tokenizer_trained_smaller_than_asked_resumes(corpus, tmp_path):
  calls = []

  def documents():
    calls.append(1)
    return corpus
  a = tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=5000, num_sentinels=10)
  assert a.vocab_size < 5000 and a.requested_vocab_size == 5000
  b = tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=5000, num_sentinels=10)
  assert len(calls) == 1 and b.vocab_size == a.vocab_size and b.encode(ENGLISH) == a.encode(ENGLISH)
  tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=a.vocab_size)  # what it has
  assert len(calls) == 1
  with pytest.raises(ValueError, match=rf'has {a.vocab_size} pieces \(trained for data.vocab_size=5000\) but '
                                       rf'data.vocab_size is 4000: .* set data.vocab_size=5000$'):
    tk.get_tokenizer('train', workdir=str(tmp_path), documents=documents, vocab_size=4000)


@pytest.mark.slow  # 4 s: imports and builds the trainer
def test_a_smaller_tokenizer_builds_a_working_model_and_resumes(tmp_path):
  import jax

  from configs import gpt
  from zoo import train
  (tmp_path / 'small.txt').write_text(english_40kb())
  config = gpt.get_config('tiny')
  config.data.source = f'text:{tmp_path}/small.txt'
  run = train.build(config, str(tmp_path / 'work'))
  n = run.tokenizer.vocab_size
  assert n < config.data.vocab_size == 2000 and run.model.vocab_size == 128 * math.ceil(n / 128)
  assert run.objective.vocab_size == n
  tokens = np.asarray([run.tokenizer.encode(ENGLISH)[:32]], np.int32)  # every id has a row in the embedding
  logits = jax.eval_shape(lambda p: run.model.apply({'params': p}, tokens), run.abstract_state.params)
  assert logits.shape == (1, 32, run.model.vocab_size) and tokens.max() < n
  again = train.build(config, str(tmp_path / 'work'))  # a resume: the workdir's tokenizer, the same model
  assert again.tokenizer.vocab_size == n and again.model.vocab_size == run.model.vocab_size


def test_chinese_word_boundaries_from_jieba(tok):
  import jieba
  text = '我们今天去公园散步。自然语言处理很有意思！'
  ids, starts = tok.encode_words(text)
  assert ids == tok.encode(text) and tok.decode(ids) == text
  words = [w for w, _, _ in jieba.tokenize(text)]
  assert len(words) < len(text)  # jieba found words of several characters
  # group the tokens into words at the starts: they decode to jieba's words
  groups, current = [], []
  for i, s in zip(ids, starts):
    if s and current:
      groups.append(current)
      current = []
    current.append(i)
  groups.append(current)
  assert [tok.decode(g).strip() for g in groups] == words
  # through the pipeline and whole-word masking: a Chinese word is masked whole or not at all
  from zoo import objectives
  docs = [text * 3, CHINESE * 2] * 20
  batch = take(pipeline.make_dataset(docs, tok, seq_len=64, batch_size=4, packing='pad', word_segmenter='jieba',
                                     shuffle=False), 1)[0]
  assert batch['word_starts'].shape == (4, 64)
  obj = objectives.make('mlm', vocab_size=tok.vocab_size, num_special=tk.FIRST_SENTINEL + tok.num_sentinels,
                        masking='whole_word', word_starts=tok.word_starts(np.arange(tok.vocab_size)))
  ex = obj.example(batch, np.random.default_rng(0))
  for row in range(4):
    chosen = set(ex['mlm_positions'][row][ex['mlm_weights'][row] > 0].tolist())
    ok = (batch['segment_ids'][row] > 0) & ~tok.is_special(batch['tokens'][row])
    words_ = obj.words(batch['tokens'][row], ok, batch['word_starts'][row])
    assert any(len(w) > 1 for w in words_)
    for w in words_:
      assert all(int(i) in chosen for i in w) or not any(int(i) in chosen for i in w)
    assert chosen

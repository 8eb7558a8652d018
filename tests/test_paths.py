"""Workdirs, data and tokenizers on gs:// go through etils.epath: a fake bucket serves gs://bucket/... from a local
directory through epath's mock backend. Code that used os.path, open(), os.makedirs or glob on a 'gs://...' string
would look in (or write to) the current directory instead, which the fixture checks stays empty."""
import json
import os
import time
import types
from unittest import mock

import ml_collections
import pytest
from etils.epath import gpath, testing

from zoo import checkpoint as ckpt
from zoo.data import sources
from zoo.data import tokenizer as tk
from zoo.train import lock as lock_lib
from zoo.train import loop
from zoo.train.metrics import MetricWriter

_FNS = ('copy', 'exists', 'glob', 'isdir', 'listdir', 'makedirs', 'mkdir', 'open', 'remove', 'rename', 'replace',
        'rmtree', 'stat', 'walk')


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """gcs.root: the local directory behind gs://; gcs.calls: every epath call (local ones too), in order."""
  root, cwd = tmp_path / 'gcs', tmp_path / 'cwd'
  root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  calls = []

  def local(p):
    s = os.fspath(p)
    return f'{root}/{s[len("gs://"):]}' if s.startswith('gs://') else s

  def back(s):
    s = os.fspath(s)
    return 'gs://' + os.path.relpath(s, root) if s.startswith(f'{root}/') else s

  def fake(name):
    def fn(original, path, *args, **kwargs):
      calls.append((name, os.fspath(path)))
      out = original(local(path), *[local(a) if isinstance(a, str) else a for a in args], **kwargs)
      if name == 'glob':
        return [back(f) for f in out]
      if name == 'walk':
        return ((back(top), dirs, files) for top, dirs, files in out)
      return out
    return fn

  with mock.patch.object(gpath, '_is_tf_installed', lambda: False), testing.mock_epath(**{n: fake(n) for n in _FNS}):
    yield types.SimpleNamespace(root=root, calls=calls)
  assert not os.listdir(cwd), 'something wrote a gs:// path to the local filesystem'


def test_sources_list_and_read_gs_globs(gcs):
  (gcs.root / 'bucket/corpus/sub').mkdir(parents=True)
  (gcs.root / 'bucket/corpus/a.txt').write_text('first doc\nsecond doc\n')
  (gcs.root / 'bucket/corpus/b.txt').write_text('third doc\n')
  (gcs.root / 'bucket/corpus/sub/c.txt').write_text('not matched by *.txt\n')
  docs, stats = sources.read_text('gs://bucket/corpus/*.txt')
  assert docs == ['first doc', 'second doc', 'third doc'] and stats.files == 2
  assert ('glob', 'gs://bucket/corpus/*.txt') in gcs.calls and ('open', 'gs://bucket/corpus/b.txt') in gcs.calls
  assert len(sources.read_text('gs://bucket/corpus/*/c.txt')[0]) == 1
  (gcs.root / 'bucket/corpus/d.jsonl').write_text('\n'.join(json.dumps({'body': f'json doc {i}'}) for i in range(4)))
  train, _ = sources.read_documents('jsonl:gs://bucket/corpus/*.jsonl:body', validation_fraction=0.25)
  assert len(train) == 3 and all(d.startswith('json doc') for d in train)
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({'text': ['p one', 'p two']}), str(gcs.root / 'bucket/corpus/e.parquet'))
  assert sources.read_parquet('gs://bucket/corpus/e.parquet', 'text')[0] == ['p one', 'p two']
  with pytest.raises(FileNotFoundError, match=r"no file matches 'gs://bucket/corpus/x\*.txt'; check the path \(globs "
                                              r'like gs://'):
    sources.read_documents('text:gs://bucket/corpus/x*.txt')
  with pytest.raises(ValueError, match=r'\*\* \(any depth\) works for local files only'):
    sources.read_documents('text:gs://bucket/**/*.txt')
  with pytest.raises(ValueError, match="is not a source: use 'default'"):
    sources.read_documents('jsonl:gs://bucket/corpus/*.jsonl')  # no field: the ':' of gs:// is not one


def test_tokenizer_trains_into_a_gs_workdir_and_loads_from_it(gcs, tmp_path):
  texts = ['hello world, this is zoo.', 'The quick brown fox jumps over the lazy dog!'] * 20
  tok = tk.get_tokenizer('train', workdir='gs://bucket/wd', documents=lambda: texts, vocab_size=300,
                         num_sentinels=2)
  assert (gcs.root / 'bucket/wd/tokenizer.model').is_file() and tok.path == 'gs://bucket/wd/tokenizer.model'
  again = tk.get_tokenizer('train', workdir='gs://bucket/wd', documents=lambda: 1 / 0, vocab_size=300)
  assert again.encode('hello fox') == tok.encode('hello fox')
  assert tk.Tokenizer.load('gs://bucket/wd/tokenizer.model').vocab_size == tok.vocab_size
  with pytest.raises(FileNotFoundError, match='tokenizer file gs://bucket/none.model does not exist'):
    tk.Tokenizer.load('gs://bucket/none.model')
  tok.save(str(tmp_path / 'local.model'))  # local files go through epath too
  assert ('open', f'{tmp_path}/local.model.tmp') in gcs.calls


def test_workdir_files_on_gs(gcs, monkeypatch):
  from tensorboardX import record_writer
  monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, 'gs', record_writer.REGISTERED_FACTORIES['gs'])
  (gcs.root / 'bucket/wd').mkdir(parents=True)
  config = ml_collections.ConfigDict({'seed': 0, 'train': {'steps': 10, 'batch_size': 4}})
  loop._write_json('gs://bucket/wd/config.json', config.to_json_best_effort())
  assert json.loads((gcs.root / 'bucket/wd/config.json').read_text())['seed'] == 0
  loop.check_same_run(config, 'gs://bucket/wd')
  config.seed = 1
  with pytest.raises(ValueError, match=r'the checkpoints in gs://bucket/wd were made with other settings.*'
                                       r'--config.seed=0'):
    loop.check_same_run(config, 'gs://bucket/wd')
  writer = MetricWriter('gs://bucket/wd', tensorboard=True)
  writer.write(1, {'loss': 2.5})
  writer.write(2, {'loss': 2.0})
  writer.close()
  MetricWriter('gs://bucket/wd', tensorboard=False).write(3, {'loss': 1.5})  # a resumed run keeps the rows
  rows = [json.loads(line) for line in (gcs.root / 'bucket/wd/metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3]
  events = list((gcs.root / 'bucket/wd/tensorboard').iterdir())
  assert len(events) == 1 and events[0].name.startswith('events.out.tfevents') and events[0].stat().st_size > 100


def test_tensorboard_event_files_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed (2-3 s, as on Colab); zoo's writer does not, and a process
  that imports torch later gets it. The event file holds the scalars (read back by its record framing)."""
  import struct
  import sys
  ours = lambda k: k == 'torch' or k.startswith(('torch.', 'tensorboardX'))  # noqa: E731
  saved = {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}  # as in a fresh process; put back below
  try:
    writer = MetricWriter(str(tmp_path), tensorboard=True)
    assert 'tensorboardX' in sys.modules and 'torch' not in sys.modules
    writer.write(1, {'loss': 2.5})
    writer.write(2, {'loss': 2.0, 'note': 'text'})
    writer.close()
    from tensorboardX.proto import event_pb2
  finally:
    for k in [k for k in sys.modules if ours(k)]:
      del sys.modules[k]
    sys.modules.update(saved)
  data = next((tmp_path / 'tensorboard').glob('events.out.tfevents.*')).read_bytes()
  scalars = []
  while data:
    (n,) = struct.unpack('<Q', data[:8])
    event = event_pb2.Event.FromString(data[12:12 + n])
    scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    data = data[12 + n + 4:]
  assert scalars == [(1, 'loss', 2.5), (2, 'loss', 2.0)]


def test_checkpoints_and_lock_on_gs(gcs, caplog):
  for step in (3, 7):
    (gcs.root / f'bucket/wd/checkpoints/{step}/state').mkdir(parents=True)
  (gcs.root / 'bucket/wd/checkpoints/9.orbax-checkpoint-tmp').mkdir()  # an unfinished save
  assert ckpt.find_state('gs://bucket/wd') == ('gs://bucket/wd/checkpoints/7/state', 7)
  assert ckpt.find_state('gs://bucket/wd', 3) == ('gs://bucket/wd/checkpoints/3/state', 3)
  assert ckpt.find_state('gs://bucket/wd/checkpoints/3') == ('gs://bucket/wd/checkpoints/3/state', 3)
  with pytest.raises(FileNotFoundError, match=r'gs://bucket/wd has no checkpoint of step 5; it has steps \[3, 7\]'):
    ckpt.find_state('gs://bucket/wd', 5)

  held = lock_lib.WorkdirLock('gs://bucket/wd').acquire()
  assert json.loads((gcs.root / 'bucket/wd/LOCK').read_text())['pid'] == os.getpid()
  with pytest.raises(lock_lib.WorkdirLocked, match=rf'workdir gs://bucket/wd is in use by another run: pid '
                                                    rf'{os.getpid()} on .* since 20\d\d-.* \(lock gs://bucket/wd/LOCK\)'
                                                    r'.*delete gs://bucket/wd/LOCK, or it is taken over 24 h'):
    lock_lib.WorkdirLock('gs://bucket/wd').acquire()
  held.release()
  assert not (gcs.root / 'bucket/wd/LOCK').exists()
  stale = {'host': 'gone', 'pid': 12345, 'since': 'yesterday', 'time': time.time() - 25 * 3600}
  (gcs.root / 'bucket/wd/LOCK').write_text(json.dumps(stale))
  with caplog.at_level('INFO', logger='zoo'):
    with lock_lib.WorkdirLock('gs://bucket/wd'):
      assert json.loads((gcs.root / 'bucket/wd/LOCK').read_text())['pid'] == os.getpid()
  assert 'took over the lock of a run that ended without releasing it (pid 12345 on gone' in caplog.text
  assert not (gcs.root / 'bucket/wd/LOCK').exists()

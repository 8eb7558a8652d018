"""The first hour's safety nets: one writer per workdir (a killed writer's lock is taken over), non-finite steps
caught before anything bad is saved, every resume mismatch listed with flags that work, custom shapes, a user's
mistakes as one line without a traceback, and the run's closing summary."""
import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import checkpoint as ckpt
from zoo import cli, errors, optim
from zoo import config as config_lib
from zoo import train
from zoo.train import lock as lock_lib
from zoo.train import loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_train import ONE_LAYER, final_params, recipe  # noqa: E402


def small_run(tokenizer_path, **overrides):
  """A tiny GPT on one device: seconds to train."""
  return recipe('gpt', tokenizer_path, **{'mesh.devices': 1, 'train.batch_size': 4, 'train.seq_len': 32,
                                          'train.eval_batches': 1, 'optimizer.warmup_steps': 0, **overrides})


def test_a_second_writer_is_refused_naming_the_holder(tokenizer_path, tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path)):
    t = time.time()
    with pytest.raises(lock_lib.WorkdirLocked, match=rf'workdir {tmp_path} is in use by another run: pid '
                                                      rf'{os.getpid()} on .* since 20\d\d-'):
      train.train_and_evaluate(small_run(tokenizer_path), str(tmp_path))
    assert time.time() - t < 2  # refused before the tokenizer, the model or a compilation
    # as a command-line error: one line, exit status 2
    with pytest.raises(SystemExit) as e:
      cli.guard(train.train_and_evaluate, small_run(tokenizer_path), str(tmp_path))
    assert e.value.code == cli.EXIT_USER_ERROR
    # evaluation reads without the lock (and says there is nothing to evaluate yet, before building anything)
    with pytest.raises(FileNotFoundError, match=f'no checkpoint in {tmp_path}'):
      train.train_and_evaluate(small_run(tokenizer_path), str(tmp_path), mode='eval')
    assert time.time() - t < 3


def test_a_killed_writers_lock_is_taken_over(tmp_path, caplog):
  # a process takes the lock (loading only the lock module: no jax), then is killed with SIGKILL
  code = ('import importlib.util, sys, time; sys.path.insert(0, sys.argv[1]); '
          'spec = importlib.util.spec_from_file_location("lock", sys.argv[1] + "/zoo/train/lock.py"); '
          'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); '
          'm.WorkdirLock(sys.argv[2]).acquire(); print("held", flush=True); time.sleep(60)')
  proc = subprocess.Popen([sys.executable, '-c', code, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'held'
  with pytest.raises(lock_lib.WorkdirLocked, match=f'pid {proc.pid} on '):
    lock_lib.WorkdirLock(str(tmp_path)).acquire()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with caplog.at_level('INFO', logger='zoo'):
    held = lock_lib.WorkdirLock(str(tmp_path)).acquire()
  assert f'took over the lock of a run that ended without releasing it (pid {proc.pid}' in caplog.text
  assert json.loads((tmp_path / 'LOCK').read_text())['pid'] == os.getpid()
  held.release()
  assert (tmp_path / 'LOCK').read_text() == ''  # a clean end leaves nothing to take over


def _nan_from(monkeypatch, count: int):
  """The learning rate becomes NaN at optimizer step `count` (so step count + 1's update is not finite)."""
  make = optim.make_schedule
  monkeypatch.setattr(optim, 'make_schedule', lambda cfg, total: (
      lambda c: jnp.where(c >= count, jnp.nan, make(cfg, total)(c))))


class _Host:
  """A placement whose device values are host booleans."""
  fetch = staticmethod(lambda x: x)


def test_the_finite_watch_reads_each_step_one_late_and_all_before_a_save():
  watch = loop.FiniteWatch(_Host(), saved=None, directory='/w/checkpoints')
  for step in (1, 2, 3):
    watch.add(step, True)
  assert [s for s, _ in watch.pending] == [3]  # the newest step is not waited for
  watch.check()
  watch.saved_at(3)
  watch.add(4, True)
  watch.add(5, False)  # queued: read when step 6 is queued, or before anything is saved
  with pytest.raises(FloatingPointError, match=r'not finite at step 5: .*the last checkpoint, step 3 in '
                                               r'/w/checkpoints, is intact'):
    watch.check()
  fresh = loop.FiniteWatch(_Host(), saved=None, directory='/w/checkpoints')
  fresh.add(1, False)
  with pytest.raises(FloatingPointError, match=r'step 1: .*no checkpoint was saved before it'):
    fresh.add(2, True)


@pytest.mark.slow
@pytest.mark.parametrize('log_every,ckpt_every', [(10, 2), (1, 1), (3, 3)])
def test_a_non_finite_step_stops_the_run_before_it_is_saved(log_every, ckpt_every, tokenizer_path, tmp_path,
                                                            monkeypatch):
  _nan_from(monkeypatch, 4)  # step 5's update makes the parameters NaN
  c = small_run(tokenizer_path, **{'train.steps': 8, 'log.every': log_every, 'checkpoint.every': ckpt_every})
  saved = 4 // ckpt_every * ckpt_every
  with pytest.raises(FloatingPointError, match=rf'not finite at step 5: stopped without saving \(the last '
                                               rf'checkpoint, step {saved} in .*, is intact'):
    train.train_and_evaluate(c, str(tmp_path))
  checkpointer = ckpt.Checkpointer(str(tmp_path), async_save=False)
  assert checkpointer.latest_step() == saved  # nothing at or after the bad step
  checkpointer.close()
  params = jax.tree.leaves(final_params(tmp_path, saved))
  assert params and all(np.isfinite(np.asarray(p)).all() for p in params)
  assert not (tmp_path / 'LOCK').read_text()  # the lock was released on the way out


def test_a_resume_mismatch_lists_every_field_and_its_hint_works(tokenizer_path, tmp_path):
  before = small_run(tokenizer_path)
  (tmp_path / 'config.json').write_text(before.to_json_best_effort())
  after = small_run(tokenizer_path, **{'seed': 1, 'model.num_layers': 3, 'data.packing': 'pad'})
  with pytest.raises(ValueError) as e:
    loop.check_same_run(after, str(tmp_path))
  message = str(e.value)
  for field, now, was in (('seed', 1, 0), ('model.num_layers', 3, before.model.num_layers),
                          ('data.packing', "'pad'", "'concat'")):
    assert f'{field} is {now}, was {was}' in message
  flags = message.split('set them back: ')[1].split()
  assert sorted(flags) == sorted(['--config.seed=0', f'--config.model.num_layers={before.model.num_layers}',
                                  '--config.data.packing=concat'])
  # following the hint (each flag parsed to its field's type, as the command line does) makes it resumable
  for flag in flags:
    field, text = flag[len('--config.'):].split('=')
    *path, last = field.split('.')
    node = after
    for part in path:
      node = node[part]
    node[last] = type(node[last])(text)
  loop.check_same_run(after, str(tmp_path))


def test_custom_shapes_override_the_size(tokenizer_path):
  c = recipe('gpt', tokenizer_path, **{'mesh.devices': 1})
  config_lib.set_model(c, 'gpt', 'small')
  config_lib.override(c, {'model.num_layers': 4, 'model.embed_dim': 512, 'model.num_heads': 8,
                          'model.mlp_dim': 2048})
  run = train.build(c, '/nonexistent-unused')
  assert (run.model.num_layers, run.model.embed_dim, run.model.num_heads, run.model.mlp_dim) == (4, 512, 8, 2048)
  # 4 layers of 12 * 512^2 weights and the tied embeddings of 1024 ids (1000 rounded up): not small's 12 x 768
  assert 4 * 12 * 512 ** 2 + 1024 * 512 < run.n_params < 5 * 12 * 512 ** 2


@pytest.mark.slow
def test_a_custom_shape_trains(tokenizer_path, tmp_path):
  c = small_run(tokenizer_path, **{'train.steps': 6, 'optimizer.learning_rate': 3e-3, 'model.dropout_rate': 0.0})
  config_lib.set_model(c, 'gpt', 'small')
  config_lib.override(c, {'model.num_layers': 4, 'model.embed_dim': 512, 'model.num_heads': 8,
                          'model.mlp_dim': 2048, 'model.dropout_rate': 0.0})
  train.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  curve = [r['loss'] for r in rows if 'loss' in r]
  assert curve[-1] < curve[0] - 0.5


def test_a_finished_run_ends_with_its_summary(gpt_workdir):
  out = (pathlib.Path(gpt_workdir).parent / 'stdout.txt').read_text()  # what the fixture's run printed
  summary = out[out.index('done: steps 1-6 of 6 in '):].splitlines()
  eval_loss = json.load(open(os.path.join(gpt_workdir, 'eval.json')))['loss']
  assert summary[1].startswith('  train  loss ') and summary[2].startswith(f'  eval   loss {eval_loss:.4g} ')
  assert summary[3] == f'  checkpoints  {gpt_workdir}/checkpoints (step 6)'
  assert summary[4] == f'  metrics      {gpt_workdir}/metrics.jsonl, {gpt_workdir}/eval.json'
  assert len(summary) == 5  # no TensorBoard line: this run wrote none


@pytest.mark.slow
def test_user_errors_stay_one_line_when_zoo_is_installed_as_a_package(tmp_path):
  """zoo in site-packages (pip install ., Colab): a check in its own code is still the user's mistake."""
  import shutil
  site = tmp_path / 'lib' / 'site-packages'
  shutil.copytree(pathlib.Path(errors.__file__).parent, site / 'zoo',
                  ignore=shutil.ignore_patterns('__pycache__'))
  code = ('from zoo import config, errors\n'
          'c = config.base_config(); c.optimizer.b1 = 1.5\n'
          'try:\n  config.check(c)\nexcept ValueError as e:\n  print(errors.is_user_error(e), errors.__file__)')
  env = dict(os.environ, PYTHONPATH=str(site))
  out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  verdict, where = out.stdout.split()
  assert where.startswith(str(site)) and verdict == 'True'


def test_user_errors_are_one_line_and_library_bugs_keep_their_traceback():
  def zoo_check():
    raise ValueError('train.steps=-5 must be positive')
  assert errors.is_user_error(_raised(zoo_check))
  assert not errors.is_user_error(_raised(lambda: jnp.ones(3).reshape(2)))  # raised inside jax: a bug
  assert not errors.is_user_error(_raised(lambda: [][1]))  # an IndexError is never the user's
  assert errors.clean_message(AttributeError('\'stpes\'\nDid you mean "steps" instead of "stpes"?')) == (
      'stpes: Did you mean "steps" instead of "stpes"?')


def test_zoo_log_lines_go_to_the_stderr_of_the_moment():
  """quiet_logs' handler writes where sys.stderr points when a line is logged: a stream it saw before may have
  been replaced and closed since (a notebook cell's, redirect_stderr's, pytest's capsys)."""
  import contextlib
  import io
  import logging
  with contextlib.redirect_stderr(io.StringIO()) as first:
    cli.quiet_logs()
    logging.getLogger('zoo').warning('one')
  first.close()
  with contextlib.redirect_stderr(io.StringIO()) as second:
    logging.getLogger('zoo').warning('two')
    assert second.getvalue() == 'two\n'


def _raised(fn) -> BaseException:
  try:
    fn()
  except Exception as e:  # noqa: BLE001
    return e
  raise AssertionError('did not raise')


BAD_FLAGS = [
    (['--config.train.stpes=5'], r"--config.train.stpes: no field 'stpes' .*did you mean \"steps\""),
    (['--config.data.source=text:/nowhere/*.txt'], r"data.source: no file matches '/nowhere/\*.txt'"),
    (['--config.data.tokenizer=/nowhere.model'], r'tokenizer file /nowhere.model does not exist'),
    (['--config.mesh.data=3'], r'mesh.data x mesh.fsdp x mesh.tensor = 3 but there are 8 devices'),
    (['--config.train.steps=-5'], r'train.steps=-5 must be positive'),
    (['--config.model.dtype=float8'], r"model.dtype='float8'"),
    (['--config.optimizer.learning_rate=fast'], r'--config.optimizer.learning_rate=fast: could not convert'),
]


@pytest.mark.slow
@pytest.mark.parametrize('flags,message', BAD_FLAGS, ids=[f[0].split('=')[0][9:] for f, _ in BAD_FLAGS])
def test_train_py_mistakes_are_one_message_without_a_traceback(flags, message, tmp_path):
  env = dict(os.environ)  # conftest.py's JAX settings: 8 simulated devices
  env.pop('ZOO_DEBUG', None)
  proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), f'--config={ROOT}/configs/gpt.py:tiny',
                         f'--workdir={tmp_path}', *flags], env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr
  assert 'Traceback' not in proc.stderr + proc.stdout
  import re
  assert re.search(message, proc.stderr, flags=re.IGNORECASE), proc.stderr
  assert proc.stderr.count('error: ') == 1


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_to_the_losses_of_an_uninterrupted_run(tokenizer_path, tmp_path):
  import random
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  import kill_resume
  steps, one_layer = 10, (ONE_LAYER,)  # what is saved and restored has every kind of array
  once = subprocess.run(kill_resume.command(tmp_path / 'once', steps, tokenizer_path, one_layer),
                        env=kill_resume.environment(), capture_output=True, text=True, timeout=300)
  assert once.returncode == 0, once.stdout + once.stderr
  result = kill_resume.killed_run(tmp_path / 'killed', steps, 3, random.Random(0), tokenizer_path, one_layer)
  assert result['kills'] == 3 and result['kills_during_a_checkpoint_write'] >= 1, result
  reference = kill_resume.losses(tmp_path / 'once')
  assert sorted(reference) == list(range(1, steps + 1))
  assert kill_resume.losses(tmp_path / 'killed') == reference  # bit for bit, at every step


def _bad_values(rule) -> list:
  """Values a field with this rule must refuse: the wrong type, and each side of its bounds."""
  if rule[0] in ('int', 'float'):
    kind, low, high = rule
    values = ['abc', [1], None]
    values += [low - 1] if kind == 'int' and low is not None else []
    values += [low - 0.5, float('nan')] if kind == 'float' and low is not None else []
    values += [high + 1] if high is not None else []
    values += [1.5] if kind == 'int' else []
    return values
  return ['nope', 3, None]


def _unsafe(c):
  """A config that takes any value in any field (as a notebook's dict or a JSON file would give it)."""
  import ml_collections
  return ml_collections.ConfigDict(c.to_dict(), type_safe=False)


def _bad_inputs(tmp_path, tokenizer_path, workdir):
  """(name, config, workdir) for each mistake: every field's bad values, meshes, files, resumes."""
  base = lambda **o: _unsafe(small_run(tokenizer_path, **o))  # noqa: E731
  fresh = lambda name: str(tmp_path / 'fresh' / name)  # noqa: E731
  cases = []
  for field, rule in config_lib.RULES.items():
    for value in _bad_values(rule):
      c = base()
      config_lib.override(c, {field: value})
      cases.append((f'{field}={value!r}', c, fresh(field), f'{field}='))
  for field, value, expected in (
      ('mesh.data', 3, 'mesh.data x mesh.fsdp x mesh.tensor = 3 but there are 8 devices'),
      ('mesh.data', 0, 'mesh.data=0 must be -1'), ('mesh.data', -2, 'mesh.data=-2 must be -1'),
      ('mesh.fsdp', 16, "'fsdp': 16"), ('mesh.devices', 0, 'mesh.devices=0'),
      ('mesh.devices', 9, 'mesh.devices=9'), ('mesh.tensor', 3, "'tensor': 3"),
      ('train.batch_size', 12, 'train.batch_size=12'), ('train.microbatches', 3, 'train.microbatches=3'),
      ('model.num_heads', 5, 'model.num_heads=5'), ('model.vocab_size', 512, 'model.vocab_size is 512'),
      ('train.seq_len', 4096, 'train.seq_len=4096'), ('objective.name', 'mlm', "objective.name='mlm'"),
      ('objective.name', 'nope', "objective.name='nope'"), ('model.family', 'nope', "model.family='nope'"),
      ('task.name', 'nope', "task.name='nope'"), ('model.attention', 'nope', 'nope'),
      ('model.remat', 'nope', 'nope')):
    c = base(**{'mesh.devices': -1, 'train.batch_size': 16})
    config_lib.override(c, {field: value})
    cases.append((f'{field}={value!r}', c, fresh(f'{field}{value}'), expected))
  files = tmp_path / 'files'
  files.mkdir()
  model = pathlib.Path(tokenizer_path).read_bytes()
  for name, content in (('empty.model', b''), ('truncated.model', model[:len(model) // 2]),
                        ('random.model', np.random.default_rng(0).bytes(4096))):
    (files / name).write_bytes(content)
  (files / 'empty.txt').write_text('')
  (files / 'blank.txt').write_text('\n\n   \n')
  (files / 'bad.jsonl').write_text('{not json\n' * 3)
  (files / 'other.jsonl').write_text('{"body": "a b c"}\n' * 20)
  for field, value, expected in (
      ('data.tokenizer', str(files / 'missing.model'), 'missing.model'), ('data.tokenizer', str(files), 'files'),
      ('data.tokenizer', str(files / 'empty.model'), 'empty.model'),
      ('data.tokenizer', str(files / 'truncated.model'), 'truncated.model'),
      ('data.tokenizer', str(files / 'random.model'), 'random.model'),
      ('data.source', f'text:{files}/missing*.txt', 'missing*.txt'),
      ('data.source', f'text:{files / "empty.txt"}', 'empty.txt'),
      ('data.source', f'text:{files / "blank.txt"}', 'blank.txt'),
      ('data.source', f'jsonl:{files / "bad.jsonl"}:text', 'bad.jsonl'),
      ('data.source', f'jsonl:{files / "other.jsonl"}:text', 'other.jsonl'), ('data.source', 'nope:x', 'nope:x'),
      ('data.source', f'parquet:{files}/missing.parquet:text', 'missing.parquet'),
      ('task.init_from', str(files), 'files'), ('task.train', f'jsonl:{files / "missing.jsonl"}', 'missing.jsonl')):
    c = base()
    if field.startswith('task.'):
      config_lib.override(c, {'task.name': 'classification', 'model.family': 'bert', 'objective.name': 'mlm'})
    config_lib.override(c, {field: value})
    cases.append((f'{field}={value}', c, fresh(f'{field}-{len(cases)}'), expected))
  if os.geteuid() != 0:  # root writes anywhere
    readonly = tmp_path / 'readonly'
    readonly.mkdir()
    readonly.chmod(0o500)
    cases.append(('a read-only workdir', base(), str(readonly / 'run'), 'readonly'))
  cases.append(('a workdir inside a file', base(), str(files / 'empty.txt' / 'run'), 'empty.txt/run'))
  cases.append(('a workdir that is a file', base(), str(files / 'empty.txt'), 'is a file'))
  # resuming the trained workdir with settings that would not continue its run
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  for field, value in (('seed', 7), ('train.batch_size', 8), ('train.seq_len', 16), ('train.microbatches', 2),
                       ('data.packing', 'pad'), ('model.num_layers', 1), ('model.embed_dim', 32),
                       ('model.dropout_rate', 0.0), ('objective.name', 'causal_lm'), ('optimizer.decay_steps', 99),
                       ('train.steps', 7), ('data.vocab_size', 999), ('adapters.lora_rank', 2)):
    c = _unsafe(config_lib.override(importlib_config(saved), {}))
    config_lib.override(c, {field: value})
    if field == 'objective.name':
      c.model.family = 'glm'
    expected = 'decay_steps' if field == 'train.steps' else ('model.family' if field == 'objective.name' else field)
    cases.append((f'resume with {field}={value!r}', c, workdir, expected))
  return cases


def importlib_config(saved: dict):
  import ml_collections
  return ml_collections.ConfigDict(saved)


@pytest.mark.slow
def test_200_bad_configs_and_inputs_are_one_line_each_and_lose_no_checkpoint(gpt_workdir, tokenizer_path, tmp_path,
                                                                             capsys):
  import hashlib
  import shutil
  workdir = str(tmp_path / 'trained')
  shutil.copytree(gpt_workdir, workdir)
  (pathlib.Path(workdir) / 'LOCK').write_text('')

  def digest():
    files = sorted(p for p in pathlib.Path(workdir, 'checkpoints').rglob('*') if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
  before = digest()
  cases = _bad_inputs(tmp_path, tokenizer_path, workdir)
  assert len(cases) >= 200, len(cases)
  escaped = []
  for name, c, where, expected in cases:
    try:
      cli.guard(train.train_and_evaluate, c, where)
      escaped.append(f'{name}: accepted')
    except SystemExit as e:
      if e.code != cli.EXIT_USER_ERROR:
        escaped.append(f'{name}: exit {e.code}')
    except Exception as e:  # noqa: BLE001 (a traceback: what this test looks for)
      escaped.append(f'{name}: {type(e).__name__}: {e}'[:300])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    if len(lines) != 1 or expected not in lines[0] or 'Traceback' in err:
      escaped.append(f'{name}: expected one error naming {expected!r}, got {lines}')
  assert not escaped, '\n'.join(escaped)
  assert digest() == before  # every checkpoint file as it was


@pytest.mark.slow
def test_eval_mode_scores_with_the_workdirs_config_and_refuses_other_data(gpt_workdir, tmp_path):
  import shutil
  work = str(tmp_path / 'copy')
  shutil.copytree(gpt_workdir, work)  # the fixture's eval.json stays as its run wrote it
  trained = json.load(open(os.path.join(gpt_workdir, 'eval.json')))
  got = loop.train_and_evaluate(loop.saved_config(work), work, mode='eval')
  assert got['step'] == 6 and got['loss'] == pytest.approx(trained['loss'], rel=1e-5)
  other = loop.saved_config(work)
  other.data.source = 'text:/elsewhere/*.txt'
  with pytest.raises(ValueError, match=r"evaluating with these would score them on other data.*data.source is "
                                       r"'text:/elsewhere/\*.txt', was 'default'"):
    loop.train_and_evaluate(other, work, mode='eval')
  with pytest.raises(FileNotFoundError, match='config.json is missing: give --config'):
    loop.saved_config(str(tmp_path))
  saved = json.load(open(os.path.join(work, 'config.json')))  # a workdir of an older zoo: no data fields since added
  for field in ('prepare', 'prepared_dir', 'tokenizer_sample_chars'):
    del saved['data'][field]
  json.dump(saved, open(os.path.join(work, 'config.json'), 'w'))
  assert loop.train_and_evaluate(loop.saved_config(work), work, mode='eval')['loss'] == pytest.approx(
      trained['loss'], rel=1e-5)
  import zoo
  assert zoo.load(work).step == 6


def test_a_run_refused_before_it_wrote_anything_leaves_no_workdir(tmp_path):
  config = importlib.import_module('configs.gpt').get_config('tiny')
  config.data.source = f'text:{tmp_path}/missing/*.txt'
  work = tmp_path / 'new'
  with pytest.raises(FileNotFoundError, match='no file matches'):
    loop.train_and_evaluate(config, str(work))
  assert not work.exists()  # not a directory holding only LOCK
  (tmp_path / 'old').mkdir()
  (tmp_path / 'old' / 'notes.txt').write_text('mine')
  with pytest.raises(FileNotFoundError):
    loop.train_and_evaluate(config, str(tmp_path / 'old'))
  assert (tmp_path / 'old' / 'notes.txt').read_text() == 'mine'  # a workdir that was there stays

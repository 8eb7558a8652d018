"""Test setup: 8 simulated CPU devices, float32 matmuls at full precision, a persistent compilation cache, and
XLA settings that compile tiny programs fast. Set in the environment, so the processes the tests start (train.py
runs, notebook kernels) compile with the same settings and share the cache."""
import os
import pathlib
import subprocess
import sys

_CACHE = pathlib.Path(__file__).resolve().parent / '.jax_cache'


def _fast_compile_flags() -> str:
  """XLA:CPU's loop emitters compile the tests' tiny programs in 0.6-0.7x the time of its fusion emitters
  (jaxlib 0.10: 7.0 vs 10.2 s for a tiny BERT and GPT run, 541 vs 870 worker-seconds for a cold suite); later jaxlibs dropped the flag, and XLA aborts on a
  flag it does not know: a child process tries it, once per jaxlib version."""
  from importlib import metadata
  flag = '--xla_cpu_use_fusion_emitters=false'
  try:
    version = metadata.version('jaxlib')
  except metadata.PackageNotFoundError:
    return ''
  known = _CACHE / f'xla-flags-{version}.txt'
  try:
    if not known.exists():
      env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS='cpu')
      ok = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], env=env, capture_output=True,
                          timeout=120).returncode == 0
      _CACHE.mkdir(exist_ok=True)
      known.write_text(flag if ok else '')
    return known.read_text()
  except (OSError, subprocess.SubprocessError):  # no answer: XLA's defaults
    return ''


if 'XLA_FLAGS' not in os.environ:
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count=8 {_fast_compile_flags()}'.strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['JAX_DEFAULT_MATMUL_PRECISION'] = 'highest'
# Tiny models compile faster with fewer XLA passes (as the flax lm1b tests do).
os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'


import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # most test programs compile in < 0.1 s
# The processes the tests start (train.py runs, notebook kernels, the kill -9 and two-process runs) share the cache
# through the environment: a second train.py of the same recipe loads its programs instead of compiling them.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(_CACHE))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


@pytest.fixture
def key():
  return jax.random.key(0)


# ---------------------------------------------------------------------------- shared tiny runs
# Made once per test session and shared by every test that asks, on every xdist worker: the first worker to need
# one makes it under a file lock, the others wait for it and read it.


def _shared(tmp_path_factory, name: str, make) -> pathlib.Path:
  """A directory made once per session by make(directory), shared by the xdist workers."""
  import fcntl
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the workers' base directories sit side by side in this session's directory
  directory = root / f'shared-{name}'
  with open(root / f'shared-{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (directory / 'DONE').exists():
      directory.mkdir(exist_ok=True)
      make(directory)
      (directory / 'DONE').touch()
  return directory


@pytest.fixture(scope='session')
def tokenizer_path(tmp_path_factory):
  """A SentencePiece model of 1000 pieces (20 sentinels) on the default corpus."""
  from zoo.data import sources
  from zoo.data import tokenizer as tk

  def make(directory):
    docs, _ = sources.read_documents('default')
    tk.train_tokenizer(docs, vocab_size=1000, num_sentinels=20, path=str(directory / 'spm.model'))
  return str(_shared(tmp_path_factory, 'tokenizer', make) / 'spm.model')


def _pretrained(tmp_path_factory, recipe: str, overrides: dict) -> str:
  """The workdir of a tiny run of configs/<recipe>.py with these overrides, trained once per session."""
  import contextlib
  import importlib
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from zoo import config as config_lib
  from zoo import train
  c = config_lib.override(importlib.import_module(f'configs.{recipe}').get_config('tiny'), {
      'data.vocab_size': 1000, 'log.tensorboard': False, **overrides})

  def make(d):
    with open(d / 'stdout.txt', 'w') as out, contextlib.redirect_stdout(out):  # what train.py would have printed
      train.train_and_evaluate(c, str(d / 'workdir'))
  return str(_shared(tmp_path_factory, recipe, make) / 'workdir')


@pytest.fixture(scope='session')
def pretrained_bert(tmp_path_factory, tokenizer_path):
  """A tiny BERT pretrained (MLM) for 10 steps on 8 devices with data=4 x fsdp=2: its workdir."""
  return _pretrained(tmp_path_factory, 'bert', {'data.tokenizer': tokenizer_path, 'train.seq_len': 64,
                                                'train.batch_size': 16, 'train.steps': 10, 'train.eval_batches': 1,
                                                'mesh.fsdp': 2})


@pytest.fixture(scope='session')
def gpt_workdir(tmp_path_factory, tokenizer_path):
  """A tiny GPT trained for 6 steps on 8 devices with data=2 x fsdp=4: its workdir."""
  return _pretrained(tmp_path_factory, 'gpt', {'data.tokenizer': tokenizer_path, 'train.steps': 6,
                                               'train.batch_size': 16, 'train.seq_len': 32, 'train.eval_batches': 2,
                                               'mesh.fsdp': 4})


_LONGEST_FIRST = ('test_colab.py', 'test_train.py', 'test_finetune.py')  # the modules of the longest slow tests


def pytest_collection_modifyitems(items):
  """The slow tests first, the longest of them first (stable otherwise): the xdist workers then end together
  instead of one waiting while the other runs a long test that happened to come last."""
  def order(item):
    if item.get_closest_marker('slow') is None:
      return (1, 0)
    name = item.path.name
    return (0, _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST))
  items.sort(key=order)


def pytest_collection_finish(session):
  """Python's cyclic collector walked every object the imports made (jax, flax, optax, orbax, the test modules)
  hundreds of times per test as tracing allocated: 4-5% of a worker's time. Those objects move to a permanent
  generation, and a young collection waits for 50,000 allocations instead of 700 (0.4 s -> 0.08 s of collection
  in a tiny GPT run)."""
  import gc
  gc.collect()
  gc.freeze()
  gc.set_threshold(50_000, 50, 100)

"""Test setup: 8 simulated CPU devices, float32 matmuls at full precision, a persistent compilation cache."""
import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
# Tiny models compile faster with fewer XLA passes (as the flax lm1b tests do).
jax.config.update('jax_disable_most_optimizations', True)
_CACHE = pathlib.Path(__file__).resolve().parent / '.jax_cache'
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture
def key():
  return jax.random.key(0)


# ---------------------------------------------------------------------------- shared tiny runs
# Trained once per test process and shared by every test that asks; the tests that share a run are kept on one
# xdist worker (--dist=loadgroup, see pytest_collection_modifyitems), so each run is made once per suite.

_GROUPS = {'pretrained_bert': 'bert', 'gpt_workdir': 'gpt', 'hf_bert': 'hf_bert', 'hf_gpt': 'hf_gpt'}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    for fixture, group in _GROUPS.items():
      if fixture in getattr(item, 'fixturenames', ()):
        item.add_marker(pytest.mark.xdist_group(group))
        break


def _override(c, overrides: dict):
  for key, value in overrides.items():
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture(scope='session')
def tokenizer_path(tmp_path_factory):
  """A SentencePiece model of 1000 pieces (20 sentinels) on the default corpus."""
  from zoo.data import sources
  from zoo.data import tokenizer as tk
  docs, _ = sources.read_documents('default')
  path = str(tmp_path_factory.mktemp('tok') / 'spm.model')
  tk.train_tokenizer(docs, vocab_size=1000, num_sentinels=20, path=path)
  return path


@pytest.fixture(scope='session')
def pretrained_bert(tmp_path_factory, tokenizer_path):
  """A tiny BERT pretrained (MLM) for 10 steps on 8 devices with data=4 x fsdp=2: its workdir."""
  import importlib
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from zoo import train
  c = _override(importlib.import_module('configs.bert').get_config('tiny'), {
      'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'train.seq_len': 64, 'train.batch_size': 16,
      'train.steps': 10, 'train.eval_batches': 1, 'log.tensorboard': False, 'mesh.fsdp': 2})
  workdir = str(tmp_path_factory.mktemp('bert') / 'workdir')
  train.train_and_evaluate(c, workdir)
  return workdir


@pytest.fixture(scope='session')
def gpt_workdir(tmp_path_factory, tokenizer_path):
  """A tiny GPT trained for 6 steps on 8 devices with data=2 x fsdp=4: its workdir."""
  import importlib
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from zoo import train
  c = _override(importlib.import_module('configs.gpt').get_config('tiny'), {
      'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'train.steps': 6, 'train.batch_size': 16,
      'train.seq_len': 32, 'train.eval_batches': 2, 'log.tensorboard': False, 'mesh.fsdp': 4})
  workdir = str(tmp_path_factory.mktemp('gpt') / 'gpt')
  train.train_and_evaluate(c, workdir)
  return workdir

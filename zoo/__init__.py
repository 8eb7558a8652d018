"""zoo: a JAX/Flax model zoo for NLP pretraining.

The notebook API (zoo.api): `zoo.load(workdir)`, `zoo.evaluate(loaded)`, `zoo.generate(loaded, prompts)` and
`zoo.train_and_evaluate(config, workdir)`; imported on first use, so `import zoo` stays light.
"""
import glob
import importlib.util
import os

__version__ = '0.1.0'


def _no_tpu_probe() -> None:
  """libtpu (the [tpu] and [test] extras, for ahead-of-time compilation) on a host without TPU chips makes JAX
  probe for them at start-up and print a page of warnings: look for the other platforms only. JAX_PLATFORMS, when
  set, wins; zoo.aot still compiles for TPU topologies."""
  if 'JAX_PLATFORMS' in os.environ or glob.glob('/dev/accel*') or os.path.isdir('/dev/vfio'):
    return
  if importlib.util.find_spec('libtpu') is not None:
    os.environ['JAX_PLATFORMS'] = 'cuda,cpu'


_no_tpu_probe()

_API = ('load', 'evaluate', 'generate', 'train_and_evaluate', 'Loaded')


def __getattr__(name):
  if name in _API:
    from zoo import api
    return getattr(api, name)
  raise AttributeError(f'module zoo has no attribute {name!r}')

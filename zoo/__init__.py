"""zoo: a JAX/Flax model zoo for NLP pretraining.

The notebook API (zoo.api): `zoo.load(workdir)`, `zoo.evaluate(loaded)`, `zoo.generate(loaded, prompts)` and
`zoo.train_and_evaluate(config, workdir)`; imported on first use, so `import zoo` stays light.
"""
__version__ = '0.1.0'

_API = ('load', 'evaluate', 'generate', 'train_and_evaluate', 'Loaded')


def __getattr__(name):
  if name in _API:
    from zoo import api
    return getattr(api, name)
  raise AttributeError(f'module zoo has no attribute {name!r}')

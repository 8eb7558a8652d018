"""The Python API for notebooks and scripts: load a trained run, evaluate it, sample from it, train.

>>> import zoo  # doctest: +SKIP
>>> run = zoo.load('workdir/gpt')  # doctest: +SKIP
>>> zoo.evaluate(run)['loss']  # doctest: +SKIP
4.35
>>> zoo.generate(run, 'The module', max_new=20, temperature=0.8, top_p=0.9)  # doctest: +SKIP
[' is ...']

`zoo.generate` returns the new text only, without the prompt (as HF pipelines' return_full_text=False);
`full_text(run, prompt, text)` puts them together, and is what `python -m zoo.sample` prints.

`load` reads a workdir that train.py (or `train_and_evaluate`) wrote, or one of its checkpoints/<step>
directories, and places the parameters on the devices present (any count, any mesh), whatever topology trained
them. Only the parameters are read: no optimizer state.

It also reads a zoo model directory that `python -m zoo.convert import --hf_dir=HF --out=DIR` wrote (a
HuggingFace BERT / ALBERT / GPT-2 / T5 / BART with its tokenizer): `zoo.generate` then tokenizes with the HF tokenizer
(`zoo.data.hf_tokenizer.HFTokenizer`), stops at its eos (GPT-2's <|endoftext|>, T5's </s>), starts T5's decoder
at decoder_start_token_id (pad) and appends </s> to T5's input, as transformers does. There is no data to
evaluate such a model on: `zoo.evaluate` refuses it.

>>> gpt2 = zoo.load('imported/gpt2')  # doctest: +SKIP
>>> zoo.generate(gpt2, ['Hello, my name is'], max_new=10)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import ml_collections

from zoo import checkpoint as ckpt
from zoo import models
from zoo import paths
from zoo import generation as generation_lib
from zoo.generation import full_text, generate, generate_ids  # noqa: F401  (zoo.generate, ...)
from zoo import train
from zoo.data import hf_tokenizer as hft
from zoo.data import tokenizer as tk


@dataclasses.dataclass
class Loaded:
  """A trained model ready to use: `model.apply({'params': params}, ...)`, its tokenizer and config.

  For a zoo model directory imported from HuggingFace: tokenizer is an `HFTokenizer` (None when the directory
  has no tokenizer files), config holds model.family / model fields / source, step is 0 and run is None."""
  model: Any
  params: Any
  tokenizer: tk.Tokenizer | hft.HFTokenizer | None
  config: ml_collections.ConfigDict
  step: int
  run: train.Run | None  # what zoo.train builds from the config (mesh, objective or task, ...)
  generation: dict = dataclasses.field(default_factory=dict)  # zoo.generate's defaults (an HF generation_config)

  @property
  def family(self) -> str:
    return self.config.model.family


def load(path: str, *, step: int | None = None, mesh: dict | None = None, devices: int = -1) -> Loaded:
  """Restore a zoo workdir (its newest checkpoint, or `step`) or a checkpoint directory onto this host's devices,
  or read a zoo model directory (`python -m zoo.convert import`: zoo_model.json + params.safetensors).

  mesh: axis sizes, e.g. {'fsdp': 4} (default: data-parallel over every device, parameters replicated);
  devices: use only the first N devices (1: a single device).

  >>> loaded = load('workdir/gpt', devices=1)  # doctest: +SKIP
  >>> loaded.model.apply({'params': loaded.params}, jnp.ones((1, 8), jnp.int32)).shape  # doctest: +SKIP
  (1, 8, 2048)
  """
  from zoo import convert
  if paths.is_local(path):  # a zoo model directory (or its params file) is local
    model_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if (os.path.isdir(path) or os.path.isfile(path)) and os.path.isfile(os.path.join(model_dir, convert.ZOO_CONFIG)):
      return _load_model_dir(model_dir, step=step, mesh=mesh, devices=devices)
  state_dir, step = ckpt.find_state(path, step)  # a workdir or checkpoints/<step>: local or gs://...
  workdir = os.fspath(paths.path(state_dir).parents[2])
  config = train.loop.saved_config(workdir, missing='zoo.load reads workdirs that train.py wrote')
  config.task.init_from = ''  # the saved config already holds the model the task was fine-tuned from
  config.mesh.update({'data': -1, 'fsdp': 1, 'tensor': 1, 'devices': devices, **(mesh or {})})
  config.parallelism = 'jit'
  n = devices if devices > 0 else jax.device_count()
  ways = n // (config.mesh.fsdp * config.mesh.tensor) * config.mesh.fsdp if config.mesh.data == -1 else \
      config.mesh.data * config.mesh.fsdp
  if config.train.batch_size % max(ways, 1):  # evaluation batches must split over the data-parallel devices
    config.train.batch_size = ways * -(-config.train.batch_size // ways)
  run = train.build(config, workdir)
  abstract = ckpt.abstract_with_shardings(run.abstract_state.params, run.state_shardings.params)
  params = ckpt.restore_params(state_dir, abstract)
  return Loaded(model=run.model, params=params, tokenizer=run.tokenizer, config=run.config, step=step, run=run)


def _load_model_dir(directory: str, *, step: int | None, mesh: dict | None, devices: int) -> Loaded:
  """A zoo model directory (zoo_model.json + params.safetensors [+ hf_tokenizer/]) onto the devices: the
  parameters sharded by zoo's logical-axis rules over a ('data', 'fsdp', 'tensor') mesh (default: replicated
  over every device)."""
  from zoo import convert
  from zoo import parallel
  if step not in (None, 0):
    raise ValueError(f'{directory} is a zoo model directory (one set of parameters): it has no step {step}')
  model, params, family, fields = convert.load_zoo(directory)
  with open(os.path.join(directory, convert.ZOO_CONFIG)) as f:
    meta = json.load(f)
  sizes = {'data': -1, 'fsdp': 1, 'tensor': 1, **(mesh or {})}
  chosen = jax.devices()[:devices] if devices > 0 else jax.devices()
  device_mesh = parallel.make_mesh(sizes['data'], sizes['fsdp'], sizes['tensor'], devices=chosen)
  shardings = parallel.param_shardings(models.abstract_params(model), device_mesh)
  params = jax.device_put(params, shardings)
  config = ml_collections.ConfigDict({
      'model': {'family': family, 'size': meta.get('size', 'tiny'), **fields},
      'source': {'zoo_model_dir': os.path.abspath(directory), **meta.get('source', {})},
      'mesh': {**sizes, 'devices': devices}})
  tokenizer = convert.load_zoo_tokenizer(directory)
  if tokenizer is not None and tokenizer.vocab_size > model.vocab_size:
    warnings.warn(f'{directory}: the tokenizer has {tokenizer.vocab_size} ids but the model only '
                  f'{model.vocab_size} embeddings: ids >= {model.vocab_size} would be out of range', stacklevel=3)
  generation = convert.generation_config_copy(directory)
  return Loaded(model=model, params=params, tokenizer=tokenizer, config=config, step=0, run=None,
                generation=generation_lib.settings_from_hf(generation) if generation else {})


def evaluate(loaded: Loaded) -> dict:
  """The run's evaluation (validation loss, or the task's metric) with the loaded parameters.

  >>> evaluate(load('workdir/bert'))['mlm_accuracy']  # doctest: +SKIP
  0.31
  """
  if loaded.run is None:
    raise ValueError(f'zoo.evaluate needs a train.py workdir (its config names the evaluation data); this is a '
                     f'zoo model directory ({loaded.config.source.get("zoo_model_dir", "?")}, imported from '
                     f'HuggingFace) with no evaluation data: score it with model.apply on your own batches, or '
                     f'fine-tune it with train.py')
  return train.evaluate(loaded.run, loaded.params)


def train_and_evaluate(config, workdir: str, callback=None) -> dict:
  """Train (or resume) the run `config` describes in `workdir`, then evaluate: what train.py does.
  callback(step, metrics) sees every logged step (zoo.notebook.LiveProgress draws a progress bar and the loss).

  >>> from configs import gpt  # doctest: +SKIP
  >>> c = gpt.get_config('tiny'); c.train.steps = 50  # doctest: +SKIP
  >>> train_and_evaluate(c, '/tmp/zoo-gpt')['loss']  # doctest: +SKIP
  6.1
  """
  return train.train_and_evaluate(config, workdir, callback=callback)

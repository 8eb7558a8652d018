"""The Python API for notebooks and scripts: load a trained run, evaluate it, sample from it, train.

>>> import zoo  # doctest: +SKIP
>>> run = zoo.load('workdir/gpt')  # doctest: +SKIP
>>> zoo.evaluate(run)['loss']  # doctest: +SKIP
4.35
>>> zoo.generate(run, 'The module', max_new=20, temperature=0.8, top_p=0.9)  # doctest: +SKIP
['The module ...']

`load` reads a workdir that train.py (or `train_and_evaluate`) wrote, or one of its checkpoints/<step>
directories, and places the parameters on the devices present (any count, any mesh), whatever topology trained
them. Only the parameters are read: no optimizer state.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zoo import checkpoint as ckpt
from zoo import generate as gen
from zoo import trainer
from zoo.data import tokenizer as tk


@dataclasses.dataclass
class Loaded:
  """A trained model ready to use: `model.apply({'params': params}, ...)`, its tokenizer and config."""
  model: Any
  params: Any
  tokenizer: tk.Tokenizer
  config: ml_collections.ConfigDict
  step: int
  run: trainer.Run  # what zoo.trainer builds from the config (mesh, objective or task, ...)

  @property
  def family(self) -> str:
    return self.config.model.family


def load(path: str, *, step: int | None = None, mesh: dict | None = None, devices: int = -1) -> Loaded:
  """Restore a zoo workdir (its newest checkpoint, or `step`) or a checkpoint directory onto this host's devices.

  mesh: axis sizes, e.g. {'fsdp': 4} (default: data-parallel over every device, parameters replicated);
  devices: use only the first N devices (1: a single device).

  >>> loaded = load('workdir/gpt', devices=1)  # doctest: +SKIP
  >>> loaded.model.apply({'params': loaded.params}, jnp.ones((1, 8), jnp.int32)).shape  # doctest: +SKIP
  (1, 8, 2048)
  """
  state_dir, step = ckpt.find_state(path, step)
  workdir = os.path.dirname(os.path.dirname(os.path.dirname(state_dir)))
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{config_path} is missing: zoo.load reads workdirs that train.py wrote')
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.task.init_from = ''  # the saved config already holds the model the task was fine-tuned from
  config.mesh.update({'data': -1, 'fsdp': 1, 'tensor': 1, 'devices': devices, **(mesh or {})})
  config.mesh.rules = tuple(tuple(r) for r in config.mesh.rules)
  config.parallelism = 'jit'
  n = devices if devices > 0 else jax.device_count()
  ways = n // (config.mesh.fsdp * config.mesh.tensor) * config.mesh.fsdp if config.mesh.data == -1 else \
      config.mesh.data * config.mesh.fsdp
  if config.train.batch_size % max(ways, 1):  # evaluation batches must split over the data-parallel devices
    config.train.batch_size = ways * -(-config.train.batch_size // ways)
  run = trainer.build(config, workdir)
  abstract = ckpt.abstract_with_shardings(run.abstract_state.params, run.state_shardings.params)
  params = ckpt.restore_params(state_dir, abstract)
  return Loaded(model=run.model, params=params, tokenizer=run.tokenizer, config=run.config, step=step, run=run)


def evaluate(loaded: Loaded) -> dict:
  """The run's evaluation (validation loss, or the task's metric) with the loaded parameters.

  >>> evaluate(load('workdir/bert'))['mlm_accuracy']  # doctest: +SKIP
  0.31
  """
  return trainer.evaluate(loaded.run, loaded.params)


def _start_id(config) -> int:
  objective = config.task.get('pretrained_objective', '') or config.objective.name
  return tk.PAD if objective == 'span_corruption' else tk.BOS


def generate(loaded: Loaded, prompts: str | Sequence[str], *, max_new: int = 50, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, num_beams: int = 1, alpha: float = 0.6, seed: int = 0) -> list[str]:
  """Continue each prompt (GPT, the RNN LMs), answer it (T5, BART, the RNN encoder-decoder: beam search with
  num_beams > 1) or fill its blank (GLM: the text's '[MASK]', or one appended at the end). temperature 0 is
  greedy. Returns the generated texts (without the prompt).

  >>> generate(load('workdir/gpt'), ['def ', 'The '], max_new=10, temperature=0.7, top_k=40)  # doctest: +SKIP
  ['__init__(self', 'value of the']
  """
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  tok, model, params, family = loaded.tokenizer, loaded.model, loaded.params, loaded.family
  rng = jax.random.key(seed)
  stop = tk.EOP if family == 'glm' else tk.EOS
  if family in ('bert', 'albert'):
    raise ValueError(f'{family} is an encoder: it does not generate (use a gpt, glm, t5, bart or rnn workdir)')
  if num_beams > 1 and family not in ('t5', 'bart', 'rnn_seq2seq'):
    raise ValueError('beam search (num_beams > 1) is for the encoder-decoders (t5, bart, rnn_seq2seq)')
  if family in ('t5', 'bart', 'rnn_seq2seq'):
    ids = [tok.encode(p) + [tk.EOS] for p in prompts]
    src = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, x in enumerate(ids):
      src[i, :len(x)] = x
    if num_beams > 1:
      out, _ = gen.beam_search(model, params, jnp.asarray(src), max_new, num_beams, alpha, _start_id(loaded.config))
    else:
      out = gen.sample_seq2seq(model, params, jnp.asarray(src), rng, max_new, temperature, top_k, top_p,
                               _start_id(loaded.config))
    return [_text(tok, row, stop) for row in np.asarray(out)]
  results = [''] * len(prompts)
  encoded = [_glm_context(tok, p) if family == 'glm' else tok.encode(p) for p in prompts]
  by_length: dict[int, list[int]] = {}
  for i, x in enumerate(encoded):  # rows of equal length decode together (no padding inside a prompt)
    by_length.setdefault(len(x[0]) if family == 'glm' else len(x), []).append(i)
  for length, rows in by_length.items():
    rng, key = jax.random.split(rng)
    if family == 'glm':
      ctx = jnp.asarray([encoded[i][0] for i in rows], jnp.int32)
      out = gen.sample_glm(model, params, ctx, key, max_new, jnp.asarray([encoded[i][1] for i in rows], jnp.int32),
                           temperature, top_k, top_p)
    else:
      if length == 0:
        raise ValueError('an empty prompt: give at least one character')
      out = gen.sample_lm(model, params, jnp.asarray([encoded[i] for i in rows], jnp.int32), key, max_new,
                          temperature, top_k, top_p)
    for i, row in zip(rows, np.asarray(out)):
      results[i] = _text(tok, row, stop)
  return results


def _glm_context(tok, prompt: str) -> tuple[list[int], int]:
  before, found, after = prompt.partition('[MASK]')
  ids = tok.encode(before) + [tk.MASK] + (tok.encode(after) if found and after else [])
  return ids, len(tok.encode(before))


def _text(tok, row, stop: int) -> str:
  row = list(row)
  if stop in row:
    row = row[:row.index(stop)]
  return tok.decode([int(t) for t in row if t > tk.EOP or t == tk.UNK])


def train_and_evaluate(config, workdir: str, callback=None) -> dict:
  """Train (or resume) the run `config` describes in `workdir`, then evaluate: what train.py does.
  callback(step, metrics) sees every logged step (zoo.notebook.LiveProgress draws a progress bar and the loss).

  >>> from configs import gpt  # doctest: +SKIP
  >>> c = gpt.get_config('tiny'); c.train.steps = 50  # doctest: +SKIP
  >>> train_and_evaluate(c, '/tmp/zoo-gpt')['loss']  # doctest: +SKIP
  6.1
  """
  return trainer.train_and_evaluate(config, workdir, callback=callback)

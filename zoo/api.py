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
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zoo import checkpoint as ckpt
from zoo import contract
from zoo import decoding as gen
from zoo import models
from zoo import paths
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
  config_path = paths.join(workdir, 'config.json')
  if not paths.is_file(config_path):
    raise FileNotFoundError(f'{config_path} is missing: zoo.load reads workdirs that train.py wrote')
  config = ml_collections.ConfigDict(json.loads(paths.path(config_path).read_text()))
  config.task.init_from = ''  # the saved config already holds the model the task was fine-tuned from
  config.mesh.update({'data': -1, 'fsdp': 1, 'tensor': 1, 'devices': devices, **(mesh or {})})
  config.mesh.rules = tuple(tuple(r) for r in config.mesh.rules)
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
  return Loaded(model=model, params=params, tokenizer=tokenizer, config=config, step=0, run=None)


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


def generate(loaded: Loaded, prompts: str | Sequence[str], *, max_new: int = 50, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, num_beams: int = 1, alpha: float = 0.6, seed: int = 0) -> list[str]:
  """Continue each prompt (GPT, the RNN LMs), answer it (T5, BART, the RNN encoder-decoder: beam search with
  num_beams > 1) or fill its blank (GLM: the text's '[MASK]', or one appended at the end). temperature 0 is
  greedy; ids past the tokenizer (the embedding's padding rows) are never drawn.

  Returns the new text of each prompt, without the prompt. A continuation (or a blank) is decoded together with
  the text before it, so it keeps its leading space: `prompt + text` is the decoded prompt and continuation
  (exactly, whenever the prompt's tokens decode back to the prompt), and `full_text` (what `python -m zoo.sample`
  prints) is `prompt + text`. An answer is decoded on its own.

  >>> generate(load('workdir/gpt'), ['def ', 'The '], max_new=10, temperature=0.7, top_k=40)  # doctest: +SKIP
  ['__init__(self', 'value of the']
  """
  tok = loaded.tokenizer
  if isinstance(tok, hft.HFTokenizer):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    rows = generate_ids(loaded, prompts, max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                        num_beams=num_beams, alpha=alpha, seed=seed)
    if models.is_encoder_decoder(loaded.family):
      return [tok.decode(row, skip_special_tokens=True) for row in rows]
    return [_continuation(tok.decode, p, tok.encode(p, add_special_tokens=True), row) for p, row in zip(prompts, rows)]
  if tok is None:
    raise ValueError(f'this {loaded.family} model has no tokenizer (its zoo model directory has no '
                     f'hf_tokenizer/ that zoo can read): tokenize yourself and use zoo.decoding.sample_lm / '
                     f'sample_seq2seq on the ids')
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  model, params, family = loaded.model, loaded.params, loaded.family
  rng = jax.random.key(seed)
  _check_family(family, num_beams)
  c = contract.for_config(loaded.config)  # what the model was trained on: start, stop, source [EOS], GLM's layout
  glm, stop, n = c.blank_infilling, c.stop_id, tok.vocab_size
  if c.encoder_decoder:
    ids = [contract.source(tok.encode(p)) for p in prompts]
    src = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, x in enumerate(ids):
      src[i, :len(x)] = x
    if num_beams > 1:
      out, _ = gen.beam_search(model, params, jnp.asarray(src), max_new, num_beams, alpha, c.start_id, stop,
                               vocab_size=n)
    else:
      out = gen.sample_seq2seq(model, params, jnp.asarray(src), rng, max_new, temperature, top_k, top_p,
                               c.start_id, stop, vocab_size=n)
    return [_text(tok, row, stop) for row in np.asarray(out)]
  results = [''] * len(prompts)
  encoded = [_glm_context(tok, p) if glm else tok.encode(p) for p in prompts]
  by_length: dict[int, list[int]] = {}
  for i, x in enumerate(encoded):  # rows of equal length decode together (no padding inside a prompt)
    by_length.setdefault(len(x[0]) if glm else len(x), []).append(i)
  for length, rows in by_length.items():
    rng, key = jax.random.split(rng)
    if glm:
      ctx = jnp.asarray([encoded[i][0] for i in rows], jnp.int32)
      out = gen.sample_glm(model, params, ctx, key, max_new, jnp.asarray([encoded[i][1] for i in rows], jnp.int32),
                           temperature, top_k, top_p, stop, vocab_size=n)
    else:
      if length == 0:
        raise ValueError('an empty prompt: give at least one character')
      out = gen.sample_lm(model, params, jnp.asarray([encoded[i] for i in rows], jnp.int32), key, max_new,
                          temperature, top_k, top_p, stop, vocab_size=n)
    for i, row in zip(rows, np.asarray(out)):
      if glm:  # the blank after the text before the [MASK]
        ids, at = encoded[i]
        results[i] = _text(tok, row, stop, prompts[i].partition('[MASK]')[0], ids[:at])
      else:
        results[i] = _text(tok, row, stop, prompts[i], encoded[i])
  return results


def full_text(loaded: Loaded, prompt: str, text: str) -> str:
  """A prompt with what `generate` returned for it, as `python -m zoo.sample` prints it: prompt + text for the
  decoders, the prompt with its [MASK] filled for GLM (prompt + text when it has none), 'prompt -> text' for the
  encoder-decoders (an answer, not a continuation)."""
  if models.is_encoder_decoder(loaded.family):
    return f'{prompt} -> {text}'
  if models.kind(loaded.family) == models.BLANK_INFILLING:
    before, _, after = prompt.partition('[MASK]')
    return before + text + after
  return prompt + text


def _check_family(family: str, num_beams: int) -> None:
  if not models.generates(family):
    raise ValueError(f'{family} is an encoder: it does not generate (use a workdir of '
                     f'{", ".join(f for f in models.FAMILIES if models.generates(f))})')
  if num_beams > 1 and not models.is_encoder_decoder(family):
    raise ValueError(f'beam search (num_beams > 1) is for the encoder-decoders '
                     f'({", ".join(models.families_of(models.ENCODER_DECODER))})')


def generate_ids(loaded: Loaded, prompts: str | Sequence[str], *, max_new: int = 50, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, num_beams: int = 1, alpha: float = 0.6,
                  seed: int = 0) -> list[list[int]]:
  """`generate` with a HuggingFace tokenizer, before decoding: the new token ids of each prompt, up to (not
  including) the tokenizer's eos, never an id past the tokenizer. Prompts are encoded as `hf_tokenizer(prompt)`
  does (special tokens added: T5's </s>, appended if the tokenizer does not add it); T5's decoder starts at
  decoder_start_id (pad)."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  tok, model, params, family = loaded.tokenizer, loaded.model, loaded.params, loaded.family
  _check_family(family, num_beams)
  eos = tok.eos_id if tok.eos_id is not None else -1  # -1: never stop early
  rng = jax.random.key(seed)
  encoded = [tok.encode(p, add_special_tokens=True) for p in prompts]

  def cut(row):
    row = [int(t) for t in row]
    return row[:row.index(eos)] if eos in row else row
  if models.is_encoder_decoder(family):
    if tok.eos_id is not None:
      encoded = [x if x and x[-1] == tok.eos_id else x + [tok.eos_id] for x in encoded]
    start = tok.decoder_start_id if tok.decoder_start_id is not None else (tok.pad_id or 0)
    src = np.full((len(encoded), max(map(len, encoded))), getattr(model, 'pad_id', 0), np.int32)  # masked
    for i, x in enumerate(encoded):
      src[i, :len(x)] = x
    if num_beams > 1:
      out, _ = gen.beam_search(model, params, jnp.asarray(src), max_new, num_beams, alpha, start, eos,
                               vocab_size=tok.vocab_size)
    else:
      out = gen.sample_seq2seq(model, params, jnp.asarray(src), rng, max_new, temperature, top_k, top_p, start,
                               eos, vocab_size=tok.vocab_size)
    return [cut(row) for row in np.asarray(out)]
  results: list[list[int]] = [[] for _ in prompts]
  by_length: dict[int, list[int]] = {}
  for i, x in enumerate(encoded):  # rows of equal length decode together (no padding inside a prompt)
    if not x:
      raise ValueError('an empty prompt: give at least one character')
    by_length.setdefault(len(x), []).append(i)
  for rows in by_length.values():
    rng, key = jax.random.split(rng)
    out = gen.sample_lm(model, params, jnp.asarray([encoded[i] for i in rows], jnp.int32), key, max_new,
                        temperature, top_k, top_p, eos, vocab_size=tok.vocab_size)
    for i, row in zip(rows, np.asarray(out)):
      results[i] = cut(row)
  return results


def _glm_context(tok, prompt: str) -> tuple[list[int], int]:
  """GLM's part A for a prompt: its text with its '[MASK]' (or one appended), and where the [MASK] is."""
  before, found, after = prompt.partition('[MASK]')
  return contract.glm_prompt(tok.encode(before), tok.encode(after) if found and after else [])


def _text(tok, row, stop: int, prompt: str = '', prompt_ids: Sequence[int] = ()) -> str:
  """The text of a generated row of zoo ids, up to `stop`, without the special tokens ([UNK] kept), after the
  prompt (see `_continuation`). Ids past the tokenizer cannot be here: the decoding functions mask them."""
  row = [int(t) for t in row]
  if stop in row:
    row = row[:row.index(stop)]
  return _continuation(tok.decode, prompt, prompt_ids, [t for t in row if t > tk.EOP or t == tk.UNK])


def _continuation(decode, prompt: str, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
  """The text `ids` add after `prompt` (whose tokens are prompt_ids): decoded together with the prompt's ids,
  then cut after the prompt, so that a continuation that starts a word keeps its space (SentencePiece drops the
  leading '▁' of a text decoded on its own). prompt + result == decode(prompt_ids + ids) whenever that decoding
  starts with the prompt; otherwise (a prompt that does not round-trip) the text after the decoded prompt."""
  if not len(prompt_ids):
    return decode(list(ids))
  whole = decode([*prompt_ids, *ids])
  if whole.startswith(prompt):
    return whole[len(prompt):]
  head = decode(list(prompt_ids))
  return whole[len(head):] if whole.startswith(head) else decode(list(ids))


def train_and_evaluate(config, workdir: str, callback=None) -> dict:
  """Train (or resume) the run `config` describes in `workdir`, then evaluate: what train.py does.
  callback(step, metrics) sees every logged step (zoo.notebook.LiveProgress draws a progress bar and the loss).

  >>> from configs import gpt  # doctest: +SKIP
  >>> c = gpt.get_config('tiny'); c.train.steps = 50  # doctest: +SKIP
  >>> train_and_evaluate(c, '/tmp/zoo-gpt')['loss']  # doctest: +SKIP
  6.1
  """
  return train.train_and_evaluate(config, workdir, callback=callback)

"""From a config to a `Run`: tokenizer, model, objective or task, optimizer, devices and the state's shape and
shardings. Nothing compiles here, so a configuration that cannot run is refused in seconds."""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from zoo import config as config_lib
from zoo import finetune, models, objectives, optim, paths, registry
from zoo.data import cache, mixture, prepared, sources, specials
from zoo.data import tokenizer as tk
from zoo.train import inputs as inputs_lib
from zoo.train import metrics as metrics_lib
from zoo.train import placement as placement_lib
from zoo.train import pmap as pmap_lib
from zoo.train import state as state_lib

log = logging.getLogger('zoo')


@dataclasses.dataclass
class Run:
  """Everything built from a config: what the train and eval loops need."""
  config: ml_collections.ConfigDict
  workdir: str
  tokenizer: tk.Tokenizer
  model: nn.Module
  objective: objectives.Objective  # a pretraining objective or a fine-tuning task (zoo.tasks.Task)
  inputs: inputs_lib.Inputs  # where batches come from: the corpus, or the task's examples
  tx: optax.GradientTransformation
  schedule: Callable
  placement: placement_lib.Placement  # jit over a mesh, or pmap: how state and batches meet the devices
  abstract_state: Any  # unboxed ShapeDtypeStructs
  state_shardings: Any  # NamedShardings (jit) or None (pmap)
  n_params: int
  flops_per_token: float
  peak_flops: float
  frozen: Any = None  # bools like params: True where a parameter stays frozen (LoRA / prefix tuning)

  @property
  def mesh(self):
    return self.placement.mesh

  @property
  def devices(self) -> list:
    return self.placement.devices

  @property
  def records(self) -> dict | None:
    """A fine-tuning task's examples by split (None when pretraining)."""
    return getattr(self.inputs, 'records', None)

  @property
  def local_batch(self) -> int:
    return self.config.train.batch_size // jax.process_count()


def maybe_initialize_distributed(config) -> None:
  """Join the other processes of a multi-host run: TPU pods detect themselves; elsewhere name the coordinator
  (config.distributed.* or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
  d = config.distributed
  address = d.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  if jax.distributed.is_initialized():
    return
  if address:
    num = d.num_processes or int(os.environ.get('JAX_NUM_PROCESSES', 0))
    pid = d.process_id if d.process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', -1))
    if num <= 0 or pid < 0:
      raise ValueError('distributed.coordinator_address is set: also set distributed.num_processes and '
                       'distributed.process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)')
    jax.distributed.initialize(address, num_processes=num, process_id=pid)
  elif len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    jax.distributed.initialize()


def source(config, workdir: str | None = None) -> str:
  """data.source, or with data.prepare the same source as its prepared directories (zoo.data.cache: prepared the
  first time, with a progress bar; later runs find them)."""
  d = config.data
  if not d.get('prepare', False) or config.task.name:  # workdirs of older zoo have no data.prepare
    return d.source
  kept = paths.join(workdir, 'tokenizer.model') if workdir else None
  cls = objectives.OBJECTIVES.get(config.objective.name)  # not memoized: an edited file is seen in a notebook
  dirs = cache.ensure(d, sentences=bool(getattr(cls, 'needs_sentences', False)), kept_tokenizer=kept,
                      shard=jax.process_index(), num_shards=jax.process_count())
  if not mixture.is_mixture(d.source):
    return f'{prepared.PREFIX}{dirs[d.source]}'
  parts = mixture.parse(d.source)
  return mixture.PREFIX + ','.join(f'{prepared.PREFIX}{dirs[p.source]}@{p.weight!r}' for p in parts)


def read(config, split: str):
  """The documents of a split (read once per process and kept: the tokenizer and the loop share them)."""
  d = config.data
  return _read(source(config), split, d.data_dir or None, d.validation_fraction, d.text_mode, d.max_doc_chars)


@functools.lru_cache(maxsize=4)
def _read(source, split, data_dir, validation_fraction, text_mode, max_doc_chars):
  docs, stats = sources.read_documents(source, split=split, data_dir=data_dir,
                                       validation_fraction=validation_fraction, text_mode=text_mode,
                                       max_doc_chars=max_doc_chars)
  log.info('%s', stats.report())
  return docs


def prepared_tokenizer(config, workdir: str) -> tk.Tokenizer | None:
  """The tokenizer of a prepared data.source (or of a mixture's prepared parts, which must share one), kept as
  workdir/tokenizer.model like a trained one; None for sources of text."""
  d, spec = config.data, source(config, workdir)
  parts = [p.source for p in mixture.parse(spec)] if mixture.is_mixture(spec) else [spec]
  dirs = [prepared.directory_of(p) for p in parts if prepared.is_prepared(p)]
  if not dirs:
    return None
  hf_dirs = [prepared.hf_tokenizer_dir(x) for x in dirs]
  if any(hf_dirs):
    return _prepared_hf_tokenizer(config, dirs, hf_dirs)
  toks = [tk.Tokenizer(prepared.tokenizer_proto(x), x) for x in dirs]
  for x, t in zip(dirs[1:], toks[1:]):
    if t.model_proto != toks[0].model_proto:
      raise ValueError(f'data.source: prepared:{dirs[0]} and prepared:{x} were made with different tokenizers; a '
                       f'mixture trains one model on one vocabulary: prepare them with the same --tokenizer')
  tok = toks[0]
  if d.tokenizer != 'train' and tk.Tokenizer.load(d.tokenizer).model_proto != tok.model_proto:
    raise ValueError(f'data.tokenizer={d.tokenizer} is not the tokenizer prepared:{dirs[0]} was made with: leave '
                     f'data.tokenizer unset (the run takes the prepared one), or prepare the corpus with this one')
  path = paths.join(workdir, 'tokenizer.model')
  if paths.path(path).exists():
    if paths.path(path).read_bytes() != tok.model_proto:
      raise ValueError(f'{path} is not the tokenizer prepared:{dirs[0]} was made with: this workdir belongs to '
                       f'another run; use a new --workdir')
  elif jax.process_index() == 0:
    paths.path(workdir).mkdir(parents=True, exist_ok=True)
    tok.save(path)
  return tk.Tokenizer(tok.model_proto, path)


def _vocab_files(directory: str) -> dict:
  from zoo import convert
  inner = os.path.join(directory, convert.HF_TOKENIZER_DIR)  # a zoo model directory keeps them there
  directory = inner if os.path.isdir(inner) else directory
  return {n: paths.path(directory).joinpath(n).read_bytes() for n in convert.TOKENIZER_FILES
          if paths.is_file(paths.join(directory, n))}


def _prepared_hf_tokenizer(config, dirs: list, hf_dirs: list):
  """The HuggingFace tokenizer prepared corpora were made with: one for all of them, and data.tokenizer's (the
  init_from model's) when that is set."""
  from zoo.data import hf_tokenizer
  if not all(hf_dirs) or any(_vocab_files(h) != _vocab_files(hf_dirs[0]) for h in hf_dirs[1:]):
    raise ValueError(f'data.source: prepared:{dirs[0]} and the other prepared sources were made with different '
                     f'tokenizers; a mixture trains one model on one vocabulary: prepare them with the same --tokenizer')
  tok_spec = os.path.expanduser(config.data.tokenizer)
  if config.data.tokenizer != 'train':
    same = os.path.isdir(tok_spec) and all(_vocab_files(tok_spec).get(n) == b
                                           for n, b in _vocab_files(hf_dirs[0]).items())
    if not same:
      raise ValueError(f'data.tokenizer={config.data.tokenizer} is not the tokenizer prepared:{dirs[0]} was made '
                       f'with ({hf_dirs[0]}): prepare the corpus with --tokenizer=<the model\'s HF directory>')
    return hf_tokenizer_of(tok_spec)  # with the model's config.json: the ids its files leave open
  return hf_tokenizer.HFTokenizer.load(hf_dirs[0])


def load_tokenizer(config, workdir: str) -> tk.Tokenizer:
  """data.tokenizer: zoo's SentencePiece model (trained once into the workdir, or a .model file), or the
  HuggingFace tokenizer of a zoo model directory or of a tokenizer directory (`zoo.data.hf_tokenizer`)."""
  d = config.data
  tok = prepared_tokenizer(config, workdir)
  if tok is not None:
    return tok
  if d.tokenizer != 'train' and os.path.isdir(os.path.expanduser(d.tokenizer)):
    return hf_tokenizer_of(os.path.expanduser(d.tokenizer))
  get = lambda: tk.get_tokenizer(  # noqa: E731
      d.tokenizer, workdir=workdir, vocab_size=d.vocab_size, model_type=d.tokenizer_type,
      num_sentinels=d.num_sentinels, documents=lambda: read(config, 'train'), source=d.source,
      sample_chars=d.get('tokenizer_sample_chars'))  # None (older workdirs): every document
  if jax.process_count() == 1 or d.tokenizer != 'train':
    return get()
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    tok = get()  # one process trains it; the others read the file it wrote
  multihost_utils.sync_global_devices('zoo tokenizer')
  return tok if jax.process_index() == 0 else get()


def hf_tokenizer_of(directory: str):
  """The HuggingFace tokenizer of a zoo model directory (its hf_tokenizer/) or of a tokenizer directory."""
  from zoo import convert
  from zoo.data import hf_tokenizer
  if os.path.isfile(os.path.join(directory, convert.ZOO_CONFIG)):
    tok = convert.load_zoo_tokenizer(directory)
    if tok is None:
      raise FileNotFoundError(f'data.tokenizer={directory}: this zoo model directory has no tokenizer files '
                              f'({convert.HF_TOKENIZER_DIR}/): set data.tokenizer to the tokenizer it was trained with')
    return tok
  return hf_tokenizer.HFTokenizer.load(directory)


def _dtype(name: str):
  return {'float32': jax.numpy.float32, 'bfloat16': jax.numpy.bfloat16, 'float16': jax.numpy.float16}[name]


def make_objective(config, tok: tk.Tokenizer) -> objectives.Objective:
  """The pretraining objective the config names; the fields it takes from the tokenizer are filled in."""
  cls = objectives.OBJECTIVES.get(config.objective.name)
  wanted = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
  fields = {k: v for k, v in config.objective.items() if k != 'name'}
  if 'num_sentinels' in wanted:
    fields['num_sentinels'] = tok.num_sentinels
  if 'word_starts' in wanted:
    fields['word_starts'] = tok.word_starts(np.arange(tok.vocab_size))
  ids = specials.of(tok)
  if ids.source != 'zoo' and cls is not None and not cls.any_tokenizer:
    raise ValueError(f'objective.name={config.objective.name!r} with the HuggingFace tokenizer {ids.source}: zoo '
                     f'trains {", ".join(sorted(n for n, c in objectives.OBJECTIVES.items() if c.any_tokenizer))} '
                     f"with a model's own tokenizer so far; use one of those, or zoo's tokenizer "
                     f"(data.tokenizer='train')")
  objective = objectives.make(config.objective.name, vocab_size=tok.vocab_size, num_special=ids.first_ordinary,
                              specials=ids, **fields)
  for name in objective.needs_tokens:
    ids.need(name, f'objective.name={config.objective.name!r}')
  return objective


def _fused(config, devices) -> bool:
  """Whether attention runs in a fused kernel (for the FLOPs count: they skip a causal mask's masked blocks)."""
  m = config.model
  return devices[0].platform in ('tpu', 'gpu') and m.get('attention', 'auto') != 'xla' and m.dropout_rate == 0


def build(config, workdir: str, devices=None) -> Run:
  """Tokenizer, model, objective, optimizer, mesh and the state's shape and shardings: no compilation.

  devices: the mesh's devices (default: those present, or the first mesh.devices of them); zoo.aot passes a TPU
  topology's to compile for chips that are not attached.
  """
  config = finetune.prepare_config(config, workdir)
  config_lib.check(config, jax.process_count())
  # the mesh, the batch's split over it and the task's family are checked before a tokenizer is trained (seconds
  # on the default corpus, minutes on a real one): a mistake there is reported at once
  placement = pmap_lib.Pmap(config) if config.parallelism == 'pmap' else placement_lib.Jit(config, devices)
  if config.task.name:
    finetune.check_task_family(config, config.model.family)
  tok = load_tokenizer(config, workdir)
  m = config.model
  family = models.get_family(m.family)
  vocab = m.vocab_size if m.vocab_size > 0 else 128 * math.ceil(tok.vocab_size / 128)
  fields = {k: v for k, v in m.items() if k not in ('family', 'size')}
  fields.update(vocab_size=vocab, dtype=_dtype(m.dtype))
  if config.task.name:
    objective, records = finetune.make_task(config, tok, m.family)
    inputs = inputs_lib.TaskInputs(objective, records, tok, config)
  else:
    objective = make_objective(config, tok)
    registry.check_family(objective, m.family, f'objective.name={config.objective.name!r}', pretraining=True)
    inputs = inputs_lib.CorpusInputs(config, read)
  fields.update(objective.model_fields())
  adapters = finetune.make_adapters(config)
  if adapters is not None:
    if family.recurrent:
      raise ValueError('adapters (LoRA, prefix tuning) adapt attention and MLP layers: the RNN models have none')
    fields['adapters'] = adapters
  model = models.get_model(m.family, m.size, **fields)
  tok.check_vocab_size(vocab)
  max_len = getattr(model, 'max_len', None)
  if max_len is not None and getattr(model, 'position', 'learned') == 'learned' and config.train.seq_len > max_len:
    raise ValueError(f'train.seq_len={config.train.seq_len} is longer than model.max_len={max_len} (learned '
                     f'positions): lower train.seq_len or raise model.max_len')
  example = state_lib.dummy_example(objective, config.train.seq_len)
  frozen = None
  if adapters is not None:
    shapes = nn.unbox(jax.eval_shape(lambda r: model.init({'params': r, 'dropout': r}, **objective.inputs(example),
                                                           deterministic=True), jax.random.key(0))['params'])
    frozen = finetune.frozen_mask(shapes, adapters)
  tx, schedule = optim.make_optimizer(config.optimizer, config.train.steps, frozen)

  boxed = jax.eval_shape(state_lib.init_fn(model, objective, tx, example), jax.random.key(0))  # shapes only
  abstract = nn.unbox(boxed)
  shardings = placement.state_shardings(boxed, abstract, tx, tuple(config.mesh.rules))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  return Run(config=config, workdir=workdir, tokenizer=tok, model=model, objective=objective, inputs=inputs, tx=tx,
             schedule=schedule, placement=placement, abstract_state=abstract, state_shardings=shardings,
             n_params=n_params, flops_per_token=metrics_lib.flops_per_token(
                 model, abstract.params, config.train.seq_len, objective, _fused(config, placement.devices)),
             peak_flops=metrics_lib.peak_flops(config, placement.devices), frozen=frozen)

"""train_and_evaluate: the one trainer every recipe runs, from `train.py` or a notebook.

>>> from configs import gpt  # doctest: +SKIP
>>> config = gpt.get_config('tiny'); config.train.steps = 50  # doctest: +SKIP
>>> metrics = train_and_evaluate(config, '/tmp/zoo-gpt')  # doctest: +SKIP

What a run does: read the source and (once) train the tokenizer; build the model, objective, optimizer and
device mesh from the config; initialise the state shape first and then sharded (or restore the newest
checkpoint, with the input pipeline's position); train with a jitted, donated step (or under pmap); log a
progress line, metrics.jsonl and TensorBoard; save asynchronously every `checkpoint.every` steps, at the
end and on SIGTERM; evaluate on the validation split and write eval.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from zoo import checkpoint as ckpt
from zoo import config as config_lib
from zoo import finetune, models, objectives, optim, parallel, tasks
from zoo.data import pipeline, sources
from zoo.data import tokenizer as tk

log = logging.getLogger('zoo')

# Dense bf16 peak FLOP/s per device, by jax device_kind (prefix match). CPUs: per process, measured on a
# 2-core x86 development machine (JAX_NOTES): float32 260 GFLOP/s, bfloat16 with AMX 1.1 TFLOP/s.
PEAK_FLOPS = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v5': 459e12,
              'TPU v6 lite': 918e12, 'TPU v6e': 918e12, 'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12,
              'NVIDIA A100': 312e12, 'NVIDIA L4': 121e12}
CPU_PEAK = {'float32': 260e9, 'bfloat16': 1.1e12, 'float16': 260e9}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Run:
  """Everything built from a config: what the train and eval loops need."""
  config: ml_collections.ConfigDict
  workdir: str
  tokenizer: tk.Tokenizer
  model: nn.Module
  objective: objectives.Objective
  tx: optax.GradientTransformation
  schedule: Callable
  mesh: Any  # jax Mesh (jit) or None (pmap)
  devices: list
  abstract_state: Any  # unboxed ShapeDtypeStructs
  state_shardings: Any  # NamedShardings (jit) or None
  n_params: int
  flops_per_token: float
  peak_flops: float
  records: dict | None = None  # a fine-tuning task's examples by split (run.objective is then the task)
  frozen: Any = None  # bools like params: True where a parameter stays frozen (LoRA / prefix tuning)
  _features: dict = dataclasses.field(default_factory=dict)

  @property
  def task(self) -> bool:
    return self.records is not None

  def features(self, split: str):
    """The task's (arrays, host info) for a split, made once."""
    if split not in self._features:
      self._features[split] = self.objective.featurize(self.records[split], self.tokenizer,
                                                      f'task.{split}={self.config.task[split]!r}')
    return self._features[split]

  @property
  def pmap(self) -> bool:
    return self.config.parallelism == 'pmap'

  @property
  def local_batch(self) -> int:
    return self.config.train.batch_size // jax.process_count()


# ---------------------------------------------------------------------------- setup

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


def _dtype(name: str):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[name]


def _peak_flops(config, devices) -> float:
  if config.log.peak_flops > 0:
    return config.log.peak_flops * len(devices)
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    return CPU_PEAK[config.model.dtype] * jax.process_count()  # simulated CPU devices share the cores
  for prefix, flops in PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return flops * len(devices)
  return 0.0


def _flops_per_token(model, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6 N for the matmuls (forward and backward) plus 12 L T D for attention."""
  layers = getattr(model, 'num_layers', 0) or (getattr(model, 'num_encoder_layers', 0) +
                                               getattr(model, 'num_decoder_layers', 0))
  attention = 12 * layers * seq_len * getattr(model, 'embed_dim', 0) if hasattr(model, 'num_heads') else 0
  return 6.0 * n_params + attention


def _devices(config):
  devices = jax.devices()
  if config.mesh.devices > 0:
    if jax.process_count() > 1:
      raise ValueError('mesh.devices picks devices of a single process; leave it at -1 on several hosts')
    if config.mesh.devices > len(devices):
      raise ValueError(f'mesh.devices={config.mesh.devices} but only {len(devices)} devices are present')
    devices = devices[:config.mesh.devices]
  return devices


def load_tokenizer(config, workdir: str) -> tk.Tokenizer:
  d = config.data
  get = lambda: tk.get_tokenizer(  # noqa: E731
      d.tokenizer, workdir=workdir, vocab_size=d.vocab_size, model_type=d.tokenizer_type,
      num_sentinels=d.num_sentinels, documents=lambda: read(config, 'train'))
  if jax.process_count() == 1 or d.tokenizer != 'train':
    return get()
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    tok = get()  # one process trains it; the others read the file it wrote
  multihost_utils.sync_global_devices('zoo tokenizer')
  return tok if jax.process_index() == 0 else get()


def read(config, split: str):
  """The documents of a split (read once per process and kept: the tokenizer and the loop share them)."""
  d = config.data
  return _read(d.source, split, d.data_dir or None, d.validation_fraction, d.text_mode, d.max_doc_chars)


@functools.lru_cache(maxsize=4)
def _read(source, split, data_dir, validation_fraction, text_mode, max_doc_chars):
  docs, stats = sources.read_documents(source, split=split, data_dir=data_dir,
                                       validation_fraction=validation_fraction, text_mode=text_mode,
                                       max_doc_chars=max_doc_chars)
  log.info('%s', stats.report())
  return docs


def build(config, workdir: str) -> Run:
  """Tokenizer, model, objective, optimizer, mesh and the state's shape and shardings: no compilation."""
  config = finetune.prepare_config(config)
  config_lib.check(config, jax.process_count())
  tok = load_tokenizer(config, workdir)
  m = config.model
  vocab = m.vocab_size if m.vocab_size > 0 else 128 * math.ceil(tok.vocab_size / 128)
  table = models.FAMILIES[m.family].sizes.get(m.size, {}) if m.family in models.FAMILIES else {}
  differing = [k for k, v in table.items() if k in m and k != 'vocab_size' and m[k] != v]
  if len(differing) > len(table) // 2:
    raise ValueError(f'model.size={m.size!r} but most model fields ({", ".join(differing)}) are another '
                     f"size's: pick the size with the recipe argument (configs/<recipe>.py:{m.size}), which sets "
                     f'them all')
  fields = {k: v for k, v in m.items() if k not in ('family', 'size')}
  fields.update(vocab_size=vocab, dtype=_dtype(m.dtype))
  records = None
  if config.task.name:
    objective, records = finetune.make_task(config, tok, m.family)
    if objective.model_head:
      fields.update(head=objective.model_head, num_labels=objective.num_labels)
      if getattr(objective, 'pooling', 'cls') != 'cls':
        fields['pooling'] = objective.pooling
  adapters = finetune.make_adapters(config)
  if adapters is not None:
    if m.family in ('rnn_lm', 'rnn_seq2seq'):
      raise ValueError('adapters (LoRA, prefix tuning) adapt attention and MLP layers: the RNN models have none')
    fields['adapters'] = adapters
  model = models.get_model(m.family, m.size, **fields)
  tok.check_vocab_size(vocab)
  max_len = getattr(model, 'max_len', None)
  if max_len is not None and getattr(model, 'position', 'learned') == 'learned' and config.train.seq_len > max_len:
    raise ValueError(f'train.seq_len={config.train.seq_len} is longer than model.max_len={max_len} (learned '
                     f'positions): lower train.seq_len or raise model.max_len')
  if records is None:
    obj_fields = {k: v for k, v in config.objective.items() if k != 'name'}
    if config.objective.name == 'span_corruption':
      obj_fields['num_sentinels'] = tok.num_sentinels
    if config.objective.name in ('mlm', 'nsp', 'sop'):
      obj_fields['word_starts'] = tok.word_starts(np.arange(tok.vocab_size))
    objective = objectives.make(config.objective.name, vocab_size=tok.vocab_size,
                                num_special=tk.FIRST_SENTINEL + tok.num_sentinels, **obj_fields)
    if objective.families and m.family not in objective.families:
      raise ValueError(f'objective.name={config.objective.name!r} trains {sorted(objective.families)}, not '
                       f'model.family={m.family!r}: pick a matching recipe from configs/')
  example = objective.example(objective.dummy_batch(1, config.train.seq_len), np.random.default_rng(0))
  frozen = None
  if adapters is not None:
    shapes = nn.unbox(jax.eval_shape(lambda r: model.init({'params': r, 'dropout': r}, **objective.inputs(example),
                                                           deterministic=True), jax.random.key(0))['params'])
    frozen = finetune.frozen_mask(shapes, adapters)
  tx, schedule = optim.make_optimizer(config.optimizer, config.train.steps, frozen)

  devices = _devices(config)
  if config.parallelism == 'pmap':
    mesh = None
    config_lib.check_batch(config, jax.device_count() if config.mesh.devices <= 0 else len(devices), 'pmap')
  else:
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    config_lib.check_batch(config, mesh.shape['data'] * mesh.shape['fsdp'],
                           f"mesh.data={mesh.shape['data']} x mesh.fsdp={mesh.shape['fsdp']}")

  init_fn = _init_fn(model, objective, tx, example)
  boxed = jax.eval_shape(init_fn, jax.random.key(0))  # shapes only; raises model field errors here
  abstract = nn.unbox(boxed)
  shardings = None
  if mesh is not None:
    param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed.params), mesh,
                                                  tuple(config.mesh.rules))
    repl = parallel.replicated(mesh)
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  frozen parameters have no state
    opt_shardings = optax.tree_map_params(tx, lambda x, s: x if masked(x) else s, abstract.opt_state,
                                          param_shardings, transform_non_params=lambda _: repl, is_leaf=masked)
    shardings = TrainState(step=repl, params=param_shardings, opt_state=opt_shardings)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  return Run(config=config, workdir=workdir, tokenizer=tok, model=model, objective=objective, tx=tx,
             schedule=schedule, mesh=mesh, devices=devices, abstract_state=abstract, state_shardings=shardings,
             n_params=n_params, flops_per_token=_flops_per_token(model, n_params, config.train.seq_len),
             peak_flops=_peak_flops(config, devices), records=records, frozen=frozen)


def _init_fn(model, objective, tx, example):
  def init(rng):
    variables = model.init({'params': rng, 'dropout': rng}, **objective.inputs(example), deterministic=True)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(nn.unbox(params)))
  return init


def _context(run: Run):
  """Mesh and logical-axis rules for tracing (nothing under pmap)."""
  if run.mesh is None:
    return contextlib.nullcontext()
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(run.mesh))
  stack.enter_context(nn.logical_axis_rules(tuple(run.config.mesh.rules)))
  return stack


def init_state(run: Run) -> TrainState:
  example = run.objective.example(run.objective.dummy_batch(1, run.config.train.seq_len),
                                  np.random.default_rng(0))
  init = _init_fn(run.model, run.objective, run.tx, example)
  unboxed = lambda rng: nn.unbox(init(rng))  # noqa: E731
  rng = jax.random.key(run.config.seed)
  if run.pmap:
    state = jax.jit(unboxed)(rng)
  else:
    with _context(run):
      state = jax.jit(unboxed, out_shardings=run.state_shardings)(rng)
  if run.config.task.init_from:
    params, report = finetune.load_pretrained(run.config.task.init_from, state.params,
                                              None if run.pmap else run.state_shardings.params)
    state = state.replace(params=params)
    _say(f"restored {report['restored']} parameter arrays from step {report['step']} of "
         f"{run.config.task.init_from}; new: {', '.join(report['new']) or 'none'}; not used: "
         f"{len(report['unused'])}")
  return _replicate(run, state) if run.pmap else state


def _replicate(run: Run, tree):
  """One copy per local device, stacked on a leading axis (what pmap takes)."""
  local = [d for d in run.devices if d.process_index == jax.process_index()]
  sharding = NamedSharding(jax.sharding.Mesh(np.array(local), ('batch',)), P('batch'))
  return jax.tree.map(
      lambda x: jax.device_put(jnp.broadcast_to(x[None], (len(local), *x.shape)), sharding), tree)


def _unreplicate(tree):
  return jax.tree.map(lambda x: x[0], tree)


# ---------------------------------------------------------------------------- steps

def _losses(run: Run, params, example, rng, totals, deterministic: bool):
  """(loss for the gradient, per-term sums) for one (micro-)batch; totals: global prediction counts."""
  obj = run.objective
  if run.frozen is not None:  # no gradient flows into frozen parameters (their weight gradients are not computed)
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, run.frozen)
  outputs = run.model.apply({'params': params}, **obj.inputs(example), deterministic=deterministic,
                            rngs={'dropout': rng})
  terms = obj.terms(outputs, example)
  loss = sum(s / jnp.maximum(totals[k], 1.0) for k, (s, _) in terms.items())
  return loss, terms


def make_train_step(run: Run):
  cfg = run.config
  deterministic = cfg.model.dropout_rate == 0.0
  n_micro = cfg.train.microbatches
  axis = 'batch' if run.pmap else None

  def step(state: TrainState, example, rng):
    counts = run.objective.counts(example)
    if axis:
      counts = jax.lax.psum(counts, axis)
    rng = jax.random.fold_in(rng, state.step)
    if axis:  # under pmap each device draws its own dropout masks, as its shard would under jit
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis))
    grad_fn = jax.value_and_grad(
        lambda p, mb, r: _losses(run, p, mb, r, counts, deterministic), has_aux=True)
    if n_micro == 1:
      (loss, terms), grads = grad_fn(state.params, example, rng)
    else:  # gradient accumulation: sums over micro-batches, divided by the global counts
      # micro-batch i takes every n_micro-th row, so each holds rows of every data-parallel device
      micro = jax.tree.map(lambda x: x.reshape(-1, n_micro, *x.shape[1:]).swapaxes(0, 1), example)

      def body(carry, xs):
        mb, i = xs
        (l, t), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, t, g)), None
      shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
      zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (shapes[0][0], shapes[0][1], shapes[1]))
      (loss, terms, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(n_micro)))
    if axis:
      loss, terms, grads = jax.lax.psum((loss, terms, grads), axis)
    updates, opt_state = run.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optim.global_norm(grads), 'param_norm': optim.global_norm(params),
               'learning_rate': run.schedule(state.step)}
    metrics.update(_term_metrics(terms, counts))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if run.pmap:
    return jax.pmap(step, axis_name='batch', in_axes=(0, 0, None), donate_argnums=(0,))
  repl = parallel.replicated(run.mesh)
  jitted = jax.jit(step, out_shardings=(run.state_shardings, repl), donate_argnums=(0,))

  def call(state, example, rng):
    with _context(run):
      return jitted(state, example, rng)
  call.jitted = jitted
  return call


def _term_metrics(terms, counts):
  out = {}
  for k, (loss_sum, correct) in terms.items():
    n = jnp.maximum(counts[k], 1.0)
    out[f'{k}_loss'] = loss_sum / n
    out[f'{k}_accuracy'] = correct / n
  return out


def make_eval_step(run: Run):
  axis = 'batch' if run.pmap else None

  def step(params, example):
    counts = run.objective.counts(example)
    outputs = run.model.apply({'params': params}, **run.objective.inputs(example), deterministic=True)
    out = {'counts': counts, 'terms': run.objective.terms(outputs, example)}
    out = jax.lax.psum(out, axis) if axis else out
    if run.task:  # per-row predictions for the task's metric (gathered: replicated below)
      out['predictions'] = run.objective.predict(outputs, example)
    return out

  if run.pmap:
    return jax.pmap(step, axis_name='batch')
  jitted = jax.jit(step, out_shardings=parallel.replicated(run.mesh))

  def call(params, example):
    with _context(run):
      return jitted(params, example)
  return call


def put(run: Run, example: dict):
  """Host example (this process's rows) -> device arrays: a global sharded array, or [devices, ...] for pmap."""
  if run.pmap:
    n = len([d for d in run.devices if d.process_index == jax.process_index()])
    return jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), example)
  sharding = NamedSharding(run.mesh, P(('data', 'fsdp')))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in example.items()}


def example_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
  """Masks and noise for `step`, the same in a resumed run; each process draws its own."""
  return np.random.default_rng([seed, stream, step, jax.process_index()])


# ---------------------------------------------------------------------------- evaluation

def evaluate(run: Run, params, eval_step=None, docs=None) -> dict:
  """Metrics over the validation split: the same batches and masks every time (eval_batches of them).
  A fine-tuning task scores every validation example with its metric."""
  cfg = run.config
  if run.task:
    return evaluate_task(run, params, eval_step)
  docs = read(cfg, 'validation') if docs is None else docs
  eval_step = eval_step or make_eval_step(run)
  n_batches = cfg.train.eval_batches
  if n_batches <= 0 and jax.process_count() > 1:
    raise ValueError('train.eval_batches=0 (one pass) needs a single process: give a number of batches')
  ds = pipeline.make_dataset(docs, run.tokenizer, seq_len=cfg.train.seq_len, batch_size=run.local_batch,
                             packing=cfg.data.packing, shuffle=False, num_epochs=None if n_batches > 0 else 1,
                             shard_index=jax.process_index(), shard_count=jax.process_count(),
                             pad_last_batch=True, prefetch=0, sentences=run.objective.needs_sentences,
                             word_segmenter=cfg.data.word_segmenter)
  sums: dict[str, float] = {}
  it = iter(ds)
  for i in range(n_batches if n_batches > 0 else 1 << 30):
    try:
      batch = next(it)
    except StopIteration:
      break
    example = run.objective.example(batch, example_rng(cfg.seed, i, stream=1))
    out = eval_step(params, put(run, example))
    if run.pmap:
      out = _unreplicate(out)
    out = jax.device_get(out)
    for k, c in out['counts'].items():
      sums[f'{k}/count'] = sums.get(f'{k}/count', 0.0) + float(c)
    for k, (loss_sum, correct) in out['terms'].items():
      sums[f'{k}/loss'] = sums.get(f'{k}/loss', 0.0) + float(loss_sum)
      sums[f'{k}/correct'] = sums.get(f'{k}/correct', 0.0) + float(correct)
  metrics = {'loss': 0.0}
  for k in {key.split('/')[0] for key in sums}:
    n = max(sums[f'{k}/count'], 1.0)
    metrics[f'{k}_loss'] = sums[f'{k}/loss'] / n
    metrics[f'{k}_accuracy'] = sums[f'{k}/correct'] / n
    metrics[f'{k}_predictions'] = int(sums[f'{k}/count'])
    metrics['loss'] += metrics[f'{k}_loss']
  if run.objective.perplexity:
    metrics['perplexity'] = math.exp(min(metrics['loss'], 50.0))
  return metrics


def evaluate_task(run: Run, params, eval_step=None, split: str = 'validation') -> dict:
  """Loss and the task's metric over every example of a split, in order (each process feeds its rows of each
  global batch; the predictions come back whole)."""
  if not run.records.get(split):
    return {'loss': float('nan'), 'examples': 0}
  eval_step = eval_step or make_eval_step(run)
  arrays, host = run.features(split)
  global_batch, lb, pid = run.config.train.batch_size, run.local_batch, jax.process_index()
  sums: dict[str, float] = {}
  predictions: dict[str, list] = {}
  for batch, real in tasks.eval_batches(arrays, global_batch):
    local = {k: v[pid * lb:(pid + 1) * lb] for k, v in batch.items()}
    out = eval_step(params, put(run, local))
    if run.pmap:
      preds = jax.device_get(out['predictions'])
      preds = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), preds)  # [devices, rows] -> rows
      out = jax.device_get(_unreplicate({k: v for k, v in out.items() if k != 'predictions'}))
    else:
      out = jax.device_get(out)
      preds = out['predictions']
    for k, c in out['counts'].items():
      sums[k] = sums.get(k, 0.0) + float(c)
      sums[k + '/loss'] = sums.get(k + '/loss', 0.0) + float(out['terms'][k][0])
    for k, v in preds.items():
      predictions.setdefault(k, []).append(np.asarray(v)[:real])
  metrics = {'loss': sum(sums[k + '/loss'] / max(sums[k], 1.0) for k in out['counts'])}
  if run.objective.perplexity:
    metrics['perplexity'] = math.exp(min(metrics['loss'], 50.0))
  metrics.update(run.objective.score({k: np.concatenate(v) for k, v in predictions.items()}, arrays, host))
  return metrics


# ---------------------------------------------------------------------------- logging

class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard event files (tensorboardX: no TensorFlow)."""

  def __init__(self, workdir: str, tensorboard: bool):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict, prefix: str = '') -> None:
    if not self.active:
      return
    row = {'step': step, **{f'{prefix}{k}': v for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self.tb:
      for k, v in row.items():
        if k != 'step' and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)
      self.tb.flush()

  def close(self):
    if self.tb:
      self.tb.close()


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}' if seconds >= 3600 else \
      f'{seconds // 60}:{seconds % 60:02d}'


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


# ---------------------------------------------------------------------------- the loop

class _Preemption:
  """SIGTERM (Colab, TPU VM preemption) or SIGINT: finish the step, save, exit cleanly."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (some notebook runners): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    _say(f'signal {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping')

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'config.json')
    with open(path + '.tmp', 'w') as f:
      f.write(config.to_json_best_effort(indent=1))
    os.replace(path + '.tmp', path)


# Fields that decide which batches, masks and parameters a run sees: a resumed run must keep them.
_RESUME_FIELDS = ('seed', 'train.batch_size', 'train.seq_len', 'train.microbatches', 'data.source', 'data.packing',
                  'data.tokenizer', 'data.vocab_size', 'model', 'objective', 'optimizer.decay_steps', 'task',
                  'adapters')


def _check_same_run(config, workdir: str) -> None:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json_best_effort())
  for field in _RESUME_FIELDS:
    a, b = saved, now
    for part in field.split('.'):
      a, b = (a or {}).get(part), (b or {}).get(part)
    if a != b:
      raise ValueError(f'{field} is {b!r} but the checkpoints in {workdir} were made with {a!r}: resuming would '
                       f'not continue that run. Use a new --workdir, or set {field} back')
  if saved.get('optimizer', {}).get('decay_steps', -1) == -1 and saved['train']['steps'] != now['train']['steps']:
    raise ValueError(f"train.steps changed from {saved['train']['steps']} to {now['train']['steps']} and the "
                     f'learning-rate schedule follows it: to extend or split a run, fix optimizer.decay_steps')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = 'train',
                       callback: Callable[[int, dict], None] | None = None) -> dict:
  """Train (resuming from the newest checkpoint in workdir) and evaluate; or, with mode='eval', restore the
  newest checkpoint onto the devices present and evaluate. Returns the final eval metrics (also written to
  workdir/eval.json). callback(step, metrics) runs on process 0 at every logged step (eval metrics carry an
  'eval_' prefix): a notebook's progress bar and live plot (zoo.notebook.LiveProgress)."""
  if mode not in ('train', 'eval'):
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  maybe_initialize_distributed(config)
  run = build(config, workdir)
  checkpointer = ckpt.Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  try:
    if mode == 'eval':
      return _eval_only(run, checkpointer)
    if checkpointer.latest_step() is not None:
      _check_same_run(run.config, workdir)
    _save_config(run.config, workdir)
    return _train(run, checkpointer, callback)
  finally:
    checkpointer.close()


def _restore_state(run: Run, checkpointer, step: int, data_iter=None):
  if run.pmap:
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), run.abstract_state)
    return _replicate(run, checkpointer.restore(step, target, data_iter))
  target = ckpt.abstract_with_shardings(run.abstract_state, run.state_shardings)
  return checkpointer.restore(step, target, data_iter)


def _eval_only(run: Run, checkpointer) -> dict:
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpointer.directory}: train first (mode=train), or point '
                            f'--workdir at a run that saved one')
  state = _restore_state(run, checkpointer, step)
  params = state.params
  metrics = evaluate(run, params)
  return _write_eval(run, step, metrics)


def _write_eval(run: Run, step: int, metrics: dict) -> dict:
  metrics = {'step': int(step), **metrics}
  if jax.process_index() == 0:
    path = os.path.join(run.workdir, 'eval.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(metrics, f, indent=1)
    os.replace(path + '.tmp', path)
  _say('eval  ' + '  '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in metrics.items()))
  return metrics


def _train_dataset(run: Run):
  cfg = run.config
  if run.task:
    return tasks.dataset(run.features('train')[0], run.local_batch, seed=cfg.seed,
                         shard_index=jax.process_index(), shard_count=jax.process_count())
  train_docs = read(cfg, 'train')
  pipeline.check_corpus_fits(train_docs, run.tokenizer, cfg.train.seq_len, cfg.train.batch_size,
                             cfg.data.packing, jax.process_count())
  return pipeline.make_dataset(train_docs, run.tokenizer, seq_len=cfg.train.seq_len, batch_size=run.local_batch,
                               seed=cfg.seed, packing=cfg.data.packing, shard_index=jax.process_index(),
                               shard_count=jax.process_count(), num_workers=cfg.data.num_workers,
                               sentences=run.objective.needs_sentences, word_segmenter=cfg.data.word_segmenter)


def _train(run: Run, checkpointer, callback=None) -> dict:
  cfg = run.config
  data_iter = iter(_train_dataset(run))
  val_docs = read(cfg, 'validation') if not run.task else None
  start = checkpointer.latest_step()
  if start is not None:
    state = _restore_state(run, checkpointer, start, data_iter)
    _say(f'resumed from step {start} ({checkpointer.directory})')
  else:
    state = init_state(run)
    start = 0
  train_step, eval_step = make_train_step(run), make_eval_step(run)
  writer = MetricWriter(run.workdir, cfg.log.tensorboard)
  rng = jax.random.key(cfg.seed)
  tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
  what = cfg.objective.name
  if run.task:
    what = f'task {cfg.task.name} ({len(run.records["train"])} train / {len(run.records["validation"])} validation)'
  if run.frozen is not None:
    trainable = sum(int(np.prod(x.shape)) for x, f in zip(jax.tree.leaves(run.abstract_state.params),
                                                           jax.tree.leaves(run.frozen)) if not f)
    what += f' | {trainable:,} trainable ({100 * trainable / run.n_params:.2f}%)'
  _say(f'{cfg.model.family}:{cfg.model.size} {run.n_params:,} parameters | {what} | '
       f'batch {cfg.train.batch_size} x {cfg.train.seq_len} | {len(run.devices)} {run.devices[0].platform} '
       f'device(s), {"pmap" if run.pmap else dict(run.mesh.shape)} | workdir {run.workdir}')
  step = start
  t_log, steps_since = time.time(), 0
  last = {}
  with _Preemption() as preempt:
    while step < cfg.train.steps:
      batch = next(data_iter)
      example = put(run, run.objective.example(batch, example_rng(cfg.seed, step)))
      state, metrics = train_step(state, example, rng)
      step += 1
      steps_since += 1
      if step == start + 1:
        jax.block_until_ready(metrics)
        t_log, steps_since = time.time(), 0  # speed is measured after the first step's compilation
      if step % cfg.log.every == 0 or step == cfg.train.steps or preempt.requested or step == start + 1:
        m = jax.device_get(_unreplicate(metrics) if run.pmap else metrics)
        m = {k: float(v) for k, v in m.items()}
        if not math.isfinite(m['loss']):
          raise FloatingPointError(
              f'loss is {m["loss"]} at step {step}: stopping without saving (the last checkpoint is intact). '
              f'Lower optimizer.learning_rate, raise optimizer.warmup_steps, or use model.dtype=float32')
        now = time.time()
        if steps_since:
          rate = steps_since / max(now - t_log, 1e-9)
          m['tokens_per_s'] = rate * tokens_per_step
          m['mfu'] = (m['tokens_per_s'] * run.flops_per_token / run.peak_flops) if run.peak_flops else 0.0
          eta = _fmt_time((cfg.train.steps - step) / rate)
        else:
          eta = '?'
        if run.objective.perplexity:
          m['perplexity'] = math.exp(min(m['loss'], 50.0))
        writer.write(step, m)
        if callback is not None and jax.process_index() == 0:
          callback(step, {**m, 'total_steps': cfg.train.steps})
        last = m
        speed = f" | {m['tokens_per_s'] / 1000:.1f}k tok/s | MFU {100 * m['mfu']:.1f}%" if 'mfu' in m else ''
        acc = next((v for k, v in m.items() if k.endswith('_accuracy')), None)
        _say(f'step {step:>{len(str(cfg.train.steps))}}/{cfg.train.steps} | loss {m["loss"]:.4f}'
             + (f' | acc {acc:.3f}' if acc is not None else '') + speed + f' | ETA {eta}')
        t_log, steps_since = now, 0
      if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
        m_eval = evaluate(run, state.params, eval_step, val_docs)
        writer.write(step, m_eval, prefix='eval_')
        if callback is not None and jax.process_index() == 0:
          callback(step, {f'eval_{k}': v for k, v in m_eval.items()})
        _say(f'eval at step {step}: ' + '  '.join(f'{k} {v:.4g}' for k, v in m_eval.items() if isinstance(v, float)))
        t_log, steps_since = time.time(), 0  # evaluation time is not training speed
      if jax.process_count() > 1:  # every process must stop at the same step
        from jax.experimental import multihost_utils
        preempt.requested = bool(multihost_utils.process_allgather(np.array(preempt.requested)).any())
      if preempt.requested:
        checkpointer.save(step, _unreplicate(state) if run.pmap else state, data_iter, force=True)
        checkpointer.wait()
        _say(f'stopped at step {step}: checkpoint saved; rerun the same command to resume')
        writer.close()
        return {'step': step, 'stopped': True, **last}
      if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
        checkpointer.save(step, _unreplicate(state) if run.pmap else state, data_iter,
                          force=step == cfg.train.steps)
  checkpointer.wait()
  metrics = evaluate(run, state.params, eval_step, val_docs)
  writer.write(step, metrics, prefix='eval_')
  if callback is not None and jax.process_index() == 0:
    callback(step, {f'eval_{k}': v for k, v in metrics.items()})
  writer.close()
  return _write_eval(run, step, metrics)

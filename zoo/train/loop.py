"""train_and_evaluate: build the run, resume or initialize its state, train with preemption-safe checkpoints,
evaluate. A rerun with the same workdir resumes; a changed recipe in a used workdir is refused."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from zoo import checkpoint as ckpt
from zoo import paths
from zoo.data import mixture
from zoo.train import state as state_lib
from zoo.train import steps
from zoo.train.build import build, maybe_initialize_distributed
from zoo.train.evaluate import evaluate
from zoo.train.lock import WorkdirLock
from zoo.train.metrics import MetricWriter, fmt_time, progress_line, say


class Preemption:
  """SIGTERM (Colab, TPU VM preemption) or SIGINT: finish the step, save, exit cleanly. A second SIGINT
  interrupts at once."""

  def __init__(self):
    self.signalled = False  # set by this process's handler only: never cleared by a gather's stale answer
    self.requested = False  # the last agree(): signalled on any process, the same answer on every process
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
    if self.signalled and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signalled = True
    say(f'signal {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping')

  def agree(self) -> bool:
    """Whether any process was asked to stop: every process must stop at the same step.

    A signal that lands while this process waits in the gather (after its own flag was sent) is kept for the next
    step's gather rather than overwritten by the answer, so that every process stops at the same step."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      self.requested = bool(multihost_utils.process_allgather(np.array(self.signalled)).any())
    else:
      self.requested = self.signalled
    return self.requested

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _write_json(path: str, text: str) -> None:
  """Written whole or not at all: a temporary file, then renamed (local or any epath filesystem)."""
  if jax.process_index() == 0:
    tmp = paths.path(f'{os.fspath(path)}.tmp')
    tmp.write_text(text)
    tmp.replace(path)


# Fields that decide which batches, masks and parameters a run sees: a resumed run must keep them.
RESUME_FIELDS = ('seed', 'train.batch_size', 'train.seq_len', 'train.microbatches', 'data.source', 'data.packing',
                 'data.tokenizer', 'data.vocab_size', 'model', 'objective', 'optimizer.decay_steps', 'task',
                 'adapters')


def _flat(tree, prefix: str) -> dict:
  """{dotted field: value} of a JSON config section (a leaf keeps its own name)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  return {f'{prefix}.{k}': v for k, v in traverse_util.flatten_dict(tree, sep='.').items()}


def _flag(field: str, value) -> str:
  return f'--config.{field}={value}' if not isinstance(value, str) or value else f"--config.{field}=''"


# what decides an evaluation's result: the data and what is scored (the mesh, the batch and the seed do not)
EVAL_FIELDS = ('data.source', 'data.packing', 'data.tokenizer', 'data.vocab_size', 'data.validation_fraction',
               'data.text_mode', 'train.seq_len', 'model', 'objective', 'task', 'adapters')


def check_same_run(config, workdir: str, evaluating: bool = False) -> None:
  """Refuse to resume the checkpoints in workdir with a config that would not continue their run (evaluating:
  to score them on other data or as another model), listing every field that differs and the flags that set them
  back."""
  path = paths.path(workdir) / 'config.json'
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  now = json.loads(config.to_json_best_effort())
  differ = []
  for field in EVAL_FIELDS if evaluating else RESUME_FIELDS:
    a, b = saved, now
    for part in field.split('.'):
      a, b = (a or {}).get(part), (b or {}).get(part)
    before, after = _flat(a, field), _flat(b, field)
    differ += [(k, before[k], after.get(k)) for k in sorted(before) if before[k] != after.get(k)]
  if differ:
    changes = '; '.join(f'{k} is {b!r}, was {a!r}' for k, a, b in differ)
    back = ' '.join(_flag(k, a) for k, a, _ in differ)
    if evaluating:
      raise ValueError(f'the checkpoints in {workdir} were trained with other settings, and evaluating with these '
                       f'would score them on other data or as another model: {changes}. Leave out --config (eval '
                       f'mode reads the workdir\'s config.json), or set them back: {back}')
    raise ValueError(f'the checkpoints in {workdir} were made with other settings, and resuming would not continue '
                     f'that run: {changes}. Use a new --workdir, or set them back: {back}')
  if evaluating:
    return
  if saved.get('optimizer', {}).get('decay_steps', -1) == -1 and saved['train']['steps'] != now['train']['steps']:
    raise ValueError(f"train.steps changed from {saved['train']['steps']} to {now['train']['steps']} and the "
                     f'learning-rate schedule follows it: to extend or split a run, fix where it ends with '
                     f"--config.optimizer.decay_steps={saved['train']['steps']}")


class FiniteWatch:
  """Every step's on-device flag (loss, gradients and parameters finite), read one step late so the host never
  waits for the step it has just queued; all of them are read before a checkpoint is saved, so a saved state is
  always finite. A non-finite step stops the run, naming it and the last checkpoint, which is intact."""

  def __init__(self, placement, saved: int | None, directory: str):
    self.placement, self.saved, self.directory = placement, saved, directory
    self.pending = []

  def add(self, step: int, flag) -> None:
    self.pending.append((step, flag))
    self.check(keep=1)

  def check(self, keep: int = 0) -> None:
    while len(self.pending) > keep:
      step, flag = self.pending.pop(0)
      if not bool(self.placement.fetch(flag)):
        where = (f'the last checkpoint, step {self.saved} in {self.directory}, is intact: rerunning resumes from it'
                 if self.saved else 'no checkpoint was saved before it')
        raise FloatingPointError(
            f'the loss or the gradients are not finite at step {step}: stopped without saving ({where}). Lower '
            f'optimizer.learning_rate, raise optimizer.warmup_steps, or train with model.dtype=float32')

  def saved_at(self, step: int) -> None:
    self.saved = step


def saved_config(workdir: str,
                 missing: str = 'give --config, or point --workdir at a run that train.py wrote'):
  """The config.json a training run wrote in workdir (what `--mode=eval` without --config and `zoo.load`
  evaluate with); `missing` says what to do when there is none."""
  path = paths.join(paths.abspath(workdir), 'config.json')
  if not paths.is_file(path):
    raise FileNotFoundError(f'{path} is missing: {missing}')
  config = ml_collections.ConfigDict(json.loads(paths.path(path).read_text()))
  config.mesh.rules = tuple(tuple(r) for r in config.mesh.rules)
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = 'train',
                       callback: Callable[[int, dict], None] | None = None) -> dict:
  """Train (resuming from the newest checkpoint in workdir) and evaluate; or, with mode='eval', restore the
  newest checkpoint onto the devices present and evaluate. Returns the final eval metrics (also written to
  workdir/eval.json). callback(step, metrics) runs on process 0 at every logged step (eval metrics carry an
  'eval_' prefix): a notebook's progress bar and live plot (zoo.notebook.LiveProgress).

  >>> from configs import gpt  # doctest: +SKIP
  >>> config = gpt.get_config('tiny'); config.train.steps = 50  # doctest: +SKIP
  >>> metrics = train_and_evaluate(config, '/tmp/zoo-gpt')  # doctest: +SKIP
  """
  if mode not in ('train', 'eval'):
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
  workdir = paths.abspath(workdir)  # a local path made absolute; gs://... as it is
  if paths.is_file(workdir):
    raise ValueError(f'workdir {workdir} is a file: give a directory (it is created if missing)')
  created = not paths.path(workdir).exists()
  try:
    return _train_and_evaluate(config, workdir, mode, callback)
  except BaseException:
    if created:
      _remove_if_only_lock(workdir)
    raise


def _remove_if_only_lock(workdir: str) -> None:
  """A run refused before it wrote anything (a mesh, corpus or task mistake) leaves no workdir behind."""
  try:
    left = list(paths.path(workdir).iterdir())
    if all(p.name == 'LOCK' and p.stat().length == 0 for p in left):
      for p in left:
        p.unlink()
      paths.path(workdir).rmdir()
  except OSError:  # another process is using it: leave it
    pass


def _train_and_evaluate(config, workdir: str, mode: str, callback) -> dict:
  try:
    paths.path(workdir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f'cannot create the workdir {workdir}: {e.strerror or e}') from None
  maybe_initialize_distributed(config)
  if mode == 'eval':
    ckpt.find_state(workdir)  # nothing to evaluate: say so before building anything
  lock = WorkdirLock(workdir) if mode == 'train' and jax.process_index() == 0 else contextlib.nullcontext()
  with lock:  # one writer per workdir; evaluation reads without it
    run = build(config, workdir)
    checkpointer = ckpt.Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    try:
      if mode == 'eval':
        check_same_run(run.config, workdir, evaluating=True)
        return _eval_only(run, checkpointer)
      if checkpointer.latest_step() is not None:
        check_same_run(run.config, workdir)
      _write_json(paths.join(workdir, 'config.json'), run.config.to_json_best_effort(indent=1))
      return _train(run, checkpointer, callback)
    finally:
      checkpointer.close()


def _eval_only(run, checkpointer) -> dict:
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpointer.directory}: train first (mode=train), or point '
                            f'--workdir at a run that saved one')
  state = state_lib.restore_state(run, checkpointer, step)
  return _write_eval(run, step, evaluate(run, state.params))


def _write_eval(run, step: int, metrics: dict) -> dict:
  metrics = {'step': int(step), **metrics}
  _write_json(paths.join(run.workdir, 'eval.json'), json.dumps(metrics, indent=1))
  say('eval  ' + '  '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in metrics.items()))
  return metrics


def _banner(run) -> str:
  cfg = run.config
  what = run.inputs.describe()
  if run.frozen is not None:
    trainable = sum(int(np.prod(x.shape)) for x, f in zip(jax.tree.leaves(run.abstract_state.params),
                                                           jax.tree.leaves(run.frozen)) if not f)
    what += f' | {trainable:,} trainable ({100 * trainable / run.n_params:.2f}%)'
  return (f'{cfg.model.family}:{cfg.model.size} {run.n_params:,} parameters | {what} | '
          f'batch {cfg.train.batch_size} x {cfg.train.seq_len} | {len(run.devices)} {run.devices[0].platform} '
          f'device(s), {run.placement.describe()} | workdir {run.workdir}')


def _summary(run, start: int, step: int, seconds: float, train_m: dict, eval_m: dict) -> str:
  """The closing lines: what ran, how long, the final metrics, and where everything was written."""
  w, cfg = run.workdir, run.config
  shown = lambda m: '  '.join(f'{k} {m[k]:.4g}' for k in sorted(m, key=lambda k: (k != 'loss', k))  # noqa: E731
                              if isinstance(m[k], float) and (k in ('loss', 'perplexity') or
                                                              k.endswith(('_loss', '_accuracy'))))
  lines = [f'done: steps {start + 1}-{step} of {cfg.train.steps} in {fmt_time(seconds)}',
           f'  train  {shown(train_m)}', f'  eval   {shown(eval_m)}',
           f'  checkpoints  {paths.join(w, "checkpoints")} (step {step})',
           f'  metrics      {paths.join(w, "metrics.jsonl")}, {paths.join(w, "eval.json")}']
  if cfg.log.tensorboard:
    lines.append(f'  tensorboard  tensorboard --logdir {paths.join(w, "tensorboard")}')
  return '\n'.join(lines)


def _train(run, checkpointer, callback=None) -> dict:
  cfg = run.config
  placement = run.placement
  data_iter = iter(run.inputs.train_dataset(run))
  start = checkpointer.latest_step()
  if start is not None:
    state = state_lib.restore_state(run, checkpointer, start, data_iter)
    say(f'resumed from step {start} ({checkpointer.directory})')
  else:
    state = state_lib.init_state(run)
    start = 0
  train_step, eval_step = steps.make_train_step(run), steps.make_eval_step(run)
  writer = MetricWriter(run.workdir, cfg.log.tensorboard)

  def report(step, metrics, prefix=''):
    writer.write(step, metrics, prefix=prefix)
    if callback is not None and jax.process_index() == 0:
      callback(step, {f'{prefix}{k}': v for k, v in metrics.items()} if prefix else
               {**metrics, 'total_steps': cfg.train.steps})

  rng = jax.random.key(cfg.seed)
  tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
  say(_banner(run))
  step = start
  t_start = t_log = time.time()
  steps_since = 0
  last = {}
  watch = FiniteWatch(placement, start or None, checkpointer.directory)
  shares = mixture.ShareMeter()  # a mixture's measured token share per source (mix_share_<i>)
  with Preemption() as preempt:
    while step < cfg.train.steps:
      batch = next(data_iter)
      shares.add(batch)
      example = placement.put(run.objective.example(batch, steps.example_rng(cfg.seed, step)))
      state, metrics = train_step(state, example, rng)
      step += 1
      steps_since += 1
      watch.add(step, metrics.pop('finite'))
      stop = preempt.agree()  # before any branch that gathers: every process takes the same ones
      if step == start + 1:
        jax.block_until_ready(metrics)
        t_log, steps_since = time.time(), 0  # speed is measured after the first step's compilation
      if step % cfg.log.every == 0 or step == cfg.train.steps or stop or step == start + 1:
        watch.check()
        m = {k: float(v) for k, v in placement.fetch(metrics).items()}
        now = time.time()
        eta = '?'
        if steps_since:
          rate = steps_since / max(now - t_log, 1e-9)
          m['tokens_per_s'] = rate * tokens_per_step
          m['mfu'] = (m['tokens_per_s'] * run.flops_per_token / run.peak_flops) if run.peak_flops else 0.0
          eta = fmt_time((cfg.train.steps - step) / rate)
        if run.objective.perplexity:
          m['perplexity'] = math.exp(min(m['loss'], 50.0))
        m.update(shares.metrics())
        report(step, m)
        last = m
        say(progress_line(step, cfg.train.steps, m, eta))
        t_log, steps_since = now, 0
      if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
        watch.check()
        m_eval = evaluate(run, state.params, eval_step)
        report(step, m_eval, prefix='eval_')
        say(f'eval at step {step}: ' + '  '.join(f'{k} {v:.4g}' for k, v in m_eval.items() if isinstance(v, float)))
        t_log, steps_since = time.time(), 0  # evaluation time is not training speed
      if stop:
        watch.check()
        checkpointer.save(step, placement.saveable(state), data_iter, force=True)
        checkpointer.wait()
        say(f'stopped at step {step}: checkpoint saved; rerun the same command to resume')
        writer.close()
        return {'step': step, 'stopped': True, **last}
      if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
        watch.check()
        checkpointer.save(step, placement.saveable(state), data_iter, force=step == cfg.train.steps)
        watch.saved_at(step)
  watch.check()
  checkpointer.wait()
  metrics = evaluate(run, state.params, eval_step)
  report(step, metrics, prefix='eval_')
  writer.close()
  out = _write_eval(run, step, metrics)
  say(_summary(run, start, step, time.time() - t_start, last, metrics))
  return out

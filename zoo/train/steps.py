"""The training and evaluation steps: pure functions of (state, example, rng), compiled by the run's placement
(one jit over the mesh, or pmap). Losses are sums divided by the global batch's prediction counts, so they do not
depend on how the batch is split over devices or micro-batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import optim
from zoo.train.state import TrainState


def model_inputs(objective, example) -> dict:
  """The model's keyword arguments for a step: the objective's inputs, and logits=False when its loss is chunked."""
  inputs = objective.inputs(example)
  return {**inputs, 'logits': False} if objective.lean_loss else inputs


def _losses(run, params, example, rng, totals, deterministic: bool):
  """(loss for the gradient, per-term sums) for one (micro-)batch; totals: global prediction counts."""
  obj = run.objective
  if run.frozen is not None:  # no gradient flows into frozen parameters (their weight gradients are not computed)
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, run.frozen)
  outputs = run.model.apply({'params': params}, **model_inputs(obj, example), deterministic=deterministic,
                            rngs={'dropout': rng})
  terms = obj.terms(outputs, example)
  loss = sum(s / jnp.maximum(totals[k], 1.0) for k, (s, _) in terms.items())
  return loss, terms


def term_metrics(terms, counts) -> dict:
  """{term}_loss and {term}_accuracy from summed terms and counts."""
  out = {}
  for k, (loss_sum, correct) in terms.items():
    n = jnp.maximum(counts[k], 1.0)
    out[f'{k}_loss'] = loss_sum / n
    out[f'{k}_accuracy'] = correct / n
  return out


def train_step_fn(run):
  """step(state, example, rng) -> (state, metrics); under pmap it sums over the placement's axis."""
  cfg = run.config
  deterministic = cfg.model.dropout_rate == 0.0 and cfg.adapters.lora_dropout == 0.0  # LoRA has its own rate
  n_micro = cfg.train.microbatches
  axis = run.placement.axis_name

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
    # the loop reads this every step (one step late) and never saves a state that follows a non-finite one
    metrics['finite'] = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) & jnp.isfinite(
        metrics['param_norm'])
    metrics.update(term_metrics(terms, counts))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def eval_step_fn(run):
  """step(params, example) -> {'counts', 'terms', 'predictions'}: sums over the batch, and per-row predictions
  when the objective makes them (a fine-tuning task's metric needs them)."""
  axis = run.placement.axis_name

  def step(params, example):
    counts = run.objective.counts(example)
    outputs = run.model.apply({'params': params}, **model_inputs(run.objective, example), deterministic=True)
    out = {'counts': counts, 'terms': run.objective.terms(outputs, example)}
    out = jax.lax.psum(out, axis) if axis else out
    out['predictions'] = run.objective.predict(outputs, example)
    return out

  return step


def make_train_step(run):
  """The compiled train step: call(state, example, rng) -> (state, metrics). The state is donated."""
  return run.placement.compile_train(train_step_fn(run), run.state_shardings)


def make_eval_step(run):
  return run.placement.compile_eval(eval_step_fn(run))


def example_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
  """Masks and noise for `step`, the same in a resumed run; each process draws its own."""
  return np.random.default_rng([seed, stream, step, jax.process_index()])

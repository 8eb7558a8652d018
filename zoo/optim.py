"""The optimizer: optax AdamW (or Adafactor, T5's; or SGD, the RNN papers') with warm-up and cosine / linear /
inverse-square-root decay, weight decay masked off biases and norm scales, and clipping by global norm.

>>> from zoo.config import base_config
>>> tx, schedule = make_optimizer(base_config().optimizer, total_steps=1000)
>>> [round(float(schedule(step)), 6) for step in (0, 50, 100, 1000)]  # warm-up, peak, cosine to 10%
[0.0, 0.0005, 0.001, 0.0001]
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax


def rsqrt_schedule(peak: float, warmup: int) -> optax.Schedule:
  """The Transformer's schedule (Vaswani et al. 2017, 5.3): d^-0.5 * min(step^-0.5, step * warmup^-1.5), scaled
  so its top (at step = warmup) is `peak`: peak * min(step / warmup, sqrt(warmup / step)). Linear warm-up, then
  1/sqrt(step) decay with no end; warmup 0: no warm-up, as in the other decays (peak at steps 0 and 1, then
  peak / sqrt(step)).

  >>> s = rsqrt_schedule(1e-2, 100)
  >>> [round(float(s(step)), 6) for step in (0, 50, 100, 400, 10_000)]
  [0.0, 0.005, 0.01, 0.005, 0.001]
  >>> [round(float(rsqrt_schedule(1e-2, 0)(step)), 6) for step in (0, 1, 4)]
  [0.01, 0.01, 0.005]
  """
  w = float(warmup)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = jax.lax.rsqrt(jnp.maximum(step, 1.0))
    return peak * (decay if warmup <= 0 else jnp.minimum(step / w, w ** 0.5 * decay))
  return schedule


def rsqrt_hold_schedule(peak: float, hold: int) -> optax.Schedule:
  """T5's (Mesh TensorFlow's `rsqrt_decay`): the peak for the first `hold` steps, then peak * sqrt(hold / step),
  which is 1 / sqrt(max(step, 10^4)) at T5's peak 1e-2 and hold 10^4. No ramp from 0.

  >>> s = rsqrt_hold_schedule(1e-2, 10_000)
  >>> [round(float(s(step)), 6) for step in (0, 5_000, 10_000, 40_000)]
  [0.01, 0.01, 0.01, 0.005]
  """
  h = float(max(hold, 1))
  return lambda step: peak * jax.lax.rsqrt(jnp.maximum(jnp.asarray(step, jnp.float32), h) / h)


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  decay_steps = cfg.decay_steps if cfg.decay_steps > 0 else total_steps
  peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_fraction
  warmup = cfg.warmup_steps
  decay_steps = max(decay_steps, warmup + 1)  # a run shorter than its warm-up still gets a schedule
  if cfg.decay == 'rsqrt':  # decay_steps and end_lr_fraction do not apply: it decays as 1/sqrt(step) for ever
    return rsqrt_schedule(peak, warmup)
  if cfg.decay == 'rsqrt_hold':  # warmup_steps is how long it holds the peak
    return rsqrt_hold_schedule(peak, warmup)
  if cfg.decay == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay_steps, end)
  rest = max(decay_steps - warmup, 1)
  if cfg.decay == 'linear':
    after = optax.linear_schedule(peak, end, rest)
  elif cfg.decay == 'constant':
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optimizer.decay={cfg.decay!r}: use 'cosine', 'linear', 'constant', 'rsqrt' or 'rsqrt_hold'")
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params):
  """True for the parameters weight decay applies to: not biases, not norm scales."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: path[-1] not in ('bias', 'scale', 'mlm_bias') for path in flat})


def make_optimizer(cfg, total_steps: int, frozen=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Build once and reuse: two separate optax.adamw objects give mismatched pytrees (JAX_NOTES).

  frozen: bools shaped like the parameters, True for those that must not change (LoRA / prefix tuning): they
  get a zero update and no optimizer state (optax.multi_transform with set_to_zero)."""
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  mask = lambda p: decay_mask(flax.linen.unbox(p))  # noqa: E731
  name = cfg.get('name', 'adamw')
  if name == 'adamw':
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask))
  elif name == 'adafactor':
    # T5's (Shazeer & Stern 2018, optax's defaults): factored second moments, no first moment, updates clipped to
    # RMS 1 and scaled by the parameter's RMS, so the learning rate is a relative step (1e-2 in T5). b1, b2 and
    # eps are Adam's and do not apply.
    parts.append(optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                                 weight_decay_mask=mask if cfg.weight_decay else None))
  elif name == 'lamb':
    # ALBERT's (You et al. 2019): Adam's direction scaled per layer by the trust ratio |w| / |update|, which is
    # what makes its large-batch rate (1.76e-3 at batch 4096) safe; weight decay masked as AdamW's.
    parts.append(optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask))
  elif name == 'sgd':
    # the RNN papers' (Zaremba et al. 2014, Luong et al. 2015): plain SGD at learning rate ~1 with gradients
    # clipped to norm 5. Adam's normalised steps drive a Luong decoder's tanh layer to saturation on small data
    # (tests/test_finetune: the copy task). weight_decay (coupled, as L2) where set; b1, b2, eps do not apply.
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(optax.sgd(schedule))
  else:
    raise ValueError(f"optimizer.name={name!r}: use 'adamw', 'lamb', 'adafactor' or 'sgd'")
  tx = optax.chain(*parts)
  if frozen is not None:
    labels = jax.tree.map(lambda f: 'frozen' if f else 'train', frozen)
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, lambda p: labels)
  return tx, schedule


def global_norm(tree) -> jax.Array:
  return optax.tree.norm(tree)

"""Parameter-efficient fine-tuning: LoRA (Hu et al. 2021) and prefix tuning (Li & Liang 2021).

An `Adapters` value is a model field (`get_model('bert', 'tiny', adapters=Adapters(lora_rank=4))`). The
attention and MLP layers then create, next to their frozen kernels, the adapter parameters:

- LoRA: for each targeted projection `W` (query, key, value, out of every attention; wi/wo of every MLP)
  `{name}_lora_a` [in, r] and `{name}_lora_b` [r, out]; the layer computes
  `x W + (alpha / r) * dropout(x) A B`. B starts at zero, so step 0 is exactly the base model.
- Prefix tuning: every self-attention gets `prefix_length` trainable key and value vectors per head,
  prepended to its keys and values (visible to every query; not rotated, not cached). With `prefix_hidden` > 0
  they come from a small MLP over a `prefix_embed` table (the paper's reparameterisation).

`is_adapter(path)` tells the adapter parameters apart, `merge_lora(params, adapters)` folds LoRA into the base
kernels for export, and `lora_param_count` is the formula the tests check the trainable count against.

>>> import jax, jax.numpy as jnp
>>> from zoo import models
>>> ad = Adapters(lora_rank=2, lora_targets=('query', 'value'))
>>> model = models.get_model('gpt', 'tiny', adapters=ad, dropout_rate=0.0)
>>> params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
>>> n = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(params)) if is_adapter(p))
>>> n == lora_param_count(model)
True
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LORA_TARGETS = ('query', 'key', 'value', 'out', 'mlp')


@dataclasses.dataclass(frozen=True)
class Adapters:
  """Which adapters the attention and MLP layers carry (hashable: a static model field)."""
  lora_rank: int = 0  # 0: no LoRA
  lora_alpha: float = 8.0  # the update is scaled by alpha / rank
  lora_dropout: float = 0.0  # dropout on the LoRA branch's input
  lora_targets: tuple[str, ...] = ('query', 'value')  # of query, key, value, out, mlp
  prefix_length: int = 0  # 0: no prefix tuning
  prefix_hidden: int = 0  # > 0: prefixes through an MLP of this width (reparameterisation)

  def __post_init__(self):
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      raise ValueError(f'adapters.lora_targets has {unknown}: choose among {list(LORA_TARGETS)}')
    if self.lora_rank < 0 or self.prefix_length < 0 or self.prefix_hidden < 0:
      raise ValueError('adapters.lora_rank, prefix_length and prefix_hidden must be >= 0')
    if not 0.0 <= self.lora_dropout < 1.0:
      raise ValueError(f'adapters.lora_dropout={self.lora_dropout} must be in [0, 1)')

  @property
  def scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def targets(self, name: str) -> bool:
    """Does LoRA adapt the projection `name` (query, key, value, out, or an MLP's wi / wi_0 / wi_1 / wo)?"""
    if not self.lora_rank:
      return False
    return name in self.lora_targets or (name.startswith('w') and 'mlp' in self.lora_targets)

  @property
  def active(self) -> bool:
    return bool(self.lora_rank or self.prefix_length)


def lora(module: nn.Module, adapters: Adapters | None, name: str, x, out_features: int,
         axes: Sequence[str | None], deterministic: bool):
  """The LoRA branch of projection `name` inside `module`'s compact method: (alpha/r) dropout(x) A B, or 0."""
  if adapters is None or not adapters.targets(name):
    return 0.0
  r = adapters.lora_rank
  a = module.param(f'{name}_lora_a', nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'), (axes[0], None)),  # = kaiming_uniform(sqrt 5)
      (x.shape[-1], r), jnp.float32)
  b = module.param(f'{name}_lora_b', nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, axes[1])),
                   (r, out_features), jnp.float32)
  if adapters.lora_dropout > 0.0:
    x = nn.Dropout(adapters.lora_dropout, name=f'{name}_lora_dropout')(x, deterministic=deterministic)
  h = jnp.matmul(x, a.astype(x.dtype), preferred_element_type=jnp.float32)
  h = jnp.matmul(h.astype(x.dtype), b.astype(x.dtype), preferred_element_type=jnp.float32)
  return (h * adapters.scale).astype(x.dtype)


def prefix(module: nn.Module, adapters: Adapters | None, batch: int, num_heads: int, head_dim: int,
           width: int, dtype):
  """Prefix keys and values [B, P, N, H] for a self-attention inside `module`, or None."""
  if adapters is None or not adapters.prefix_length:
    return None
  p = adapters.prefix_length
  init = nn.initializers.normal(stddev=0.02)
  if adapters.prefix_hidden:
    table = module.param('prefix_embed', nn.with_logical_partitioning(init, (None, 'embed')), (p, width),
                         jnp.float32)
    h = nn.tanh(nn.Dense(adapters.prefix_hidden, name='prefix_hidden')(table))
    kv = nn.Dense(2 * num_heads * head_dim, name='prefix_out')(h)
  else:
    kv = module.param('prefix', nn.with_logical_partitioning(init, (None, 'heads')),
                      (p, 2 * num_heads * head_dim), jnp.float32)
  k, v = jnp.split(kv.astype(dtype).reshape(p, 2, num_heads, head_dim), 2, axis=1)
  shape = (batch, p, num_heads, head_dim)
  return jnp.broadcast_to(k[:, 0][None], shape), jnp.broadcast_to(v[:, 0][None], shape)


def _key(entry) -> str:
  return str(getattr(entry, 'key', getattr(entry, 'name', entry)))


def is_adapter(path) -> bool:
  """True for a LoRA or prefix parameter, given its tree path (keys or a tuple of strings)."""
  return any('_lora_' in _key(k) or _key(k).startswith('prefix') for k in path)


def lora_param_count(model: nn.Module) -> int:
  """The LoRA formula: r (in + out) per adapted projection, summed over every layer of the model."""
  ad = model.adapters
  if ad is None or not ad.lora_rank:
    return 0
  attn_dim = model.num_heads * getattr(model, 'head_dim', model.embed_dim // model.num_heads)
  d, m = model.embed_dim, model.mlp_dim
  per_attention = sum(d + attn_dim for t in ('query', 'key', 'value', 'out') if t in ad.lora_targets)
  gated = getattr(model, 'activation', '') in ('geglu', 'swiglu', 'reglu')
  per_mlp = ((3 if gated else 2) * (d + m)) if 'mlp' in ad.lora_targets else 0
  if hasattr(model, 'num_encoder_layers'):  # encoder-decoder: decoder layers also have cross-attention
    blocks = (model.num_encoder_layers * (per_attention + per_mlp)
              + model.num_decoder_layers * (2 * per_attention + per_mlp))
  else:
    blocks = (1 if getattr(model, 'share_layers', False) else model.num_layers) * (per_attention + per_mlp)
  return ad.lora_rank * blocks


def merge_lora(params, adapters: Adapters) -> Any:
  """Parameters with every LoRA update folded into its kernel (W + alpha/r A B) and the adapter leaves removed:
  what the base model (adapters=None) takes. Stacked (scanned) layers are handled. Prefixes are dropped too
  (they are not a weight update: keep the adapted model for them)."""
  params = nn.unbox(params)

  def fold(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: fold(v) for k, v in tree.items() if not (('_lora_' in k) or k.startswith('prefix'))}
    for k in tree:
      if k.endswith('_lora_a'):
        name = k[:-len('_lora_a')]
        a, b = tree[k], tree[f'{name}_lora_b']
        kernel = out[name]['kernel']
        delta = jnp.einsum('...ir,...ro->...io', a, b, precision=jax.lax.Precision.HIGHEST)
        out[name] = {**out[name], 'kernel': (kernel + adapters.scale * delta).astype(kernel.dtype)}
    return out
  return fold(dict(params))

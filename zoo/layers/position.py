"""Position encodings: sinusoidal (Vaswani et al.), learned absolute (BERT, GPT-2), rotary (RoFormer) and
T5's bucketed relative position bias."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import common


def sinusoidal(positions: jax.Array, dim: int, max_timescale: float = 10_000.0) -> jax.Array:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

  positions: integer array of any shape [...]; returns float32 [..., dim] (sin and cos interleaved).

  >>> sinusoidal(jnp.arange(3), 4).shape
  (3, 4)
  """
  if dim % 2:
    raise ValueError(f'sinusoidal encoding needs an even dim, got {dim}')
  inv_freq = max_timescale ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [d/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., d/2]
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, dim)


class LearnedPositions(nn.Module):
  """Learned absolute positions (BERT, GPT-2): a table of `max_len` vectors looked up by position."""
  max_len: int
  features: int
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, positions: jax.Array) -> jax.Array:
    table = common.embed(self.max_len, self.features, ('positions', 'embed'), dtype=self.dtype,
                         name='embedding')
    return table(positions)


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (Su et al.), the half-split form used by GPT-NeoX and LLaMA.

  x: [B, T, N, H] (H even); positions: [B, T] or [T]. Pair (x_i, x_{i+H/2}) is rotated by pos * base^(-2i/H),
  so <rot(q, m), rot(k, n)> depends on m - n only.
  """
  h = x.shape[-1]
  if h % 2:
    raise ValueError(f'rotary embedding needs an even head_dim, got {h}')
  positions = jnp.broadcast_to(positions, x.shape[:2]).astype(jnp.float32)
  inv_freq = base ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)  # [H/2]
  angles = positions[:, :, None, None] * inv_freq  # [B, T, 1, H/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """T5's bucketing of relative_position = key_position - query_position.

  Half the buckets are exact small distances, the other half log-spaced up to max_distance; bidirectional
  buckets split further into keys before and after the query; unidirectional ones see only keys before.
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  large = max_exact + (
      jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """T5's learned relative position bias: one scalar per (bucket, head), added to attention logits."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  table_init: common.Initializer = common.default_embed_init  # T5 (Mesh TF): normal(d_model^-0.5)

  @nn.compact
  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """q_positions [T] or [B, T], k_positions [S] or [B, S] -> bias [1 or B, num_heads, T, S] (float32)."""
    table = self.param('rel_embedding',
                       nn.with_logical_partitioning(self.table_init, ('relpos_buckets', 'heads')),
                       (self.num_buckets, self.num_heads), jnp.float32)
    q = jnp.atleast_2d(q_positions).astype(jnp.int32)
    k = jnp.atleast_2d(k_positions).astype(jnp.int32)
    rel = k[:, None, :] - q[:, :, None]  # [B, T, S]: key - query
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
    return jnp.transpose(table[buckets], (0, 3, 1, 2))

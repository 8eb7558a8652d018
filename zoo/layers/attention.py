"""Scaled dot-product and multi-head attention with padding, causal, cross and packed-segment masks and a
KV cache for incremental decoding.

Shapes: B batch, T query length, S key length, N heads, H head dim, D model width.
Masks are boolean, True where a query may attend to a key, broadcastable to [B, N, T, S].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zoo.layers import adapters as adapters_lib
from zoo.layers import common, kernels, position

Mask = kernels.Mask  # the structured mask the fused kernels take (zoo.layers.kernels)


def dot_product_attention(q, k, v, mask=None, bias=None, *, scale: float | None = None,
                          dropout_rate: float = 0.0, dropout_rng=None, dtype=jnp.float32,
                          implementation: str = 'xla'):
  """softmax(q k^T * scale + bias, where mask) v, by `implementation` (zoo.layers.kernels: xla, cudnn, splash,
  pallas or auto); xla keeps the softmax in float32.

  q [B, T, N, H], k and v [B, S, N, H]; mask a `Mask` or a boolean array; scale defaults to 1/sqrt(H) (T5 uses
  1.0). Returns [B, T, N, H] in `dtype`.

  >>> q = k = v = jnp.ones((1, 2, 1, 4))
  >>> dot_product_attention(q, k, v).shape
  (1, 2, 1, 4)
  """
  return kernels.attend(q, k, v, mask, bias, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                        dtype=dtype, implementation=implementation)


def padding_mask(q_valid: jax.Array, k_valid: jax.Array | None = None) -> jax.Array:
  """[B, T] and [B, S] booleans (True for real tokens) -> [B, 1, T, S]."""
  return nn.make_attention_mask(q_valid, q_valid if k_valid is None else k_valid, dtype=jnp.bool_)


def causal_mask(length: int) -> jax.Array:
  """Query t sees keys 0..t: [1, 1, T, T]."""
  return nn.make_causal_mask(jnp.zeros((1, length)), dtype=jnp.bool_)


def segment_mask(q_segments: jax.Array, k_segments: jax.Array | None = None) -> jax.Array:
  """Packed sequences: a query sees keys of its own segment only; segment 0 is padding and sees nothing.

  q_segments [B, T], k_segments [B, S] (int, 1..n for documents, 0 for padding) -> [B, 1, T, S].
  """
  k_segments = q_segments if k_segments is None else k_segments
  return Mask(q_segments, k_segments).dense(q_segments.shape[1], k_segments.shape[1])


def make_mask(q_segments: jax.Array, k_segments: jax.Array | None = None, *, causal: bool = False):
  """The usual combination: packed segments (0 = padding), and causal if asked."""
  k_segments = q_segments if k_segments is None else k_segments
  return Mask(q_segments, k_segments, causal=causal).dense(q_segments.shape[1], k_segments.shape[1])


def decode_positions(module: nn.Module, length: int) -> tuple[jax.Array, jax.Array]:
  """Model-level bookkeeping for decoding with a KV cache.

  The first call (at `init`, with a full-length input) allocates a cache of `length` slots. Each later call
  with `length` new tokens returns their positions (index .. index+length-1) and advances the index.
  Returns (query positions [T], slot positions [S]).
  """
  first = not module.has_variable('cache', 'index')
  index = module.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
  slots = module.variable('cache', 'slots', lambda: jnp.arange(length, dtype=jnp.int32))
  if first:
    return jnp.arange(length, dtype=jnp.int32), slots.value
  q = index.value + jnp.arange(length, dtype=jnp.int32)
  index.value = index.value + length
  return q, slots.value


class MultiHeadAttention(nn.Module):
  """Multi-head attention: Q/K/V projections, scaled dot-product attention per head, output projection.

  Self-attention when `kv` is None, cross-attention otherwise. With `decode=True` (self-attention only),
  keys and values are written into a cache ('cache' collection) at the running index; the default mask is
  then causal over the cache slots. Initialise the cache by calling `init` with decode=True on a
  full-length input; that length is the most it holds (a write past it is clamped onto the last slot, so a
  caller must stop at the cache length).

  >>> mha = MultiHeadAttention(num_heads=2, head_dim=4)
  >>> x = jnp.ones((1, 3, 8))
  >>> mha.apply(mha.init(jax.random.key(0), x), x).shape
  (1, 3, 8)
  """
  num_heads: int
  head_dim: int
  use_bias: bool = True
  dropout_rate: float = 0.0
  scale: float | None = None  # None: 1/sqrt(head_dim)
  rotary: bool = False  # rotate q and k by `positions` (RoFormer)
  rope_base: float = 10_000.0
  dtype: common.Dtype = jnp.float32
  kernel_init: common.Initializer = common.default_kernel_init
  out_init: common.Initializer | None = None  # the output projection's (None: kernel_init; GPT-2 scales it)
  query_init: common.Initializer | None = None  # None: kernel_init (T5: Mesh TF's per-projection inits)
  kv_init: common.Initializer | None = None  # the key and value projections' (None: kernel_init)
  adapters: adapters_lib.Adapters | None = None  # LoRA on the projections; prefix keys/values (self-attention)
  implementation: str = 'xla'  # zoo.layers.kernels: auto, xla, cudnn, splash, pallas

  @nn.compact
  def __call__(self, x, kv=None, mask=None, bias=None, positions=None, deterministic: bool = True,
               decode: bool = False):
    """x [B, T, D]; kv [B, S, D] or None; mask a `Mask` or boolean [B|1, N|1, T, S]; bias [B|1, N, T, S];
    positions [B|1, T]."""
    b, t, d = x.shape
    n, h = self.num_heads, self.head_dim

    def proj(name, inputs):
      init = self.query_init if name == 'query' else self.kv_init
      y = common.dense(n * h, ('embed', 'heads'), use_bias=self.use_bias, dtype=self.dtype,
                       kernel_init=init or self.kernel_init, name=name)(inputs)
      y = y + adapters_lib.lora(self, self.adapters, name, inputs, n * h, ('embed', 'heads'), deterministic)
      return y.reshape(b, inputs.shape[1], n, h)
    source = x if kv is None else kv
    q, k, v = proj('query', x), proj('key', source), proj('value', source)
    if self.rotary:
      if kv is not None:
        raise ValueError('rotary embeddings apply to self-attention only')
      pos = jnp.arange(t)[None] if positions is None else positions
      q, k = position.apply_rotary(q, pos, self.rope_base), position.apply_rotary(k, pos, self.rope_base)
    if decode:
      if kv is not None:
        raise ValueError('decode=True caches self-attention; pass kv=None')
      if isinstance(mask, Mask):
        mask = mask.dense(t, t)
      k, v, mask = self._update_cache(k, v, mask)
    prefix = adapters_lib.prefix(self, self.adapters, b, n, h, d, k.dtype) if kv is None else None
    if prefix is not None:  # prefix tuning: P more keys and values that every query sees
      if isinstance(mask, Mask):
        mask = mask.dense(t, k.shape[1])
      k, v = jnp.concatenate([prefix[0], k], axis=1), jnp.concatenate([prefix[1], v], axis=1)
      p = prefix[0].shape[1]
      if mask is not None:
        mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (p,), bool), mask], axis=-1)
      if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(p, 0)])
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    out = dot_product_attention(q, k, v, mask, bias, scale=self.scale, dropout_rate=self.dropout_rate,
                                dropout_rng=dropout_rng, dtype=self.dtype,
                                implementation=self.implementation)  # [B, T, N, H]
    out = out.reshape(b, t, n * h)
    y = common.dense(d, ('heads', 'embed'), use_bias=self.use_bias, dtype=self.dtype,
                     kernel_init=self.out_init or self.kernel_init, name='out')(out)
    return y + adapters_lib.lora(self, self.adapters, 'out', out, d, ('heads', 'embed'), deterministic)

  def _update_cache(self, k, v, mask):
    first = not self.has_variable('cache', 'cached_key')
    ck = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cv = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
    if first:  # init: allocate only, attend as in a full forward pass
      return k, v, mask
    t, slots = k.shape[1], ck.value.shape[1]
    i = index.value
    ck.value = lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
    cv.value = lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
    index.value = i + t
    if mask is None:  # causal over the slots written so far
      q_pos = i + jnp.arange(t)
      mask = (jnp.arange(slots)[None, :] <= q_pos[:, None])[None, None]
    return ck.value, cv.value, mask

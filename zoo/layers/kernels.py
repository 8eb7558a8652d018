"""Attention implementations behind one call, and the structured mask the fused ones take.

`model.attention` picks one:
- `xla`: einsum scores, float32 softmax, every mask, bias, dropout and the KV cache (materializes [B, N, T, S]; a
  causal self-attention in query blocks that skip the masked upper triangle: `causal_blocks`);
- `cudnn`: NVIDIA's fused attention (`jax.nn.dot_product_attention(implementation='cudnn')`), bf16/fp16 on a GPU;
  a causal mask is native, any other mask travels as an additive bias of [B, 1, T, S], and T5's bias is added;
- `splash`: TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`): causal and packed segments;
- `pallas`: the Pallas (Triton) flash kernel for GPUs (`jax.experimental.pallas.ops.gpu.attention`): causal and
  packed segments of self-attention, any dtype;
- `auto` (the default): the fastest of these that expresses the call on the backend in use (TPU: splash; GPU:
  cudnn, then pallas), else `xla`, said once in the log.

The fused kernels do not drop attention weights: with attention dropout active (`dropout_rate > 0` in training)
`auto` keeps `xla`, and an explicit kernel refuses. Padding rows (segment 0) see nothing under `xla` and their
own padding under the kernels: their outputs differ, and nothing reads them (every loss weights them 0, and no
real token attends to padding).

>>> q = k = v = jnp.ones((1, 4, 2, 8))
>>> attend(q, k, v, Mask(causal=True), implementation='auto').shape
(1, 4, 2, 8)
"""
from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import PartitionSpec as P

from zoo.layers import common, matmul

log = logging.getLogger('zoo')

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash', 'pallas')
_NEG = -1e9  # finite, so a fully masked row gives a uniform (ignored) average instead of NaN


@struct.dataclass
class Mask:
  """Who may attend to whom, kept in the form fused kernels take (never [B, N, T, S]).

  q_segments [B, T], kv_segments [B, S]: packed documents 1..n, padding 0; a query sees keys of its own segment.
  With only kv_segments, every query sees the keys whose segment is not 0 (padding of a cross-attention source).
  causal: query t sees keys 0..t. prefix [B] (GLM's part A): keys before it are seen by every query.
  """
  q_segments: jax.Array | None = None
  kv_segments: jax.Array | None = None
  prefix: jax.Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)

  def dense(self, t: int, s: int) -> jax.Array | None:
    """The boolean [B|1, 1, T, S] mask this describes (None: everything visible)."""
    out = None
    if self.kv_segments is not None:
      kv = self.kv_segments[:, None, None, :]
      if self.q_segments is None:
        out = kv > 0
      else:
        q = self.q_segments[:, None, :, None]
        out = (q == kv) & (q > 0) & (kv > 0)
    if self.causal:
      order = (jnp.arange(s)[None, :] <= jnp.arange(t)[:, None])[None, None]
      if self.prefix is not None:
        order = order | (jnp.arange(s)[None, None, None, :] < self.prefix[:, None, None, None])
      out = order if out is None else out & order
    return out


def causal_blocks(t: int, s: int, mask, dropout: bool) -> int:
  """Query blocks a causal self-attention on the `xla` path splits into: block i attends to the keys up to its own
  end only, so the masked upper triangle's blocks are skipped instead of computed and masked (QK^T and PV do
  (n + 1) / 2n of the work). The result is the same softmax over the same keys. 1 (no split): not causal
  self-attention, GLM's prefix (it sees keys past the diagonal), attention dropout (its masks keep their shape),
  shorter than 128, or a length the blocks do not divide. Measured on a 2-core x86 CPU, forward and backward at
  4,096 tokens, 8 heads of 64, packed causal: 2 blocks take 0.75x the time at T=128, 0.69x at 256 (float32: 0.54x),
  0.81x at 512; 4 blocks 0.73x at 512, 0.76x at 1024.

  >>> causal_blocks(256, 256, Mask(causal=True), dropout=False), causal_blocks(1024, 1024, Mask(causal=True), False)
  (2, 4)
  >>> causal_blocks(256, 256, Mask(causal=True), dropout=True), causal_blocks(64, 64, Mask(causal=True), False)
  (1, 1)
  """
  if not isinstance(mask, Mask) or not mask.causal or mask.prefix is not None or dropout or t != s or t < 128:
    return 1
  n = 2 if t < 512 else 4
  return n if t % n == 0 else 1


def xla_attention(q, k, v, mask=None, bias=None, *, scale: float, dropout_rate: float = 0.0, dropout_rng=None,
                  dtype=jnp.float32):
  """softmax(q k^T * scale + bias, where mask) v, the softmax in float32; mask: a `Mask` or a boolean array.
  A causal self-attention runs in `causal_blocks` query blocks."""
  t, s = q.shape[1], k.shape[1]
  dropout = dropout_rate > 0.0 and dropout_rng is not None
  blocks = causal_blocks(t, s, mask, dropout)
  if isinstance(mask, Mask):
    mask = mask.dense(t, s)
  if blocks == 1:
    return _dense_attention(q, k, v, mask, bias, scale, dropout_rate if dropout else 0.0, dropout_rng, dtype)
  size = t // blocks
  outs = []
  for i in range(blocks):
    lo, hi = i * size, (i + 1) * size  # queries lo..hi-1 see keys 0..hi-1 at most
    part = lambda x: None if x is None else x[..., lo:hi, :hi]  # noqa: E731  [B|1, N|1, T, S] -> this block's
    outs.append(_dense_attention(q[:, lo:hi], k[:, :hi], v[:, :hi], part(mask), part(bias), scale, 0.0, None,
                                 dtype))
  return jnp.concatenate(outs, axis=1)


def _dense_attention(q, k, v, mask, bias, scale, dropout_rate, dropout_rng, dtype):
  logits = common.einsum('BTNH,BSNH->BNTS', q, k, dtype=dtype) * scale  # [B, N, T, S] f32
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _NEG)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return common.einsum('BNTS,BSNH->BTNH', weights, v, dtype=dtype).astype(dtype)


def why_not(implementation: str, q, k, mask, bias, dropout: bool, platform: str) -> str | None:
  """Why `implementation` cannot run this call (None: it can)."""
  t, s, h = q.shape[1], k.shape[1], q.shape[3]
  if implementation == 'xla':
    return None
  if dropout:
    return 'the fused kernels do not drop attention weights (attention dropout is active)'
  if mask is not None and not isinstance(mask, Mask):
    return 'this call has an arbitrary mask (KV cache decoding or prefix tuning)'
  if implementation == 'cudnn':
    if platform != 'gpu':
      return 'cuDNN runs on NVIDIA GPUs only'
    if q.dtype not in (jnp.bfloat16, jnp.float16):
      return 'cuDNN attention takes bfloat16 or float16 (set model.dtype=bfloat16)'
    if h % 8 or h > 256:
      return f'cuDNN needs a head dimension that is a multiple of 8, at most 256 (got {h})'
    return None
  if bias is not None:
    return f'{implementation} takes no additive bias (T5 relative positions)'
  if mask is not None and mask.prefix is not None:
    return f"{implementation} cannot express GLM's bidirectional prefix"
  if implementation == 'splash':
    if platform not in ('tpu', 'interpret'):
      return 'splash attention runs on TPUs only'
    if t % 128 or s % 128:
      return f'splash attention needs sequence lengths that are multiples of 128 (got {t} and {s})'
    return None
  if implementation == 'pallas':
    if platform not in ('gpu', 'interpret'):
      return 'the Pallas flash kernel here runs on GPUs only'
    if t != s or (mask is not None and mask.kv_segments is not None and mask.q_segments is None):
      return 'the Pallas flash kernel takes self-attention only'
    if t % 16 or h % 16:
      return f'the Pallas flash kernel needs lengths and head dimensions that are multiples of 16 (got {t}, {h})'
    return None
  raise ValueError(f'model.attention={implementation!r}: choose one of {", ".join(IMPLEMENTATIONS)}')


_said: set = set()


def _say_once(msg: str) -> None:
  if msg not in _said:
    _said.add(msg)
    log.info('%s', msg)


platform = matmul.platform  # the platform of the mesh being traced for (a TPU topology on a CPU host: TPU)


def choose(implementation: str, q, k, mask, bias, dropout: bool, where: str = 'model.attention') -> str:
  """The implementation that runs: `auto` resolved, an explicit choice checked."""
  plat = platform()
  if implementation == 'auto':
    preferred = {'tpu': ('splash',), 'gpu': ('cudnn', 'pallas')}.get(plat, ())
    reasons = []
    for impl in preferred:
      reason = why_not(impl, q, k, mask, bias, dropout, plat)
      if reason is None:
        return impl
      reasons.append(f'{impl}: {reason}')
    if reasons:
      _say_once(f'attention runs on the xla path ({"; ".join(reasons)})')
    return 'xla'
  reason = why_not(implementation, q, k, mask, bias, dropout, 'interpret' if _interpret() else plat)
  if reason is not None:
    raise ValueError(f'{where}={implementation!r} cannot run here: {reason}. Use model.attention=auto (falls '
                     f'back to xla) or xla')
  return implementation


def _interpret() -> bool:
  """Pallas kernels run in interpret mode on a CPU (the tests)."""
  return jax.default_backend() == 'cpu' and platform() == 'cpu'


def _segments(mask: Mask | None, b: int, t: int, s: int):
  """(q, kv) int32 segment ids for the kernels: ones where the mask has none."""
  if mask is None or mask.kv_segments is None:
    return jnp.ones((b, t), jnp.int32), jnp.ones((b, s), jnp.int32)
  kv = mask.kv_segments.astype(jnp.int32)
  if mask.q_segments is None:
    return jnp.ones((b, t), jnp.int32), (kv > 0).astype(jnp.int32)
  return mask.q_segments.astype(jnp.int32), kv


def cudnn_attention(q, k, v, mask: Mask | None, bias, scale: float, implementation: str | None = 'cudnn'):
  """The `cudnn` branch: `jax.nn.dot_product_attention` with the mask as cuDNN takes it (its causal flag, the
  segments as a dense mask). GLM's prefix is not a causal mask: its part A sees keys past the diagonal, so a
  prefix mask goes whole as a dense mask. implementation: jax's (None: its XLA one, which the CPU tests run)."""
  dense, causal = None, mask is not None and mask.causal
  if mask is not None and mask.prefix is not None:
    dense, causal = mask.dense(q.shape[1], k.shape[1]), False
  elif mask is not None and mask.kv_segments is not None:
    dense = Mask(mask.q_segments, mask.kv_segments).dense(q.shape[1], k.shape[1])
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias, mask=dense, scale=scale,
                                      is_causal=causal, implementation=implementation)


def _splash(q, k, v, q_seg, kv_seg, *, causal: bool, scale: float, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  _, t, n, _ = q.shape
  s = k.shape[1]
  one = sm.CausalMask((t, s)) if causal else sm.FullMask((t, s))
  block = lambda length: min(512, length)  # noqa: E731
  sizes = sk.BlockSizes(block_q=block(t), block_kv=block(s), block_kv_compute=block(s), block_q_dkv=block(t),
                        block_kv_dkv=block(s), block_kv_dkv_compute=block(s), block_q_dq=block(t),
                        block_kv_dq=block(s))
  kernel = sk.make_splash_mha(sm.MultiHeadMask([one] * n), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  heads = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, T, N, H] -> [B, N, T, H]
  run = jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=sk.SegmentIds(qs, ks)))
  out = run(heads(q * jnp.asarray(scale, q.dtype)), heads(k.astype(q.dtype)), heads(v.astype(q.dtype)), q_seg, kv_seg)
  return heads(out)


def _pallas(q, k, v, q_seg, kv_seg, *, causal: bool, scale: float, interpret: bool):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  del kv_seg  # self-attention: the same segments
  t = q.shape[1]
  block = min(128, t)
  sizes = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=min(32, t), block_kv_dkv=min(32, t),
                                   block_q_dq=min(32, t), block_kv_dq=min(32, t))
  return gpu_attention.mha(q, k.astype(q.dtype), v.astype(q.dtype), q_seg, sm_scale=scale, causal=causal,
                           block_sizes=sizes, interpret=interpret)


def _sharded(kernel, q, k, v, q_seg, kv_seg):
  """Runs a Pallas kernel per shard: Mosaic and Triton kernels cannot be partitioned automatically."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return kernel(q, k, v, q_seg, kv_seg)
  batch, _, heads = nn.logical_to_mesh_axes(('batch', 'length', 'heads'))
  size = lambda axes: 1 if axes is None else (  # noqa: E731
      mesh.shape[axes] if isinstance(axes, str) else math.prod(mesh.shape[a] for a in axes))
  if q.shape[0] % size(batch):
    batch = None
  if q.shape[2] % size(heads):
    heads = None
  qkv, seg = P(batch, None, heads, None), P(batch, None)
  return jax.shard_map(kernel, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv, check_vma=False)(
      q, k, v, q_seg, kv_seg)


def attend(q, k, v, mask=None, bias=None, *, scale: float | None = None, dropout_rate: float = 0.0,
           dropout_rng=None, dtype=jnp.float32, implementation: str = 'xla', where: str = 'model.attention'):
  """Attention by the chosen implementation. q [B, T, N, H], k and v [B, S, N, H]; mask a `Mask`, a boolean
  array broadcastable to [B, N, T, S], or None; bias [B|1, N, T, S] or None. Returns [B, T, N, H] in `dtype`."""
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  dropout = dropout_rate > 0.0 and dropout_rng is not None
  impl = choose(implementation, q, k, mask, bias, dropout, where)
  if impl == 'xla':
    return xla_attention(q, k, v, mask, bias, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                         dtype=dtype)
  q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  if impl == 'cudnn':
    return cudnn_attention(q, k, v, mask, bias, scale).astype(dtype)
  q_seg, kv_seg = _segments(mask, q.shape[0], q.shape[1], k.shape[1])
  fn = {'splash': _splash, 'pallas': _pallas}[impl]
  kernel = functools.partial(fn, causal=mask is not None and mask.causal, scale=scale, interpret=_interpret())
  return _sharded(kernel, q, k, v, q_seg, kv_seg).astype(dtype)

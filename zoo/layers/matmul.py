"""A two-operand einsum under zoo's dtype policy in the backward pass too.

`jnp.einsum(..., preferred_element_type=float32)` on bfloat16 operands accumulates in float32 going forward, but
its autodiff gradients contract a float32 cotangent with a bfloat16 operand: a float32 matmul, several times slower
on a CPU with AMX (JAX_NOTES) and on accelerators. `einsum` here spells out both gradient contractions with the
cotangent cast to the operands' dtype and float32 accumulation, as `zoo.layers.common.dot_general` does for Dense.

>>> a = jnp.ones((2, 3), jnp.bfloat16); b = jnp.ones((4, 3), jnp.bfloat16)
>>> y = einsum('td,vd->tv', a, b)
>>> y.dtype, float(y[0, 0])
(dtype('float32'), 3.0)
>>> jax.grad(lambda a: einsum('td,vd->tv', a, b).sum())(a).dtype
dtype(bfloat16)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def platform() -> str:
  """The platform of the mesh being traced for (so a TPU topology compiled on a CPU host counts as TPU)."""
  device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
  return device.platform if device is not None else jax.default_backend()


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
  """Whether this host's CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later; Linux's cpuinfo flags)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      return any(line.startswith('flags') and 'amx_bf16' in line.split() for line in f)
  except OSError:
    return False


def _einsum(spec, a, b):
  """float32 accumulation. On a CPU without AMX, bfloat16 operands are widened to float32 first: the products of
  two bfloat16 numbers are exact in float32, so this is the same contraction, and XLA:CPU runs float32 matmuls
  faster there (measured on a 2-core Xeon with AVX512-BF16 but no AMX: 2048^3 at 181 GFLOP/s widened against 151;
  a 4-layer 512-wide GPT step at 16 x 256 in 0.70-0.75x the time). With AMX, bfloat16 runs about 4x float32
  (JAX_NOTES) and stays."""
  if a.dtype != jnp.float32 and platform() == 'cpu' and not cpu_has_amx():
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision(spec, a, b):
  return _einsum(spec, a, b)


def _fwd(spec, a, b):
  return _einsum(spec, a, b), (a, b)


def _bwd(spec, res, g):
  a, b = res
  inputs, out = spec.split('->')
  sa, sb = inputs.split(',')
  g = g.astype(a.dtype)
  return _einsum(f'{out},{sb}->{sa}', g, b).astype(a.dtype), _einsum(f'{sa},{out}->{sb}', a, g).astype(b.dtype)


_low_precision.defvjp(_fwd, _bwd)


def einsum(spec: str, a, b, dtype=None):
  """float32 einsum of two operands cast to `dtype` (default: their own), accumulating in float32 forward and
  backward when no index is a batch index (one in both operands and the output: an output projection, not
  attention's scores). `spec` must name its output ('...->...'), and every index of an operand must appear in the
  other operand or in the output."""
  if dtype is not None:
    a, b = a.astype(dtype), b.astype(dtype)
  inputs, out = spec.split('->')
  sa, sb = inputs.split(',')
  batched = any(c.isalpha() and c in sa and c in sb for c in out)
  if (a.dtype == jnp.float32 and b.dtype == jnp.float32) or batched:
    # Batched contractions (attention's) keep autodiff's gradients: XLA:CPU lacks a bf16 x bf16 = f32 kernel for
    # some of the layouts their spelled-out gradients take.
    return _einsum(spec, a, b)
  return _low_precision(spec, a, b)

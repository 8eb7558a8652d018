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


def _einsum(spec, a, b):
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

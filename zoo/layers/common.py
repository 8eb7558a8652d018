"""What every layer shares: the dtype policy and parameters created with logical axis names.

The dtype policy (as in T5X and MaxText):
- parameters are stored in float32 (`param_dtype`);
- activations and matmul operands use the compute dtype (`dtype`: float32, or bfloat16 on TPU);
- every matmul accumulates in float32, forward *and* backward (`dot_general` below), and its result is
  rounded back to the compute dtype;
- norms compute their statistics in float32, and the MLP's activation function runs in float32 between
  compute-dtype input and output (XLA fuses the casts); logits and losses are float32.

Logical axis names (t5x/flax convention) used for parameters:
  'vocab', 'embed', 'mlp', 'heads' (heads x head_dim, flattened), 'relpos_buckets', 'positions', 'rnn'
  (recurrent width), 'classes', 'layers' (added by nn.scan); zoo.parallel.LOGICAL_AXES lists them all.
A config's rule table maps them to mesh axes; without rules they are no-ops.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zoo.layers import losses, matmul

Dtype = Any
Initializer = Callable[..., jax.Array]

default_kernel_init = nn.initializers.normal(stddev=0.02)
default_embed_init = nn.initializers.normal(stddev=0.02)

_DENSE_DIMS = lambda ndim: (((ndim - 1,), (0,)), ((), ()))  # noqa: E731  x[..., I] . w[I, O]


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for `nn.Dense` under zoo's dtype policy.

  float32 operands go straight to `lax.dot_general`. Lower-precision operands (bfloat16) of a Dense
  contraction accumulate in float32 in the forward and both backward matmuls, and the result comes back in
  the operands' dtype.

  >>> x = jnp.ones((2, 3), jnp.bfloat16); w = jnp.ones((3, 4), jnp.bfloat16)
  >>> dot_general(x, w, (((1,), (0,)), ((), ()))).dtype
  dtype(bfloat16)
  """
  if (lhs.dtype == jnp.float32 or preferred_element_type is not None
      or dimension_numbers != _DENSE_DIMS(lhs.ndim) or rhs.ndim != 2):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return matmul.einsum('...i,io->...o', lhs, rhs).astype(lhs.dtype)


def einsum(spec: str, a, b, dtype: Dtype = jnp.float32):
  """`jnp.einsum` of two operands cast to `dtype`, accumulating in float32 (`zoo.layers.matmul.einsum`); the result
  is float32."""
  return matmul.einsum(spec, a, b, dtype)


def dense(features: int, axes: Sequence[str | None], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          kernel_init: Initializer = default_kernel_init, name: str | None = None) -> nn.Dense:
  """An `nn.Dense` with logically named kernel (`axes` = (in, out)) and bias (out), under the dtype policy."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
      dot_general=dot_general, name=name)


class OneHotEmbed(nn.Embed):
  """`nn.Embed` that looks up by one-hot matmul: for tables of few rows (positions, token types), whose gather's
  backward is a scatter-add with thousands of collisions per row (it serializes on a GPU); the matmul's backward
  is a matmul. Same parameter ('embedding') and values as `nn.Embed`.

  >>> e = OneHotEmbed(4, 3)
  >>> p = e.init(jax.random.key(0), jnp.arange(2))
  >>> bool(jnp.allclose(e.apply(p, jnp.arange(2)), p['params']['embedding'][:2]))
  True
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    table = self.embedding.astype(self.dtype or self.param_dtype)
    one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=table.dtype)
    return dot_general(one_hot, table, _DENSE_DIMS(one_hot.ndim))


def embed(num_embeddings: int, features: int, axes: Sequence[str | None] = ('vocab', 'embed'), *,
          dtype: Dtype = jnp.float32, init: Initializer = default_embed_init,
          name: str | None = None) -> nn.Embed:
  """An `nn.Embed` whose table carries logical axis names. The vocabulary table is looked up by gather; the small
  tables (positions, token types) by one-hot matmul (`OneHotEmbed`)."""
  cls = nn.Embed if axes[0] == 'vocab' else OneHotEmbed
  return cls(num_embeddings, features, dtype=dtype, param_dtype=jnp.float32,
             embedding_init=nn.with_logical_partitioning(init, tuple(axes)), name=name)


class OutputHead(nn.Module):
  """A language model's untied output projection: the parameters of `dense(features, axes)` (kernel, bias),
  returning float32 logits, or with logits=False the `zoo.layers.losses.Features` a chunked loss takes."""
  features: int
  axes: tuple = ('embed', 'vocab')
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x, logits: bool = True):
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
                        (x.shape[-1], self.features), jnp.float32)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[-1],)),
                        (self.features,), jnp.float32)
    return losses.output(x, nn.unbox(kernel), None if bias is None else nn.unbox(bias), dtype=self.dtype,
                         logits=logits)


def attend(table: nn.Embed, x: jax.Array, dtype: Dtype = jnp.float32, logits: bool = True):
  """Tied output logits x @ table^T in float32 (accumulated in float32 from `dtype` operands), or with
  logits=False the `zoo.layers.losses.Features` a chunked loss takes."""
  return losses.output(x, table.embedding, transposed=True, dtype=dtype, logits=logits)


def norm(kind: str, *, eps: float, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
  """'layernorm' (with bias) or 'rmsnorm' (T5: scale only, no mean subtraction); statistics in float32."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',))
  if kind == 'layernorm':
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, scale_init=scale_init,
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)),
                        name=name)
  if kind == 'rmsnorm':
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, scale_init=scale_init, name=name)
  raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=False),  # BERT: x * Phi(x), with erf
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),  # GPT-2 "gelu_new"
    'silu': nn.silu,
}
GATED = {'geglu': 'gelu_tanh', 'swiglu': 'silu', 'reglu': 'relu'}  # gated name -> its activation


def activation_fn(name: str) -> tuple[Callable[[jax.Array], jax.Array], bool]:
  """Returns (function, gated) for an activation name: relu, gelu, gelu_tanh, silu, geglu, swiglu, reglu."""
  if name in GATED:
    return ACTIVATIONS[GATED[name]], True
  if name in ACTIVATIONS:
    return ACTIVATIONS[name], False
  raise ValueError(f'unknown activation {name!r}; choose one of {sorted(ACTIVATIONS) + sorted(GATED)}')


def head_dim(embed_dim: int, num_heads: int, where: str = 'model') -> int:
  """embed_dim // num_heads, or a clear error when the heads do not divide the width."""
  if num_heads <= 0 or embed_dim % num_heads:
    raise ValueError(f'{where}.num_heads={num_heads} does not divide {where}.embed_dim={embed_dim}: '
                     f'choose num_heads among the divisors of {embed_dim}, or set head_dim explicitly')
  return embed_dim // num_heads


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Activation sharding constraint by logical names; a no-op outside a mesh with rules."""
  return nn.with_logical_constraint(x, tuple(axes))

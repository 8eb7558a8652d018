"""Cross-entropy over a large vocabulary without holding the logits of every token at once.

An output projection to V classes makes [N, V] float32 logits for N tokens: at N = 8192 tokens and V = 32768
that is 1 GiB, and its gradient (the softmax) as much again. `chunked_cross_entropy` computes the same loss
and accuracy as `zoo.objectives.base.cross_entropy(hidden @ kernel + bias, labels, weights)` chunk by chunk
of tokens under `jax.lax.scan`: each chunk makes its own float32 logits, reduces them to one negative
log-likelihood and one correct/incorrect per token, and drops them. The chunk function is wrapped in
`jax.checkpoint`, so the backward pass recomputes one chunk's logits at a time instead of saving them all:
temporary memory is O(chunk_size * V) rather than O(N * V). The gradient is JAX autodiff.

The dtype policy is zoo's (zoo.layers.common): the matmul operands are cast to `dtype` (float32, or bfloat16)
and accumulate in float32; logits, log-probabilities and losses are float32.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


def logits_from(hidden: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, transposed: bool = False,
                dtype: Dtype = jnp.float32) -> jax.Array:
  """float32 logits hidden @ kernel (+ bias): operands cast to `dtype`, accumulated in float32.

  hidden [..., D]; kernel [D, V], or [V, D] when `transposed` (a tied embedding table); bias [V] or None.

  >>> h = jnp.ones((2, 3), jnp.bfloat16); table = jnp.ones((5, 3))
  >>> y = logits_from(h, table, jnp.arange(5.0), transposed=True, dtype=jnp.bfloat16)
  >>> y.shape, y.dtype, y[0].tolist()
  ((2, 5), dtype('float32'), [3.0, 4.0, 5.0, 6.0, 7.0])
  """
  contract = (((hidden.ndim - 1,), (1 if transposed else 0,)), ((), ()))
  logits = lax.dot_general(hidden.astype(dtype), kernel.astype(dtype), contract,
                           preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return logits


@jax.custom_jvp
def _label_logit(logits, labels):
  """logits[c, labels[c]] for logits [C, V], labels [C]: a gather forward, a masked sum as its derivative.

  The derivative take_along_axis gets from autodiff scatters into a second [C, V] buffer; as a masked sum
  (a select) it fuses into the softmax's gradient, so the backward pass holds one chunk of logits, not two
  (XLA:CPU: 136 vs 256 MiB for 1024 x 32768 chunks). Computing the masked sum in the forward pass too would
  cost a second buffer there (XLA:CPU does not fuse the select into the reduction).
  """
  return jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


@_label_logit.defjvp
def _label_logit_jvp(primals, tangents):
  logits, labels = primals
  mask = lax.broadcasted_iota(jnp.int32, logits.shape, 1) == labels[:, None]
  return _label_logit(logits, labels), jnp.sum(jnp.where(mask, tangents[0], 0.0), axis=-1)


def _token_terms(hidden, kernel, bias, labels, *, transposed, dtype):
  """Per-token (nll, correct) [C] for hidden [C, D]: nll = logsumexp(logits) - logits[label]."""
  logits = logits_from(hidden, kernel, bias, transposed, dtype)
  nll = jax.nn.logsumexp(logits, axis=-1) - _label_logit(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return nll, correct


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array, *,
                          bias: jax.Array | None = None, transposed: bool = False, chunk_size: int = 4096,
                          dtype: Dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy and number of correct argmax predictions, both weighted, chunk by chunk.

  hidden [..., D] (any float dtype); kernel [D, V], or [V, D] when `transposed` (a tied embedding table);
  bias [V] or None; labels [...] int; weights [...] (0 or 1). Returns (loss_sum, correct_sum), float32
  scalars: what `zoo.objectives.base.cross_entropy` returns for logits = hidden @ kernel (+ bias) computed in
  float32 (from `dtype` operands), without ever holding more than `chunk_size` tokens' logits, forward or
  backward. The N tokens are padded up to a multiple of `chunk_size` (the padding has weight 0); with
  N <= chunk_size they are done in one piece.

  >>> h = jnp.ones((2, 3, 4)); kernel = jnp.zeros((4, 5))
  >>> labels = jnp.zeros((2, 3), jnp.int32); weights = jnp.array([[1., 1., 1.], [1., 1., 0.]])
  >>> loss, correct = chunked_cross_entropy(h, kernel, labels, weights, chunk_size=4)  # 6 tokens: 2 chunks
  >>> round(float(loss), 4), float(correct)  # 5 weighted tokens, each -log(1/5); argmax of a tie is 0
  (8.0472, 5.0)
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}')
  d = hidden.shape[-1]
  h = hidden.reshape(-1, d)
  n = h.shape[0]
  labels = labels.reshape(n).astype(jnp.int32)
  weights = weights.reshape(n).astype(jnp.float32)
  terms = lambda h, kernel, bias, labels: _token_terms(  # noqa: E731
      h, kernel, bias, labels, transposed=transposed, dtype=dtype)
  if n <= chunk_size:
    nll, correct = terms(h, kernel, bias, labels)
  else:
    chunks = -(-n // chunk_size)
    pad = chunks * chunk_size - n
    h = jnp.pad(h, ((0, pad), (0, 0))).reshape(chunks, chunk_size, d)
    padded_labels = jnp.pad(labels, (0, pad)).reshape(chunks, chunk_size)
    # Saves only each chunk's inputs; the backward pass recomputes that chunk's logits.
    chunk_terms = jax.checkpoint(terms)
    _, (nll, correct) = lax.scan(lambda carry, xs: (carry, chunk_terms(xs[0], kernel, bias, xs[1])),
                                 None, (h, padded_labels))
    nll, correct = nll.reshape(-1)[:n], correct.reshape(-1)[:n]  # per token: the padding drops out here
  return jnp.sum(nll * weights), jnp.sum(correct * weights)

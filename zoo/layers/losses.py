"""Cross-entropy over a large vocabulary without holding the logits of every token at once.

An output projection to V classes makes [N, V] float32 logits for N tokens: at N = 8192 tokens and V = 32768
that is 1 GiB, and its gradient (the softmax) as much again. `chunked_cross_entropy` computes the same loss
and accuracy as `zoo.objectives.base.cross_entropy(hidden @ kernel + bias, labels, weights)` chunk by chunk
of tokens under `jax.lax.scan`: each chunk makes its own float32 logits, reduces them to one negative
log-likelihood and one correct/incorrect per token, and drops them. The chunk function is wrapped in
`jax.checkpoint`, so the backward pass recomputes one chunk's logits at a time instead of saving them all:
temporary memory is O(chunk_size * V) rather than O(N * V). The gradient is JAX autodiff.

Label smoothing (`label_smoothing` = a, Szegedy et al. 2016; 0.1 in the Transformer) is optax's: the target is
`optax.smooth_labels(one_hot(label, K), a)` = (1 - a) * one_hot + a / K over the K classes of the logits, and the
loss -sum(target * log_softmax) = logsumexp(logits) - (1 - a) * logits[label] - a * mean(logits). K is the width
of the logits, i.e. the model's vocab_size, padded past the tokenizer's (to a multiple of 128): the padding ids
get their a / K share too, as optax would give them (the model learns to give them little probability either
way). a = 0 is exactly the unsmoothed loss (the mean is not computed).

The dtype policy is zoo's (zoo.layers.common): the matmul operands are cast to `dtype` (float32, or bfloat16)
and accumulate in float32; logits, log-probabilities and losses are float32. The kernel is cast inside each
chunk, so its gradient adds up over the chunks in the kernel's own dtype (float32 parameters), not in `dtype`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from zoo.layers import matmul

Dtype = Any
CHUNK_TOKENS = 8192  # tokens of the global batch per chunk: 8192 x 50,304 float32 logits are 1.5 GiB over all devices


def logits_from(hidden: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, transposed: bool = False,
                dtype: Dtype = jnp.float32) -> jax.Array:
  """float32 logits hidden @ kernel (+ bias): operands cast to `dtype`, accumulated in float32.

  hidden [..., D]; kernel [D, V], or [V, D] when `transposed` (a tied embedding table); bias [V] or None.

  >>> h = jnp.ones((2, 3), jnp.bfloat16); table = jnp.ones((5, 3))
  >>> y = logits_from(h, table, jnp.arange(5.0), transposed=True, dtype=jnp.bfloat16)
  >>> y.shape, y.dtype, y[0].tolist()
  ((2, 5), dtype('float32'), [3.0, 4.0, 5.0, 6.0, 7.0])
  """
  logits = matmul.einsum('...d,vd->...v' if transposed else '...d,dv->...v', hidden, kernel, dtype)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return logits


@jax.custom_jvp
def _label_logit(logits, labels):
  """logits[c, labels[c]] for logits [C, V], labels [C]: a gather forward, a masked sum as its derivative.

  The derivative take_along_axis gets from autodiff scatters into a second [C, V] buffer; as a masked sum
  (a select) it fuses into the softmax's gradient, so the backward pass holds one chunk of logits, not two
  (XLA:CPU, no bias: 136 vs 256 MiB for 1024 x 32768 chunks). Computing the masked sum in the forward pass too would
  cost a second buffer there (XLA:CPU does not fuse the select into the reduction).
  """
  return jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


@_label_logit.defjvp
def _label_logit_jvp(primals, tangents):
  logits, labels = primals
  mask = lax.broadcasted_iota(jnp.int32, logits.shape, 1) == labels[:, None]
  return _label_logit(logits, labels), jnp.sum(jnp.where(mask, tangents[0], 0.0), axis=-1)


def _token_terms(hidden, kernel, bias, labels, *, transposed, dtype, label_smoothing=0.0):
  """Per-token (nll, correct) [C] for hidden [C, D]: nll = logsumexp(logits) - logits[label] (smoothed: see top)."""
  logits = logits_from(hidden, kernel, bias, transposed, dtype)
  target = _label_logit(logits, labels)
  if label_smoothing:
    target = (1.0 - label_smoothing) * target + label_smoothing * jnp.mean(logits, axis=-1)
  nll = jax.nn.logsumexp(logits, axis=-1) - target
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return nll, correct


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array, *,
                          bias: jax.Array | None = None, transposed: bool = False, chunk_size: int = 4096,
                          dtype: Dtype = jnp.float32, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy and number of correct argmax predictions, both weighted, chunk by chunk.

  hidden [..., D] (any float dtype); kernel [D, V], or [V, D] when `transposed` (a tied embedding table);
  bias [V] or None; labels [...] int; weights [...] (0 or 1). Returns (loss_sum, correct_sum), float32
  scalars: what `zoo.objectives.base.cross_entropy` returns for logits = hidden @ kernel (+ bias) computed in
  float32 (from `dtype` operands), without ever holding more than `chunk_size` tokens' logits, forward or
  backward. `label_smoothing` (a Python float) smooths the targets as optax does (see the module docstring). Chunks
  run along the sequence axis (hidden [B, T, D]: each chunk holds every row and about
  chunk_size / B positions, so a data-parallel batch stays sharded); the positions are padded up to a multiple
  of the chunk (the padded terms are dropped before weighting). When one chunk holds them all there is no scan.

  >>> h = jnp.ones((2, 3, 4)); kernel = jnp.zeros((4, 5))
  >>> labels = jnp.zeros((2, 3), jnp.int32); weights = jnp.array([[1., 1., 1.], [1., 1., 0.]])
  >>> loss, correct = chunked_cross_entropy(h, kernel, labels, weights, chunk_size=4)  # 6 tokens: 2 chunks
  >>> round(float(loss), 4), float(correct)  # 5 weighted tokens, each -log(1/5); argmax of a tie is 0
  (8.0472, 5.0)
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}')
  d = hidden.shape[-1]
  # Rows [B, T]: chunks run along T with every row in each, so a batch sharded over devices stays sharded.
  h = hidden.reshape(-1, hidden.shape[-2], d) if hidden.ndim > 2 else hidden.reshape(1, -1, d)
  rows, length = h.shape[:2]
  labels = labels.reshape(rows, length).astype(jnp.int32)
  weights = weights.reshape(rows, length).astype(jnp.float32)

  def terms(h, kernel, bias, labels):  # [R, C, D] -> per token [R, C]
    r, c = labels.shape
    nll, correct = _token_terms(h.reshape(r * c, d), kernel, bias, labels.reshape(r * c), transposed=transposed,
                                dtype=dtype, label_smoothing=label_smoothing)
    return nll.reshape(r, c), correct.reshape(r, c)
  step = max(1, chunk_size // rows)  # positions per chunk
  if length <= step:
    nll, correct = terms(h, kernel, bias, labels)
  else:
    chunks = -(-length // step)
    pad = chunks * step - length
    split = lambda x: jnp.moveaxis(  # noqa: E731  [R, T, ...] -> [chunks, R, step, ...]
        jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)).reshape(rows, chunks, step, *x.shape[2:]), 1, 0)
    # Saves only each chunk's inputs; the backward pass recomputes that chunk's logits.
    chunk_terms = jax.checkpoint(terms)
    _, (nll, correct) = lax.scan(lambda carry, xs: (carry, chunk_terms(xs[0], kernel, bias, xs[1])),
                                 None, (split(h), split(labels)))
    join = lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, chunks * step)[:, :length]  # noqa: E731
    nll, correct = join(nll), join(correct)  # per token: the padding drops out here
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


@struct.dataclass
class Features:
  """What a language model returns with `logits=False`: the final hidden states and the output projection,
  so the loss can be computed chunk by chunk (`cross_entropy` in zoo.objectives takes it in place of logits)."""
  hidden: jax.Array  # [B, T, D]
  kernel: jax.Array  # [D, V], or [V, D] when transposed (a tied embedding table)
  bias: jax.Array | None = None
  transposed: bool = struct.field(pytree_node=False, default=False)
  dtype: Dtype = struct.field(pytree_node=False, default=jnp.float32)

  def cross_entropy(self, labels, weights, chunk_size: int = CHUNK_TOKENS, label_smoothing: float = 0.0):
    return chunked_cross_entropy(self.hidden, self.kernel, labels, weights, bias=self.bias,
                                 transposed=self.transposed, chunk_size=chunk_size, dtype=self.dtype,
                                 label_smoothing=label_smoothing)


def output(hidden, kernel, bias=None, *, transposed: bool = False, dtype: Dtype = jnp.float32, logits: bool = True):
  """A language model's last step: float32 logits, or (logits=False) the `Features` a chunked loss takes."""
  if logits:
    return logits_from(hidden, kernel, bias, transposed, dtype)
  return Features(hidden, kernel, bias, transposed, dtype)

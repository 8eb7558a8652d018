"""Chunked cross-entropy: the same loss, accuracy and gradients as zoo.objectives.base.cross_entropy on the full
logits, for every chunking, and a fraction of its temporary memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers.losses import chunked_cross_entropy, logits_from
from zoo.objectives.base import cross_entropy

B, T, D, V = 2, 13, 8, 37  # N = 26 tokens


def problem(seed=0, transposed=False):
  """hidden [B, T, D], kernel [D, V] (or [V, D]), bias [V], labels (half of them the argmax, so some tokens are
  correct and some not) and 0/1 weights with zeros."""
  kh, kk, kb, kl, kw, kc = jax.random.split(jax.random.key(seed), 6)
  hidden = jax.random.normal(kh, (B, T, D))
  kernel = jax.random.normal(kk, (V, D) if transposed else (D, V))
  bias = 0.5 * jax.random.normal(kb, (V,))
  argmax = jnp.argmax(reference_logits(hidden, kernel, bias, transposed), -1)
  labels = jnp.where(jax.random.bernoulli(kc, 0.5, (B, T)), argmax, jax.random.randint(kl, (B, T), 0, V))
  weights = jax.random.bernoulli(kw, 0.7, (B, T)).astype(jnp.float32)
  return hidden, kernel, bias, labels, weights


def reference_logits(hidden, kernel, bias, transposed):
  hidden, kernel = hidden.astype(jnp.float32), kernel.astype(jnp.float32)
  return (hidden @ (kernel.T if transposed else kernel)) + bias


def reference(hidden, kernel, bias, labels, weights, transposed):
  return cross_entropy(reference_logits(hidden, kernel, bias, transposed), labels, weights)


@pytest.mark.parametrize('transposed', [False, True])
def test_loss_and_correct_match_cross_entropy_for_every_chunking(transposed):
  hidden, kernel, bias, labels, weights = problem(1, transposed)
  want_loss, want_correct = reference(hidden, kernel, bias, labels, weights, transposed)
  assert 0 < float(want_correct) < float(weights.sum()) and float(weights.sum()) < B * T  # a non-trivial case
  for chunk in (1, 7, 13, 64):  # 7 does not divide N = 26; 13 does; 64 > N: one piece
    loss, correct = jax.jit(chunked_cross_entropy, static_argnames=('transposed', 'chunk_size'))(
        hidden, kernel, labels, weights, bias=bias, transposed=transposed, chunk_size=chunk)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5, err_msg=f'chunk {chunk}')
    np.testing.assert_allclose(float(correct), float(want_correct), rtol=1e-5, err_msg=f'chunk {chunk}')
  # without bias, and under jit
  loss, correct = jax.jit(lambda h, k: chunked_cross_entropy(h, k, labels, weights, transposed=transposed,
                                                             chunk_size=7))(hidden, kernel)
  want_loss, want_correct = reference(hidden, kernel, 0.0, labels, weights, transposed)
  np.testing.assert_allclose([float(loss), float(correct)], [float(want_loss), float(want_correct)], rtol=1e-5)


def test_logits_from_and_bad_chunk_size():
  hidden, kernel, bias, *_ = problem(2, transposed=True)
  np.testing.assert_allclose(logits_from(hidden, kernel, bias, transposed=True),
                             reference_logits(hidden, kernel, bias, True), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='chunk_size'):
    chunked_cross_entropy(hidden, kernel, jnp.zeros((B, T), jnp.int32), jnp.ones((B, T)), transposed=True,
                          chunk_size=0)


@pytest.mark.parametrize('transposed', [False, True])
@pytest.mark.parametrize('chunk', [7, 64])  # scanned with padding; one piece
def test_gradients_match_cross_entropy(transposed, chunk):
  hidden, kernel, bias, labels, weights = problem(3, transposed)

  def chunked(h, k, b):
    return chunked_cross_entropy(h, k, labels, weights, bias=b, transposed=transposed, chunk_size=chunk)[0]

  def full(h, k, b):
    return reference(h, k, b, labels, weights, transposed)[0]

  got = jax.jit(jax.grad(chunked, argnums=(0, 1, 2)))(hidden, kernel, bias)
  want = jax.jit(jax.grad(full, argnums=(0, 1, 2)))(hidden, kernel, bias)
  for name, g, w in zip(('hidden', 'kernel', 'bias'), got, want):
    assert g.shape == w.shape and g.dtype == w.dtype
    assert float(jnp.abs(w).max()) > 0.1, name  # the gradient is not trivially zero
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.abs(w).max()), err_msg=name)
  # tokens of weight 0 get no gradient
  assert float(jnp.abs(got[0][weights == 0]).max()) == 0.0


def test_bfloat16_operands():
  hidden, kernel, bias, labels, weights = problem(4)
  hidden, kernel = hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)

  @jax.jit
  def chunked(h, k):
    return chunked_cross_entropy(h, k, labels, weights, bias=bias, chunk_size=7, dtype=jnp.bfloat16)

  loss, correct = chunked(hidden, kernel)
  want_loss, want_correct = reference(hidden, kernel, bias, labels, weights, False)  # from the same bf16 values
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=2e-2)
  np.testing.assert_allclose(float(correct), float(want_correct), rtol=2e-2)
  dh, dk = jax.jit(jax.grad(lambda h, k: chunked(h, k)[0], argnums=(0, 1)))(hidden, kernel)
  assert dh.dtype == dk.dtype == jnp.bfloat16
  wh, wk = jax.grad(lambda h, k: reference(h, k, bias, labels, weights, False)[0], argnums=(0, 1))(
      hidden.astype(jnp.float32), kernel.astype(jnp.float32))
  for g, w in ((dh, wh), (dk, wk)):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=2e-2, atol=2e-2 * float(jnp.abs(w).max()))


@pytest.mark.parametrize('transposed,with_bias', [(False, True), (True, False)])  # BERT-like; GPT's tied table
def test_gradient_temporary_memory_is_a_few_chunks_not_all_logits(transposed, with_bias):
  v, d, chunk = 32768, 64, 1024
  chunk_logits, full_logits = chunk * v * 4, 8192 * v * 4  # 128 MiB; 1 GiB of float32 logits at N = 8192

  def temp_bytes(loss, n):
    args = (jax.ShapeDtypeStruct((n, d), jnp.float32),
            jax.ShapeDtypeStruct((v, d) if transposed else (d, v), jnp.float32),
            jax.ShapeDtypeStruct((v,), jnp.float32) if with_bias else None,
            jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n,), jnp.float32))
    argnums = (0, 1, 2) if with_bias else (0, 1)
    stats = jax.jit(jax.grad(loss, argnums=argnums)).lower(*args).compile().memory_analysis()
    if stats is None:
      pytest.skip('this backend reports no memory analysis')
    return stats.temp_size_in_bytes

  def chunked(h, k, b, labels, weights):
    return chunked_cross_entropy(h, k, labels, weights, bias=b, transposed=transposed, chunk_size=chunk)[0]

  def full(h, k, b, labels, weights):
    return reference(h, k, 0.0 if b is None else b, labels, weights, transposed)[0]

  full_bytes, chunked_bytes, chunked_twice_bytes = temp_bytes(full, 8192), temp_bytes(chunked, 8192), \
      temp_bytes(chunked, 16384)
  assert full_bytes > full_logits  # the unchunked gradient holds the [N, V] logits (and more)
  # XLA:CPU measured 136 MiB without a bias, 256 MiB with one (it keeps the logits with and without the bias)
  assert chunked_bytes < 3 * chunk_logits  # < 3/8 of the full logits
  # twice the tokens add only O(N D) memory (hidden and its gradient), no more logits
  assert chunked_twice_bytes - chunked_bytes < chunk_logits / 4


def test_low_precision_einsum_gradients_accumulate_in_float32():
  """zoo.layers.matmul: bf16 operands, float32 accumulation in the gradient contractions too."""
  from zoo.layers import matmul
  ks = jax.random.split(jax.random.key(3), 2)
  h = jax.random.normal(ks[0], (4, 64, 32)).astype(jnp.bfloat16)
  table = jax.random.normal(ks[1], (96, 32)).astype(jnp.bfloat16)

  def loss(fn, h, table):
    return jnp.sum(jnp.sin(fn(h, table)))
  got = jax.grad(loss, argnums=(1, 2))(lambda h, t: matmul.einsum('...d,vd->...v', h, t), h, table)
  want = jax.grad(loss, argnums=(1, 2))(
      lambda h, t: jnp.einsum('...d,vd->...v', h.astype(jnp.float32), t.astype(jnp.float32)), h, table)
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=2e-2,
                               atol=2e-2 * float(jnp.max(jnp.abs(w))))

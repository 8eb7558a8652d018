"""Every attention implementation against the xla path, forward and gradients, for every mask kind (the Pallas
kernels in interpret mode on the CPU), and how `auto` chooses."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import parallel
from zoo.layers import kernels
from zoo.layers.kernels import Mask

B, T, N, H = 2, 128, 2, 32


def qkv(s=T, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, T, N, H), dtype), jax.random.normal(ks[1], (B, s, N, H), dtype),
          jax.random.normal(ks[2], (B, s, N, H), dtype))


def packed(length=T, cuts=(50, 90)):
  """Row 0: three documents then padding; row 1: one document filling the row."""
  row = np.zeros(length, np.int32)
  row[:cuts[0]], row[cuts[0]:cuts[1]], row[cuts[1]:length - 10] = 1, 2, 3
  return jnp.asarray(np.stack([row, np.ones(length, np.int32)]))


MASKS = {
    'causal': lambda: Mask(causal=True),
    'padding': lambda: Mask((packed() > 0).astype(jnp.int32), (packed() > 0).astype(jnp.int32)),
    'packed': lambda: Mask(packed(), packed()),
    'packed_causal': lambda: Mask(packed(), packed(), causal=True),
    'cross_padding': lambda: Mask(None, packed(256, (60, 200))),
}


def compare(impl, mask, s=T, rtol=1e-5):
  q, k, v = qkv(s)
  real = np.ones((B, T, 1, 1)) if mask.q_segments is None else np.asarray(mask.q_segments > 0)[:, :, None, None]
  cot = jax.random.normal(jax.random.key(7), q.shape) * real  # padding rows: nothing reads them

  def loss(impl, q, k, v):
    return jnp.sum(kernels.attend(q, k, v, mask, implementation=impl) * cot)
  out = kernels.attend(q, k, v, mask, implementation=impl)
  ref = kernels.attend(q, k, v, mask, implementation='xla')
  np.testing.assert_allclose(np.asarray(out) * real, np.asarray(ref) * real, rtol=rtol, atol=rtol)
  grads = jax.grad(loss, argnums=(1, 2, 3))(impl, q, k, v)
  want = jax.grad(loss, argnums=(1, 2, 3))('xla', q, k, v)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=rtol)


SLOW = pytest.mark.slow  # the fast tier keeps packed_causal (zoo's default: packed rows, a causal LM) per kernel


@pytest.mark.parametrize('kind', [pytest.param('causal', marks=SLOW), pytest.param('packed', marks=SLOW),
                                  'packed_causal', pytest.param('cross_padding', marks=SLOW)])
def test_splash_equals_xla(kind):
  compare('splash', MASKS[kind](), s=256 if kind == 'cross_padding' else T)


@pytest.mark.parametrize('kind', [pytest.param('causal', marks=SLOW), pytest.param('padding', marks=SLOW),
                                  'packed_causal'])
def test_pallas_flash_equals_xla(kind):
  compare('pallas', MASKS[kind]())


def test_splash_under_a_sharded_mesh_equals_xla():
  """The kernels run per shard (shard_map over batch and heads), as on a pod."""
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
    q, k, v = qkv()
    mask = MASKS['packed_causal']()
    real = np.asarray(mask.q_segments > 0)[:, :, None, None]
    out = jax.jit(lambda q, k, v: kernels.attend(q, k, v, mask, implementation='splash'))(q, k, v)
    ref = kernels.attend(q, k, v, mask, implementation='xla')
  np.testing.assert_allclose(np.asarray(out) * real, np.asarray(ref) * real, rtol=1e-5, atol=1e-5)


def test_bfloat16_kernels_match_xla_within_bf16_tolerance():
  q, k, v = qkv(dtype=jnp.bfloat16)
  mask = MASKS['causal']()
  for impl in ('splash', 'pallas'):
    out = kernels.attend(q, k, v, mask, implementation=impl, dtype=jnp.bfloat16)
    ref = kernels.attend(q, k, v, mask, implementation='xla', dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=3e-2, atol=3e-2)


def test_mask_dense_is_the_textbook_mask():
  seg = jnp.array([[1, 1, 2, 0]])
  dense = Mask(seg, seg, causal=True).dense(4, 4)[0, 0]
  want = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(np.asarray(dense), want)
  glm = Mask(prefix=jnp.array([2]), causal=True).dense(4, 4)[0, 0]  # part A (2 tokens) is seen by everyone
  np.testing.assert_array_equal(np.asarray(glm), np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
                                                          bool))
  cross = Mask(None, jnp.array([[1, 2, 0]])).dense(2, 3)
  np.testing.assert_array_equal(np.broadcast_to(cross, (1, 1, 2, 3))[0, 0], np.array([[1, 1, 0], [1, 1, 0]], bool))


@pytest.mark.parametrize('plat, mask, bias, dropout, want', [
    ('tpu', Mask(causal=True), None, False, 'splash'),
    ('tpu', Mask(jnp.ones((B, T), jnp.int32), jnp.ones((B, T), jnp.int32)), None, False, 'splash'),
    ('tpu', Mask(causal=True), jnp.zeros((1, N, T, T)), False, 'xla'),  # T5's relative bias
    ('tpu', Mask(prefix=jnp.ones((B,), jnp.int32), causal=True), None, False, 'xla'),  # GLM
    ('tpu', Mask(causal=True), None, True, 'xla'),  # attention dropout
    ('tpu', jnp.ones((1, 1, T, T), bool), None, False, 'xla'),  # a KV cache's mask
    ('gpu', Mask(causal=True), None, False, 'cudnn'),
    ('gpu', Mask(prefix=jnp.ones((B,), jnp.int32), causal=True), None, False, 'cudnn'),  # as a bias
    ('cpu', Mask(causal=True), None, False, 'xla'),
])
def test_auto_picks_the_fastest_path_that_expresses_the_call(monkeypatch, plat, mask, bias, dropout, want):
  monkeypatch.setattr(kernels, 'platform', lambda: plat)
  q, k, _ = qkv(dtype=jnp.bfloat16)
  assert kernels.choose('auto', q, k, mask, bias, dropout) == want


def test_auto_on_gpu_with_float32_takes_the_pallas_kernel(monkeypatch):
  monkeypatch.setattr(kernels, 'platform', lambda: 'gpu')
  q, k, _ = qkv()
  assert kernels.choose('auto', q, k, Mask(causal=True), None, False) == 'pallas'


def test_an_explicit_kernel_that_cannot_run_says_why():
  q, k, _ = qkv()
  with pytest.raises(ValueError, match=r"model.attention='cudnn' cannot run here: cuDNN runs on NVIDIA GPUs"):
    kernels.choose('cudnn', q, k, Mask(causal=True), None, False)
  with pytest.raises(ValueError, match='do not drop attention weights'):
    kernels.choose('splash', q, k, Mask(causal=True), None, True)
  with pytest.raises(ValueError, match='choose one of auto, xla'):
    kernels.choose('flash', q, k, Mask(causal=True), None, False)


@pytest.mark.parametrize('kind,length,dtype', [('packed_causal', 128, jnp.float32), ('causal_bias', 512, jnp.float32),
                                               ('packed_causal', 256, jnp.bfloat16)])
def test_xla_causal_blocks_equal_the_whole_square(kind, length, dtype):
  """The xla path's causal self-attention in query blocks (each against the keys up to its end) equals the whole
  [T, T] softmax with the upper triangle masked, forward and gradients (float32 1e-5; bfloat16 3e-2), with packed
  segments and with T5's additive bias."""
  assert kernels.causal_blocks(length, length, Mask(causal=True), dropout=False) == (2 if length < 512 else 4)
  ks = jax.random.split(jax.random.key(3), 4)
  q, k, v = (jax.random.normal(kk, (B, length, N, H), dtype) for kk in ks[:3])
  segments = packed(length, (length // 3, length // 2))
  mask = Mask(segments, segments, causal=True) if kind == 'packed_causal' else Mask(causal=True)
  bias = jax.random.normal(ks[3], (1, N, length, length)) if kind == 'causal_bias' else None
  real = np.asarray(mask.q_segments > 0)[:, :, None, None] if mask.q_segments is not None else np.ones((B, length, 1, 1))
  cot = jax.random.normal(jax.random.key(7), q.shape) * real

  @jax.jit
  def both(q, k, v):
    blocked = lambda q, k, v: kernels.xla_attention(q, k, v, mask, bias, scale=H ** -0.5, dtype=dtype)  # noqa: E731
    whole = lambda q, k, v: kernels._dense_attention(  # noqa: E731
        q, k, v, mask.dense(length, length), bias, H ** -0.5, 0.0, None, dtype)
    return [jax.value_and_grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * cot), argnums=(0, 1, 2))(q, k, v)
            for f in (blocked, whole)]
  (got, got_grads), (want, want_grads) = both(q, k, v)
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(float(got), float(want), rtol=tol)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize('segments', [False, True])
def test_the_cudnn_branch_keeps_glm_prefix_bidirectional(segments):
  """The cudnn branch's call, run through jax's XLA implementation of the same function (the CPU has no cuDNN),
  equals the xla path on a GLM mask: part A (keys before the prefix) is seen by every query."""
  q, k, v = qkv()
  prefix = jnp.asarray([40, 70], jnp.int32)
  mask = Mask(packed(), packed(), prefix=prefix, causal=True) if segments else Mask(prefix=prefix, causal=True)
  real = np.ones((B, T, 1, 1)) if not segments else np.asarray(packed() > 0)[:, :, None, None]
  out = kernels.cudnn_attention(q, k, v, mask, None, H ** -0.5, implementation=None)
  ref = kernels.attend(q, k, v, mask, implementation='xla')
  np.testing.assert_allclose(np.asarray(out) * real, np.asarray(ref) * real, rtol=1e-5, atol=1e-5)
  causal = kernels.attend(q, k, v, Mask(packed(), packed(), causal=True) if segments else Mask(causal=True),
                          implementation='xla')
  assert np.abs((np.asarray(ref) - np.asarray(causal)) * real).max() > 0.1  # the prefix matters on these rows

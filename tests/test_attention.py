"""Attention against the textbook formula in plain numpy; masks; multi-head = heads one by one; KV cache."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.layers import attention


def np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def np_attention(q, k, v, mask=None, bias=None, scale=None):
  """softmax(Q K^T * scale + bias, masked) V for each batch element and head, with loops."""
  b, t, n, h = q.shape
  scale = 1 / np.sqrt(h) if scale is None else scale
  out = np.zeros(q.shape)
  for i in range(b):
    for j in range(n):
      logits = q[i, :, j] @ k[i, :, j].T * scale
      if bias is not None:
        logits = logits + bias[0 if bias.shape[0] == 1 else i, j]
      if mask is not None:
        m = np.broadcast_to(mask, (b, n, t, k.shape[1]))[i, j]
        logits = np.where(m, logits, -np.inf)
      out[i, :, j] = np_softmax(logits) @ v[i, :, j]
  return out


def test_scaled_dot_product_attention_matches_formula():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
  k = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
  v = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
  mask = rng.random((2, 1, 5, 7)) < 0.6
  mask[..., 0] = True  # every query sees at least one key
  bias = rng.normal(size=(1, 3, 5, 7)).astype(np.float32)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v), np_attention(q, k, v), atol=1e-5)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, mask), np_attention(q, k, v, mask),
                             atol=1e-5)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, mask, bias, scale=1.0),
                             np_attention(q, k, v, mask, bias, scale=1.0), atol=1e-5)


def test_masks_match_their_definitions():
  seg = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
  got = np.asarray(attention.make_mask(jnp.asarray(seg), causal=True))
  assert got.shape == (2, 1, 6, 6)
  for b in range(2):
    for i in range(6):
      for j in range(6):
        want = seg[b, i] == seg[b, j] and seg[b, i] > 0 and j <= i
        assert got[b, 0, i, j] == want, (b, i, j)
  pad = np.asarray(attention.padding_mask(jnp.array([[1, 1, 0]]) > 0, jnp.array([[1, 0, 1, 1]]) > 0))
  np.testing.assert_array_equal(pad[0, 0], np.outer([1, 1, 0], [1, 0, 1, 1]).astype(bool))
  np.testing.assert_array_equal(np.asarray(attention.causal_mask(4))[0, 0], np.tril(np.ones((4, 4), bool)))
  cross = np.asarray(attention.segment_mask(jnp.array([[1, 2, 0]]), jnp.array([[1, 1, 2, 0]])))
  np.testing.assert_array_equal(cross[0, 0], [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize('cross', [False, True])
def test_multi_head_equals_heads_one_by_one(cross):
  n, h, d = 3, 4, 10
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, d)).astype(np.float32)
  kv = rng.normal(size=(2, 6, d)).astype(np.float32) if cross else None
  mask = (rng.random((2, 1, 5, 6 if cross else 5)) < 0.7)
  mask[..., 0] = True
  mha = attention.MultiHeadAttention(num_heads=n, head_dim=h)
  params = nn.unbox(mha.init(jax.random.key(0), x, kv))['params']
  # Random biases too, so a bias bug can't hide behind zeros.
  params = jax.tree_util.tree_map(lambda a: a + rng.normal(size=a.shape).astype(np.float32) * 0.1, params)
  got = mha.apply({'params': params}, x, kv, mask)
  p = jax.tree_util.tree_map(np.asarray, params)
  src = x if kv is None else kv
  heads = []
  for i in range(n):
    cols = slice(i * h, (i + 1) * h)
    q = x @ p['query']['kernel'][:, cols] + p['query']['bias'][cols]
    k = src @ p['key']['kernel'][:, cols] + p['key']['bias'][cols]
    v = src @ p['value']['kernel'][:, cols] + p['value']['bias'][cols]
    heads.append(np_attention(q[:, :, None], k[:, :, None], v[:, :, None], mask)[:, :, 0])
  want = np.concatenate(heads, -1) @ p['out']['kernel'] + p['out']['bias']
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('rotary', [False, True])
def test_kv_cache_decoding_equals_full_forward(rotary):
  t, d = 6, 16
  x = jax.random.normal(jax.random.key(1), (2, t, d))
  mha = attention.MultiHeadAttention(num_heads=2, head_dim=8, rotary=rotary)
  params = mha.init(jax.random.key(0), x)['params']
  full = mha.apply({'params': params}, x, mask=attention.causal_mask(t), positions=jnp.arange(t)[None])
  cache = mha.init(jax.random.key(0), x, decode=True)['cache']
  # a prefill of 2 tokens, then one token at a time
  steps = [(0, 2)] + [(i, i + 1) for i in range(2, t)]
  outs = []
  for a, b in steps:
    y, mutated = mha.apply({'params': params, 'cache': cache}, x[:, a:b], positions=jnp.arange(a, b)[None],
                           decode=True, mutable=['cache'])
    cache = mutated['cache']
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  assert int(cache['cache_index']) == t


def test_fully_masked_padding_rows_are_finite():
  q = jnp.ones((1, 2, 1, 4))
  mask = jnp.zeros((1, 1, 2, 2), bool)
  assert np.isfinite(np.asarray(attention.dot_product_attention(q, q, q, mask))).all()

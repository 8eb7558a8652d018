"""Position encodings against their formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers import position


def test_sinusoidal_matches_vaswani():
  d, positions = 16, np.arange(50)
  got = np.asarray(position.sinusoidal(jnp.asarray(positions), d))
  for pos in positions:
    for i in range(d // 2):
      angle = pos / 10000 ** (2 * i / d)
      assert abs(got[pos, 2 * i] - math.sin(angle)) < 1e-5
      assert abs(got[pos, 2 * i + 1] - math.cos(angle)) < 1e-5


def test_rotary_rotates_pairs_and_is_relative():
  h = 8
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 3, 1, h)).astype(np.float32)
  pos = np.array([[0, 3, 7]])
  got = np.asarray(position.apply_rotary(jnp.asarray(x), jnp.asarray(pos)))
  for t in range(3):
    for i in range(h // 2):
      theta = pos[0, t] * 10000 ** (-2 * i / h)
      a, b = x[0, t, 0, i], x[0, t, 0, i + h // 2]
      assert abs(got[0, t, 0, i] - (a * math.cos(theta) - b * math.sin(theta))) < 1e-5
      assert abs(got[0, t, 0, i + h // 2] - (b * math.cos(theta) + a * math.sin(theta))) < 1e-5
  q, k = rng.normal(size=(2, 1, 1, 1, h)).astype(np.float32)
  dot = lambda m, n: float(jnp.sum(position.apply_rotary(q, jnp.array([[m]])) *  # noqa: E731
                                   position.apply_rotary(k, jnp.array([[n]]))))
  assert abs(dot(5, 2) - dot(13, 10)) < 1e-4  # depends on m - n only
  assert abs(dot(5, 2) - dot(5, 3)) > 1e-3


def t5_bucket(rel, bidirectional, num_buckets=32, max_distance=128):
  """T5's _relative_position_bucket (mesh_tensorflow), one integer at a time."""
  ret = 0
  n = -rel  # mesh_tensorflow's n = query - key
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0) * num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
  return ret + min(val, num_buckets - 1)


def test_relative_position_bucket_matches_t5():
  rel = np.arange(-300, 301)
  for bidirectional in (True, False):
    got = np.asarray(position.relative_position_bucket(jnp.asarray(rel), bidirectional))
    want = [t5_bucket(int(r), bidirectional) for r in rel]
    np.testing.assert_array_equal(got, want)
  # a few by hand: key 1 after the query is the first "after" bucket; far keys share the last bucket
  b = lambda r: int(position.relative_position_bucket(jnp.array(r), True))  # noqa: E731
  assert (b(0), b(-1), b(1), b(-300), b(300)) == (0, 1, 17, 15, 31)


def test_relative_bias_looks_up_the_bucket_table():
  mod = position.RelativePositionBias(num_heads=3, bidirectional=False)
  qp, kp = jnp.arange(5), jnp.arange(7)
  params = mod.init(jax.random.key(0), qp, kp)
  table = np.asarray(jax.tree_util.tree_leaves(params)[0])
  bias = np.asarray(mod.apply(params, qp, kp))
  assert bias.shape == (1, 3, 5, 7)
  for i in range(5):
    for j in range(7):
      np.testing.assert_allclose(bias[0, :, i, j], table[t5_bucket(j - i, False)])


def test_learned_positions_are_a_table_lookup():
  mod = position.LearnedPositions(max_len=10, features=4)
  params = mod.init(jax.random.key(0), jnp.arange(3))
  table = np.asarray(jax.tree_util.tree_leaves(params)[0])
  np.testing.assert_array_equal(mod.apply(params, jnp.array([[7, 2]])), table[[[7, 2]]])

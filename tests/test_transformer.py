"""Transformer blocks against their definitions: pre-LN and post-LN residual order, gated MLPs."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from zoo.layers import attention, transformer


def layer_norm(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def rms_norm(x, p, eps):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * p['scale']


def randomize(params, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: a + rng.normal(size=a.shape).astype(np.float32) * 0.1,
                                nn.unbox(params))


@pytest.mark.parametrize('pre_ln,norm', [pytest.param(True, 'layernorm', marks=pytest.mark.slow), (False, 'layernorm'),
                                         (True, 'rmsnorm')])
def test_block_residual_order(pre_ln, norm):
  d, eps = 16, 1e-5
  x = np.random.default_rng(1).normal(size=(2, 5, d)).astype(np.float32)
  enc = np.random.default_rng(2).normal(size=(2, 3, d)).astype(np.float32)
  mask = attention.causal_mask(5)
  block = transformer.TransformerBlock(num_heads=2, head_dim=8, mlp_dim=32, norm=norm, norm_eps=eps,
                                       pre_ln=pre_ln, cross_attention=True, use_bias=norm == 'layernorm')
  p = randomize(block.init(jax.random.key(0), x, mask, None, None, enc)['params'])
  got = block.apply({'params': p}, x, mask, None, None, enc)
  ln = layer_norm if norm == 'layernorm' else rms_norm
  attn = attention.MultiHeadAttention(2, 8, use_bias=norm == 'layernorm')
  mlp = transformer.Mlp(32, use_bias=norm == 'layernorm')
  self_attn = lambda h: np.asarray(attn.apply({'params': p['self_attention']}, h, None, mask))  # noqa: E731
  cross = lambda h: np.asarray(attn.apply({'params': p['cross_attention']}, h, enc))  # noqa: E731
  ff = lambda h: np.asarray(mlp.apply({'params': p['mlp']}, h))  # noqa: E731
  h = x
  for name, f in (('self_attention', self_attn), ('cross_attention', cross), ('mlp', ff)):
    n = lambda v: ln(v, p[f'{name}_norm'], eps)  # noqa: E731
    h = h + f(n(h)) if pre_ln else n(h + f(h))
  np.testing.assert_allclose(got, h, atol=1e-4)


@pytest.mark.parametrize('activation', ['geglu', 'swiglu', 'relu'])
def test_mlp_matches_definition(activation):
  x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
  mlp = transformer.Mlp(16, activation=activation)
  p = jax.tree_util.tree_map(np.asarray, randomize(mlp.init(jax.random.key(0), x)['params']))
  lin = lambda name, v: v @ p[name]['kernel'] + p[name]['bias']  # noqa: E731
  gelu_tanh = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))  # noqa: E731
  silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
  if activation == 'relu':
    h = np.maximum(lin('wi', x), 0)
  else:
    act = gelu_tanh if activation == 'geglu' else silu
    h = act(lin('wi_0', x)) * lin('wi_1', x)
  np.testing.assert_allclose(mlp.apply({'params': p}, x), lin('wo', h), atol=1e-5)

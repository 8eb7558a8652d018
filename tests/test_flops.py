"""The FLOPs MFU is computed from: what the step executes, against the textbook count of each family."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest

from zoo import models, objectives
from zoo.train import metrics


def params_of(model, **inputs):
  return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))['params'])


def test_gpt_flops_are_six_per_weight_plus_attention():
  model = models.get_model('gpt', 'tiny', dropout_rate=0.1)  # L=2, D=64, mlp 256, V 512, tied
  L, D, F, V, T = 2, 64, 256, 512, 128
  params = params_of(model, tokens=jnp.ones((1, T), jnp.int32))
  matmuls = L * (4 * D * D + 2 * D * F) + V * D  # q, k, v, out; wi, wo; the tied output projection
  # attention dropout: the xla path computes the whole [T, T] square
  assert metrics.flops_per_token(model, params, T) == 6 * matmuls + 12 * L * T * D
  # a fused kernel skips the causal mask's upper half
  assert metrics.flops_per_token(model, params, T, fused_attention=True) == 6 * matmuls + 6 * L * T * D
  # without dropout the xla path runs 2 query blocks at T = 128 (3/4 of the square), 4 at T = 512 (5/8)
  lean = model.clone(dropout_rate=0.0)
  assert metrics.flops_per_token(lean, params, T) == 6 * matmuls + 9 * L * T * D
  assert metrics.flops_per_token(lean, params, 512) == 6 * matmuls + 7.5 * L * 512 * D


def test_albert_counts_its_shared_layer_once_per_application():
  fields = dict(vocab_size=512, num_layers=4, embed_dim=64, num_heads=4, mlp_dim=128, head='classification')
  shared = models.get_model('bert', 'tiny', share_layers=True, **fields)
  unshared = models.get_model('bert', 'tiny', **fields)
  inputs = dict(tokens=jnp.ones((1, 32), jnp.int32))
  ps, pu = params_of(shared, **inputs), params_of(unshared, **inputs)
  assert sum(x.size for x in jax.tree.leaves(ps)) < sum(x.size for x in jax.tree.leaves(pu))
  assert metrics.flops_per_token(shared, ps, 32) == pytest.approx(metrics.flops_per_token(unshared, pu, 32))


def test_the_mlm_head_counts_the_masked_positions_only():
  model = models.get_model('bert', 'tiny')  # V 512, D 64
  T = 128
  params = params_of(model, tokens=jnp.ones((1, T), jnp.int32))
  mlm = objectives.make('mlm', vocab_size=512, num_special=5)
  frac = mlm.max_predictions(T) / T  # 20 of 128
  full = metrics.flops_per_token(model, params, T)
  lean = metrics.flops_per_token(model, params, T, mlm)
  head = 512 * 64 + 64 * 64  # tied output projection and the transform
  assert full - lean == pytest.approx(6 * head * (1 - frac))


def test_cpu_peak_is_a_measured_rate():
  peak = metrics.cpu_peak('float32', n=256, repeats=2)
  assert 1e9 < peak < 1e14  # FLOP/s: a real CPU, not a constant from a table

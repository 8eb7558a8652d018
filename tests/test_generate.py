"""Generation: cached decoding equals full forward passes; top-k / top-p never leave their sets; temperature
0 is greedy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import generate, models


@pytest.mark.parametrize('family,kw', [('gpt', {}), ('rnn_lm', {'cell': 'gru'})])
def test_greedy_with_the_cache_equals_greedy_by_full_forward_passes(family, kw):
  model = models.get_model(family, 'tiny', dropout_rate=0.0, **kw)
  prompt = jax.random.randint(jax.random.key(1), (2, 5), 20, 512)
  params = model.init(jax.random.key(0), prompt)['params']
  got = np.asarray(generate.sample_lm(model, params, prompt, jax.random.key(2), max_new=8, temperature=0.0,
                                      eos_id=-1))
  seq = prompt
  forward = jax.jit(lambda x: model.apply({'params': params}, x))
  for _ in range(8):
    seq = jnp.concatenate([seq, jnp.argmax(forward(seq)[:, -1:], -1).astype(jnp.int32)], axis=1)
  np.testing.assert_array_equal(got, np.asarray(seq[:, 5:]))


def test_top_k_and_top_p_never_sample_outside_their_sets():
  logits = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02]))[None].repeat(4000, 0)
  keys = jax.random.split(jax.random.key(0), 3)
  top_k = jax.random.categorical(keys[0], generate.filter_logits(logits, top_k=3))
  assert set(np.unique(top_k)) == {0, 1, 2}
  top_p = jax.random.categorical(keys[1], generate.filter_logits(logits, top_p=0.7))  # 0.4 + 0.25 < 0.7
  assert set(np.unique(top_p)) == {0, 1, 2}
  assert np.mean(np.asarray(top_p) == 0) == pytest.approx(0.4 / 0.8, abs=0.03)  # renormalised
  tiny_p = jax.random.categorical(keys[2], generate.filter_logits(logits, top_p=0.1))
  assert set(np.unique(tiny_p)) == {0}  # the nucleus keeps at least the top token
  greedy = jax.random.categorical(keys[2], generate.filter_logits(logits, temperature=0.0))
  assert set(np.unique(greedy)) == {0}


def test_low_temperature_approaches_greedy_and_eos_stops_a_row():
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0)
  prompt = jax.random.randint(jax.random.key(1), (3, 4), 20, 512)
  params = model.init(jax.random.key(0), prompt)['params']
  greedy = generate.sample_lm(model, params, prompt, jax.random.key(5), max_new=6, temperature=0.0, eos_id=-1)
  cold = generate.sample_lm(model, params, prompt, jax.random.key(5), max_new=6, temperature=1e-4, eos_id=-1)
  np.testing.assert_array_equal(greedy, cold)
  eos = int(greedy[0, 2])  # pretend the third greedy token of row 0 is [EOS]
  stopped = np.asarray(generate.sample_lm(model, params, prompt, jax.random.key(5), max_new=6, temperature=0.0,
                                          eos_id=eos))
  first = int(np.flatnonzero(np.asarray(greedy[0]) == eos)[0])
  assert (stopped[0, first + 1:] == 0).all() and stopped[0, first] == eos

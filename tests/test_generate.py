"""Generation: cached decoding equals full forward passes; top-k / top-p never leave their sets; temperature
0 is greedy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import decoding, models


@pytest.mark.parametrize('family,kw', [('gpt', {}), pytest.param('rnn_lm', {'cell': 'gru'}, marks=pytest.mark.slow)])
def test_greedy_with_the_cache_equals_greedy_by_full_forward_passes(family, kw):
  model = models.get_model(family, 'tiny', dropout_rate=0.0, **kw)
  prompt = jax.random.randint(jax.random.key(1), (2, 5), 20, 512)
  params = model.init(jax.random.key(0), prompt)['params']
  got = np.asarray(decoding.sample_lm(model, params, prompt, jax.random.key(2), max_new=8, temperature=0.0,
                                      eos_id=-1))
  # full forward passes over a fixed-length row (one compilation): a causal model's output at t ignores what
  # follows t, so the zeros after the tokens so far change nothing
  seq = jnp.zeros((2, 13), jnp.int32).at[:, :5].set(prompt)
  forward = jax.jit(lambda x: model.apply({'params': params}, x))
  for t in range(5, 13):
    seq = seq.at[:, t].set(jnp.argmax(forward(seq)[:, t - 1], -1).astype(jnp.int32))
  np.testing.assert_array_equal(got, np.asarray(seq[:, 5:]))


def test_top_k_and_top_p_never_sample_outside_their_sets():
  logits = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02]))[None].repeat(4000, 0)
  keys = jax.random.split(jax.random.key(0), 3)
  top_k = jax.random.categorical(keys[0], decoding.filter_logits(logits, top_k=3))
  assert set(np.unique(top_k)) == {0, 1, 2}
  top_p = jax.random.categorical(keys[1], decoding.filter_logits(logits, top_p=0.7))  # 0.4 + 0.25 < 0.7
  assert set(np.unique(top_p)) == {0, 1, 2}
  assert np.mean(np.asarray(top_p) == 0) == pytest.approx(0.4 / 0.8, abs=0.03)  # renormalised
  tiny_p = jax.random.categorical(keys[2], decoding.filter_logits(logits, top_p=0.1))
  assert set(np.unique(tiny_p)) == {0}  # the nucleus keeps at least the top token
  greedy = jax.random.categorical(keys[2], decoding.filter_logits(logits, temperature=0.0))
  assert set(np.unique(greedy)) == {0}


@pytest.mark.slow
def test_low_temperature_approaches_greedy_and_eos_stops_a_row():
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0)
  prompt = jax.random.randint(jax.random.key(1), (3, 4), 20, 512)
  params = model.init(jax.random.key(0), prompt)['params']
  greedy = decoding.sample_lm(model, params, prompt, jax.random.key(5), max_new=6, temperature=0.0, eos_id=-1)
  cold = decoding.sample_lm(model, params, prompt, jax.random.key(5), max_new=6, temperature=1e-4, eos_id=-1)
  np.testing.assert_array_equal(greedy, cold)
  eos = int(greedy[0, 2])  # pretend the third greedy token of row 0 is [EOS]
  stopped = np.asarray(decoding.sample_lm(model, params, prompt, jax.random.key(5), max_new=6, temperature=0.0,
                                          eos_id=eos))
  first = int(np.flatnonzero(np.asarray(greedy[0]) == eos)[0])
  assert (stopped[0, first + 1:] == 0).all() and stopped[0, first] == eos


def _t5():
  model = models.get_model('t5', 'tiny', dropout_rate=0.0)
  src = jax.random.randint(jax.random.key(1), (3, 7), 20, 512).at[0, 5:].set(0)  # a padded row too
  params = model.init(jax.random.key(0), src, src)['params']
  return model, params, src


def _sequence_logp(model, params, src, seqs, start_id):
  """log p(seqs | src) by one teacher-forced forward pass."""
  dec_in = jnp.concatenate([jnp.full((seqs.shape[0], 1), start_id, jnp.int32), seqs[:, :-1]], axis=1)
  logp = jax.nn.log_softmax(model.apply({'params': params}, src, dec_in), -1)
  return jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1)


@pytest.mark.slow
def test_seq2seq_greedy_equals_full_forward_and_one_beam_equals_greedy():
  model, params, src = _t5()
  greedy = np.asarray(decoding.greedy_seq2seq(model, params, src, max_len=6, start_id=0, eos_id=-1))
  seq = jnp.zeros((3, 7), jnp.int32)  # start token 0, then the tokens so far (the decoder is causal)
  forward = jax.jit(lambda tgt: model.apply({'params': params}, src, tgt))
  for t in range(1, 7):  # greedy by full forward passes
    seq = seq.at[:, t].set(jnp.argmax(forward(seq)[:, t - 1], -1).astype(jnp.int32))
  np.testing.assert_array_equal(greedy, np.asarray(seq[:, 1:]))
  one, _ = decoding.beam_search(model, params, src, max_len=6, num_beams=1, alpha=0.0, start_id=0, eos_id=-1)
  np.testing.assert_array_equal(np.asarray(one), greedy)


@pytest.mark.slow
def test_beam_search_finds_likelier_sequences_and_scores_them_right():
  model, params, src = _t5()
  greedy = decoding.greedy_seq2seq(model, params, src, max_len=5, start_id=0, eos_id=-1)
  beams, scores = decoding.beam_search(model, params, src, max_len=5, num_beams=4, alpha=0.0, start_id=0,
                                       eos_id=-1)
  exact = _sequence_logp(model, params, src, beams, 0)
  np.testing.assert_allclose(scores, exact, atol=1e-4)  # the score is the sequence's log-probability
  assert (np.asarray(exact) >= np.asarray(_sequence_logp(model, params, src, greedy, 0)) - 1e-5).all()
  # with [EOS]: a finished beam is padded after its [EOS] and scored with the length penalty
  eos = int(np.asarray(beams)[0, 2])
  ended, s = decoding.beam_search(model, params, src, max_len=5, num_beams=4, alpha=0.6, start_id=0, eos_id=eos)
  ended = np.asarray(ended)
  for row in range(3):
    hits = np.flatnonzero(ended[row] == eos)
    if len(hits):
      n = hits[0] + 1
      assert (ended[row, n:] == 0).all()
      lp = _sequence_logp(model, params, src[row:row + 1], jnp.asarray(ended[row:row + 1, :n]), 0)
      np.testing.assert_allclose(s[row], lp[0] / decoding.length_penalty(n, 0.6), atol=1e-4)


@pytest.mark.slow
def test_seq2seq_sampling_stays_in_top_k():
  model, params, src = _t5()
  out = decoding.sample_seq2seq(model, params, src, jax.random.key(3), max_len=4, temperature=1.0, top_k=1,
                                start_id=0, eos_id=-1)
  np.testing.assert_array_equal(out, decoding.greedy_seq2seq(model, params, src, 4, start_id=0, eos_id=-1))


def test_glm_fills_a_blank_like_full_forward_passes():
  from zoo.data import tokenizer as tk
  model = models.get_model('glm', 'tiny', dropout_rate=0.0)
  context = jax.random.randint(jax.random.key(1), (2, 6), 20, 512).at[:, 2].set(tk.MASK)
  params = model.init(jax.random.key(0), context, context_length=jnp.array([6, 6]))['params']
  mask_at = jnp.array([2, 2])
  got = np.asarray(decoding.sample_glm(model, params, context, jax.random.key(0), max_new=5, mask_position=mask_at,
                                       eos_id=-1))
  # part A, then [sop] and the tokens so far, at the [MASK]'s position, block positions 1, 2, ... (part B is
  # causal: the zeros after the tokens so far change nothing)
  seq = jnp.zeros((2, 12), jnp.int32).at[:, :6].set(context).at[:, 6].set(tk.SOP)
  pos = jnp.concatenate([jnp.arange(6), jnp.full((6,), 2)])[None].repeat(2, 0)
  block = jnp.concatenate([jnp.zeros(6, jnp.int32), jnp.arange(1, 7)])[None].repeat(2, 0)
  forward = jax.jit(lambda x: model.apply({'params': params}, x, positions=pos, block_positions=block,
                                          context_length=jnp.array([6, 6])))
  for t in range(7, 12):
    seq = seq.at[:, t].set(jnp.argmax(forward(seq)[:, t - 1], -1).astype(jnp.int32))
  np.testing.assert_array_equal(got, np.asarray(seq[:, 7:]))

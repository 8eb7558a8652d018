"""Generation: cached decoding equals full forward passes; top-k / top-p never leave their sets; temperature
0 is greedy; ids past the tokenizer are never picked."""
import flax.linen as nn
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


_FILTERS = ({'temperature': 0.0}, {'temperature': 3.0}, {'top_k': 3}, {'top_p': 0.7})


def test_ids_past_vocab_size_are_never_picked():
  # the likeliest ids are the last ones: every pick below 5 of 7 is one the mask made
  logits = jnp.log(jnp.array([0.02, 0.03, 0.05, 0.1, 0.15, 0.25, 0.4]))[None].repeat(2000, 0)
  picks = jax.jit(lambda key: jnp.stack([jax.random.categorical(key, decoding.filter_logits(logits, **kw,
                                                                                            vocab_size=v))
                                         for kw in _FILTERS for v in (None, 5)]))
  unmasked, masked = np.asarray(picks(jax.random.key(0))).reshape(len(_FILTERS), 2, -1).transpose(1, 0, 2)
  assert (unmasked >= 5).any(axis=1).all()  # without the mask, ids 5 and 6 are drawn by every filter
  assert masked.max() < 5
  assert set(np.unique(masked[0])) == {4}  # greedy: the argmax of the ids left


class _Biased(nn.Module):
  """A model of every kind decoding.py drives (LM, encoder-decoder, GLM) with a decode cache, whose logits are
  0, 1, ..., 15: the highest ids win (each of 10..15 together is > 99% likely at temperature 2) unless masked."""
  vocab_size: int = 16

  def __call__(self, *args, decode=False, **kwargs):
    return self.decode(args[-1], decode=decode)

  def encode(self, tokens):
    return jnp.zeros((*tokens.shape, 4))

  @nn.compact
  def decode(self, targets, *args, decode=False, **kwargs):
    if decode:
      self.variable('cache', 'steps', lambda: jnp.zeros((), jnp.int32))
    bias = self.param('bias', lambda key: jnp.arange(self.vocab_size, dtype=jnp.float32))
    return jnp.broadcast_to(bias, (*targets.shape, self.vocab_size))


@pytest.mark.parametrize('kind', ['lm', 'lm greedy', 'seq2seq', 'glm', 'beam'])
def test_every_decoder_masks_ids_past_vocab_size(kind):
  model, n = _Biased(), 10  # 16 outputs, a "tokenizer" of 10 ids
  tokens = jnp.full((4, 3), 5, jnp.int32)
  params = model.init(jax.random.key(0), tokens, tokens)['params']
  key = jax.random.key(1)
  if kind == 'beam':
    out, scores = decoding.beam_search(model, params, tokens, 6, num_beams=3, alpha=0.0, eos_id=-1, vocab_size=n)
    best = jax.nn.log_softmax(jnp.arange(n, dtype=jnp.float32))[-1] * 6  # log-probabilities over the n ids
    np.testing.assert_allclose(scores, np.full(4, best), rtol=1e-5)
  elif kind.startswith('lm'):
    out = decoding.sample_lm(model, params, tokens, key, 6, 0.0 if 'greedy' in kind else 2.0, eos_id=-1,
                             vocab_size=n)
  elif kind == 'seq2seq':
    out = decoding.sample_seq2seq(model, params, tokens, key, 6, 2.0, top_p=0.9, eos_id=-1, vocab_size=n)
  else:
    out = decoding.sample_glm(model, params, tokens, key, 6, temperature=2.0, top_k=8, eos_id=-1, vocab_size=n)
  out = np.asarray(out)
  assert out.shape == (4, 6) and out.max() < n
  assert (out == n - 1).any()  # the likeliest id left


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
  # sources padded to their length bucket (as zoo.generate pads them) decode the same
  padded = decoding.pad_rows([list(np.asarray(r)[np.asarray(r) != 0]) for r in src])
  assert padded.shape == (3, 16)
  np.testing.assert_array_equal(
      np.asarray(decoding.greedy_seq2seq(model, params, jnp.asarray(padded), max_len=6, start_id=0, eos_id=-1)), greedy)


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


def _penalized_reference(logits, seen_ids, penalty):
  """CTRL's repetition penalty in numpy, as transformers' RepetitionPenaltyLogitsProcessor applies it."""
  out = np.array(logits, np.float64)
  for i in set(int(t) for t in seen_ids):
    out[i] = out[i] / penalty if out[i] > 0 else out[i] * penalty
  return out


def test_prompts_of_mixed_lengths_decode_as_each_alone_with_bounded_compilations():
  """Prompts padded to length buckets (the rest of each prompt fed through the cached step) give what each prompt
  gives alone, and 20 prompts of 20 lengths compile the decoder at most 4 times (buckets 16, 32, 64)."""
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0)
  params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(20, 512, n)) for n in range(3, 60, 3)] + [[7]]  # 20 lengths, 1..57
  before = decoding.sample_lm._cache_size()
  got = {}
  for rows, tokens, lengths, prefill in decoding.lm_batches(prompts, 5, model.max_len):
    out = np.asarray(decoding.sample_lm(model, params, jnp.asarray(tokens), jax.random.key(0), 5, 0.0, eos_id=-1,
                                        lengths=jnp.asarray(lengths), prefill=prefill))
    got.update(zip(rows, out))
  assert decoding.sample_lm._cache_size() - before <= 4  # one compilation per bucket, not per length
  for i in (4, 19):  # rows of buckets 16 and 64 (prefill 1 and 32) equal their prompt decoded alone
    alone = decoding.sample_lm(model, params, jnp.asarray([prompts[i]], jnp.int32), jax.random.key(0), 5, 0.0,
                               eos_id=-1)
    np.testing.assert_array_equal(got[i], np.asarray(alone)[0], err_msg=f'prompt {i} ({len(prompts[i])} tokens)')


def test_generate_compiles_at_most_four_times_for_twenty_prompt_lengths(tokenizer_path):
  """zoo.generate on a stream of 20 prompts of 20 different lengths, one call each."""
  import ml_collections
  from zoo import api
  from zoo.data import tokenizer as tk
  tok = tk.Tokenizer.load(tokenizer_path)
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0, vocab_size=tok.vocab_size)
  params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  loaded = api.Loaded(model=model, params=params, tokenizer=tok, step=0, run=None,
                      config=ml_collections.ConfigDict({'model': {'family': 'gpt'}}))
  words = 'the quick brown fox jumps over a lazy dog while zoo models speak of many things'.split()
  prompts = [' '.join(words[:n % len(words) + 1] + words[:n // len(words)]) for n in range(20)]
  lengths = {len(tok.encode(p)) for p in prompts}
  assert len(lengths) == 20
  before = decoding.sample_lm._cache_size()
  texts = [zoo_generate(loaded, p) for p in prompts]
  assert decoding.sample_lm._cache_size() - before <= 4, sorted(lengths)
  assert all(isinstance(t, str) for t in texts) and any(texts)


def zoo_generate(loaded, prompt):
  from zoo import generation
  return generation.generate(loaded, [prompt], max_new=4)[0]


def test_repetition_penalty_as_transformers_and_greedy_by_full_forward_passes():
  logits = np.random.default_rng(1).normal(size=(2, 12)).astype(np.float32)
  seen = [[1, 3, 3, 7], [0, 11]]
  mask = decoding.seen_tokens(jnp.asarray([[1, 3, 3, 7], [0, 11, 0, 0]]), jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0]]),
                              12)
  got = np.asarray(decoding.penalize_repeats(jnp.asarray(logits), mask, 1.7))
  for r in range(2):
    np.testing.assert_allclose(got[r], _penalized_reference(logits[r], seen[r], 1.7), rtol=1e-6)
  # greedy decoding with the penalty equals argmax of the penalized logits of full forward passes, the prompt's
  # tokens and those generated so far counted (rows of different lengths, padded to one bucket)
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0)
  params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params']
  prompts = [[30, 31, 30, 32], [40, 41]]
  (rows, tokens, lengths, prefill), = decoding.lm_batches(prompts, 6, model.max_len)
  out = np.asarray(decoding.sample_lm(model, params, jnp.asarray(tokens), jax.random.key(0), 6, 0.0, eos_id=-1,
                                      lengths=jnp.asarray(lengths), prefill=prefill, repetition_penalty=2.0))
  forward = jax.jit(lambda x: model.apply({'params': params}, x))
  plain = np.asarray(decoding.sample_lm(model, params, jnp.asarray(tokens), jax.random.key(0), 6, 0.0, eos_id=-1,
                                        lengths=jnp.asarray(lengths), prefill=prefill))
  for r, prompt in zip(rows, prompts):
    seq = list(prompt)
    for _ in range(6):
      x = np.zeros((1, 16), np.int32)
      x[0, :len(seq)] = seq
      step = np.asarray(forward(jnp.asarray(x)))[0, len(seq) - 1]
      seq.append(int(np.argmax(_penalized_reference(step, seq, 2.0))))
    np.testing.assert_array_equal(out[r], seq[len(prompt):])
  assert (out != plain).any()  # the penalty changed the choice somewhere


def test_padded_contexts_decode_as_unpadded():
  from zoo.data import tokenizer as tk
  glm = models.get_model('glm', 'tiny', dropout_rate=0.0)
  context = jax.random.randint(jax.random.key(1), (2, 6), 20, 512).at[:, 2].set(tk.MASK)
  params = glm.init(jax.random.key(0), context, context_length=jnp.array([6, 6]))['params']
  at = jnp.array([2, 2])
  exact = decoding.sample_glm(glm, params, context, jax.random.key(0), 5, at, eos_id=-1)
  padded = jnp.zeros((2, 16), jnp.int32).at[:, :6].set(context).at[:, 9].set(99)  # junk in the padding
  got = decoding.sample_glm(glm, params, padded, jax.random.key(0), 5, at, eos_id=-1,
                            context_length=jnp.array([6, 6]))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(exact))

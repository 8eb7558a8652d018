"""Decoding from trained models, batched, jit-compiled and with the KV cache (or recurrent state):

- `sample_lm`: GPT and the RNN LMs; `sample_seq2seq`: T5, BART and the RNN encoder-decoder; `sample_glm`:
  GLM filling a blank. Each is greedy at temperature 0, else samples with temperature, top-k and top-p.
- `beam_search`: the encoder-decoders, with GNMT's length penalty.

Each takes `vocab_size`, the number of ids the tokenizer can decode: the logits of the ids past it (the
embedding's padding rows, model.vocab_size being rounded up to a multiple of 128) are masked before any choice,
so they are never picked. It is static: one compilation per value, and a loaded model always passes the same.

These work on token ids. `zoo.generate(loaded, prompts)` (zoo.api) goes from text to text with a trained run's
tokenizer, and `python -m zoo.sample --workdir=DIR --prompt="..."` does so from the command line.

>>> import jax, jax.numpy as jnp
>>> from zoo import models
>>> model = models.get_model('t5', 'tiny', dropout_rate=0.0)
>>> src = jnp.ones((2, 8), jnp.int32)
>>> params = model.init(jax.random.key(0), src, src)['params']
>>> greedy_seq2seq(model, params, src, max_len=5).shape
(2, 5)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from zoo.data import tokenizer as tk

_NEG = -1e30


def mask_past(logits, vocab_size: int | None):
  """Logits [..., V] with the ids >= vocab_size set to -inf-ish (none when vocab_size is None or >= V)."""
  if vocab_size is None or vocab_size >= logits.shape[-1]:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, jnp.asarray(_NEG, logits.dtype))


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  vocab_size: int | None = None):
  """Logits [..., V] scaled by 1/temperature, with every token outside the top k, or outside the smallest set
  whose probability reaches top_p (the nucleus), or past vocab_size, set to -inf-ish. temperature 0 keeps only
  the argmax (of the ids below vocab_size)."""
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    best = jnp.argmax(mask_past(logits, vocab_size), axis=-1)[..., None]
    return jnp.where(jnp.arange(logits.shape[-1]) == best, 0.0, _NEG)
  logits = mask_past(logits / temperature, vocab_size)  # after the scaling: -1e30 / a small temperature is -inf
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, _NEG, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
    keep = before < top_p  # the nucleus: always at least the top token
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, _NEG, logits)
  return logits


@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'temperature', 'top_k', 'top_p', 'eos_id',
                                             'vocab_size'))
def sample_lm(model, params, prompt, rng, max_new: int, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0, eos_id: int = tk.EOS, vocab_size: int | None = None):
  """Continue `prompt` [B, P] (every row the same length) by `max_new` tokens from a decoder-only model with
  its cache: the prompt in one pass, then a token at a time. temperature=0 is greedy. After [EOS] a row emits
  [PAD]; ids >= vocab_size are never emitted. Returns [B, max_new] int32."""
  b, p = prompt.shape
  cache = model.init(jax.random.key(0), jnp.zeros((b, p + max_new), jnp.int32), decode=True)['cache']
  logits, mutated = model.apply({'params': params, 'cache': cache}, prompt, decode=True, mutable=['cache'])

  def step(carry, key):
    cache, logits, done = carry
    token = jnp.where(done, 0, _pick(logits, key, temperature, top_k, top_p, vocab_size))
    done = done | (token == eos_id)
    logits, mutated = model.apply({'params': params, 'cache': cache}, token[:, None], decode=True,
                                  mutable=['cache'])
    return (mutated['cache'], logits[:, -1], done), token

  keys = jax.random.split(rng, max_new)
  _, out = jax.lax.scan(step, (mutated['cache'], logits[:, -1], jnp.zeros((b,), bool)), keys)
  return out.T


def _pick(logits, key, temperature, top_k, top_p, vocab_size):
  return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p, vocab_size)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'max_len', 'temperature', 'top_k', 'top_p', 'start_id',
                                             'eos_id', 'vocab_size'))
def sample_seq2seq(model, params, tokens, rng, max_len: int, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, start_id: int = tk.BOS, eos_id: int = tk.EOS, vocab_size: int | None = None):
  """Encode `tokens` [B, S] (0 = padding) once, then emit a token at a time through the decoder's cache:
  greedy with temperature 0, else sampled (top-k / top-p); after [EOS] a row emits [PAD]; ids >= vocab_size are
  never emitted. Returns [B, max_len].

  `start_id` is what the decoder read first in training: [BOS] for the denoising objective, [PAD] (0) for
  T5's span corruption.
  """
  b = tokens.shape[0]
  source = (tokens != getattr(model, 'pad_id', 0)).astype(jnp.int32)
  encoded = model.apply({'params': params}, tokens, method='encode')
  cache = model.init(jax.random.key(0), tokens, jnp.zeros((b, max_len), jnp.int32), decode=True)['cache']

  def step(carry, key):
    cache, previous, done = carry
    logits, mutated = model.apply({'params': params, 'cache': cache}, previous[:, None], encoded, source,
                                  method='decode', decode=True, mutable=['cache'])
    token = jnp.where(done, 0, _pick(logits[:, -1], key, temperature, top_k, top_p, vocab_size))
    return (mutated['cache'], token, done | (token == eos_id)), token

  start = jnp.full((b,), start_id, jnp.int32)
  _, out = jax.lax.scan(step, (cache, start, jnp.zeros((b,), bool)), jax.random.split(rng, max_len))
  return out.T


def greedy_seq2seq(model, params, tokens, max_len: int, start_id: int = tk.BOS, eos_id: int = tk.EOS,
                   vocab_size: int | None = None):
  """`sample_seq2seq` at temperature 0: the most likely token at each step. Returns [B, max_len] int32."""
  return sample_seq2seq(model, params, tokens, jax.random.key(0), max_len, 0.0, start_id=start_id, eos_id=eos_id,
                        vocab_size=vocab_size)


def length_penalty(length, alpha: float):
  """GNMT's ((5 + length) / 6) ** alpha: a beam's log-probability is divided by it (alpha 0: none)."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, index, batch: int, beams: int):
  """Rows of every [B*K, ...] leaf (batch axis 0, or 1 under scanned layers) reordered by index [B, K]."""
  def gather(x):
    if x.ndim >= 2 and x.shape[0] == batch * beams:
      axis = 0
    elif x.ndim >= 3 and x.shape[1] == batch * beams:
      axis = 1
    else:
      return x
    x = jnp.moveaxis(x, axis, 0).reshape(batch, beams, *x.shape[:axis], *x.shape[axis + 1:])
    x = jnp.take_along_axis(x, index.reshape(batch, beams, *([1] * (x.ndim - 2))), axis=1)
    return jnp.moveaxis(x.reshape(batch * beams, *x.shape[2:]), 0, axis)
  return jax.tree.map(gather, tree)


@functools.partial(jax.jit, static_argnames=('model', 'max_len', 'num_beams', 'alpha', 'start_id', 'eos_id',
                                             'vocab_size'))
def beam_search(model, params, tokens, max_len: int, num_beams: int = 4, alpha: float = 0.6,
                start_id: int = tk.BOS, eos_id: int = tk.EOS, vocab_size: int | None = None):
  """Beam search for the encoder-decoders, with the decoder cache (one row per beam) and GNMT's length penalty.

  Each step extends every live beam by every token, keeps the `num_beams` best that do not end in [EOS] as the
  live beams, and moves those that do into the finished set (scored log p / length_penalty). Runs max_len steps;
  a row with no finished beam returns its best live one. Returns (sequences [B, max_len] (PAD after [EOS]),
  scores [B]). With num_beams=1 (and no [EOS] in the way) this is greedy decoding. The ids >= vocab_size are
  masked before the log-softmax: the scores are log-probabilities over the ids the tokenizer can decode.
  """
  b, k = tokens.shape[0], num_beams
  source = jnp.repeat((tokens != getattr(model, 'pad_id', 0)).astype(jnp.int32), k, axis=0)
  encoded = jnp.repeat(model.apply({'params': params}, tokens, method='encode'), k, axis=0)
  cache = model.init(jax.random.key(0), tokens[:1].repeat(b * k, 0), jnp.zeros((b * k, max_len), jnp.int32),
                     decode=True)['cache']
  neg = jnp.float32(-1e9)
  state = dict(
      cache=cache, last=jnp.full((b * k,), start_id, jnp.int32),
      seqs=jnp.zeros((b, k, max_len), jnp.int32),
      logp=jnp.where(jnp.arange(k) == 0, 0.0, neg)[None].repeat(b, 0),  # one live beam at first: no duplicates
      done_seqs=jnp.zeros((b, k, max_len), jnp.int32), done_scores=jnp.full((b, k), neg))

  def step(state, i):
    logits, mutated = model.apply({'params': params, 'cache': state['cache']}, state['last'][:, None], encoded,
                                  source, method='decode', decode=True, mutable=['cache'])
    v = logits.shape[-1]
    logp = jax.nn.log_softmax(mask_past(logits[:, -1].astype(jnp.float32), vocab_size)).reshape(b, k, v)
    total = (state['logp'][:, :, None] + logp).reshape(b, k * v)
    top, idx = jax.lax.top_k(total, 2 * k)  # enough that k of them do not end the beam
    beam, token = idx // v, (idx % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(state['seqs'], beam[:, :, None], axis=1).at[:, :, i].set(token)
    ended = token == eos_id
    # finished: the best k of the old finished and the candidates that just emitted [EOS]
    scores = jnp.where(ended, top / length_penalty(i + 1.0, alpha), neg)
    all_scores = jnp.concatenate([state['done_scores'], scores], axis=1)
    all_seqs = jnp.concatenate([state['done_seqs'], seqs], axis=1)
    done_scores, keep = jax.lax.top_k(all_scores, k)
    done_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
    # live: the best k candidates that did not end
    live_logp, pick = jax.lax.top_k(jnp.where(ended, neg, top), k)
    parent = jnp.take_along_axis(beam, pick, axis=1)
    new = dict(cache=_gather_beams(mutated['cache'], parent, b, k),
               last=jnp.take_along_axis(token, pick, axis=1).reshape(b * k),
               seqs=jnp.take_along_axis(seqs, pick[:, :, None], axis=1), logp=live_logp,
               done_seqs=done_seqs, done_scores=done_scores)
    return new, None

  state, _ = jax.lax.scan(step, state, jnp.arange(max_len))
  live_scores = state['logp'] / length_penalty(float(max_len), alpha)
  any_done = state['done_scores'][:, 0] > neg / 2
  best_done, best_live = state['done_seqs'][:, 0], state['seqs'][:, 0]
  seqs = jnp.where(any_done[:, None], best_done, best_live)
  scores = jnp.where(any_done, state['done_scores'][:, 0], live_scores[:, 0])
  after_eos = jnp.cumsum(jnp.cumsum(seqs == eos_id, axis=1), axis=1) > 1  # PAD after the first [EOS]
  return jnp.where(after_eos, 0, seqs), scores


@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'temperature', 'top_k', 'top_p', 'eos_id',
                                             'vocab_size'))
def sample_glm(model, params, context, rng, max_new: int, mask_position=None, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, eos_id: int = tk.EOP, vocab_size: int | None = None):
  """Fill a blank with GLM: `context` [B, P] is part A (every row P long) holding a [MASK] at `mask_position`
  [B] (default: the last token). The span is generated after [sop], each token at the [MASK]'s position with
  block positions 1, 2, ..., until [eop] (`eos_id`) or max_new tokens; ids >= vocab_size are never emitted.
  Returns [B, max_new] ([PAD] after the end).
  """
  b, p = context.shape
  mask_position = jnp.full((b,), p - 1, jnp.int32) if mask_position is None else mask_position
  ctx_len = jnp.full((b,), p, jnp.int32)
  cache = model.init(jax.random.key(0), jnp.zeros((b, p + max_new), jnp.int32), context_length=ctx_len,
                     decode=True)['cache']
  _, mutated = model.apply({'params': params, 'cache': cache}, context, context_length=ctx_len, decode=True,
                           mutable=['cache'])

  def feed(cache, token, block):
    logits, mutated = model.apply({'params': params, 'cache': cache}, token[:, None],
                                  positions=mask_position[:, None], block_positions=jnp.full((b, 1), block),
                                  context_length=ctx_len, decode=True, mutable=['cache'])
    return mutated['cache'], logits[:, -1]

  cache, logits = feed(mutated['cache'], jnp.full((b,), tk.SOP, jnp.int32), 1)

  def step(carry, xs):
    cache, logits, done = carry
    key, i = xs
    token = jnp.where(done, 0, _pick(logits, key, temperature, top_k, top_p, vocab_size))
    cache, logits = feed(cache, token, i + 2)
    return (cache, logits, done | (token == eos_id)), token

  _, out = jax.lax.scan(step, (cache, logits, jnp.zeros((b,), bool)),
                        (jax.random.split(rng, max_new), jnp.arange(max_new)))
  return out.T

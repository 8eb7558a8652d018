"""Decoding from trained models, batched, jit-compiled and with the KV cache (or recurrent state):

- `sample_lm`: GPT and the RNN LMs; `sample_seq2seq`: T5, BART and the RNN encoder-decoder; `sample_glm`:
  GLM filling a blank. Each is greedy at temperature 0, else samples with temperature, top-k and top-p.
- `beam_search`: the encoder-decoders, with GNMT's length penalty.

Every sampler also takes `repetition_penalty` (CTRL's, as transformers applies it: the logit of a token already in
the sequence, prompt included, is divided by the penalty when positive and multiplied by it when negative; 1: off).

Bounded compilations. Each function compiles once per shape and static setting. So that a stream of prompts of
varied lengths does not compile once per length, the prompts are padded to length buckets (`bucket`: powers of
two from 16, capped by the model's max_len): `lm_batches` groups decoder prompts by bucket, and `sample_lm` runs
the first `prefill` tokens (the bucket's lower bound) in one pass and feeds each row's remaining prompt tokens
through the same cached one-token step that generates (its length, `lengths`, is data, not shape); sources and GLM
contexts are padded (masked) to their bucket. Prompts of up to 16 tokens compile once, up to 64 at most three
times (buckets 16, 32, 64), for a given batch size, max_new and sampling settings.

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
import numpy as np

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


def penalize_repeats(logits, seen, penalty: float):
  """CTRL's repetition penalty as transformers' RepetitionPenaltyLogitsProcessor: where seen [B, V] (the token is
  already in the sequence), a positive logit is divided by `penalty`, a negative one multiplied by it.

  >>> penalize_repeats(jnp.array([[2.0, -2.0, 2.0]]), jnp.array([[True, True, False]]), 2.0).tolist()
  [[1.0, -4.0, 2.0]]
  """
  if penalty == 1.0 or seen is None:
    return logits
  return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


def seen_tokens(tokens, valid, vocab: int):
  """[B, V] bool: which ids occur in tokens [B, T] where valid [B, T]."""
  rows = jnp.broadcast_to(jnp.arange(tokens.shape[0])[:, None], tokens.shape)
  return jnp.zeros((tokens.shape[0], vocab), bool).at[rows, jnp.where(valid, tokens, vocab)].set(True, mode='drop')


def bucket(length: int, minimum: int = 16, cap: int | None = None) -> int:
  """The padded length of a prompt of `length` tokens: the smallest power of two >= length, at least `minimum`,
  at most `cap` (the room the model has, when it has a limit) but never below length.

  >>> [bucket(n) for n in (1, 16, 17, 40, 64, 65)]
  [16, 16, 32, 64, 64, 128]
  """
  size = max(minimum, 1 << max(length - 1, 0).bit_length())
  return max(length, min(size, cap)) if cap else size


def lm_batches(prompts, max_new: int, max_len: int | None = None):
  """Decoder prompts (lists of ids, none empty) grouped by `bucket`: yields (indices, tokens [n, L] right-padded
  with 0, lengths [n], prefill) for `sample_lm(..., lengths=lengths, prefill=prefill)`, prefill being the bucket's
  lower bound (each row is longer). max_len: the model's position limit (L + max_new stays within it)."""
  cap = max_len - max_new if max_len else None
  groups: dict[int, list[int]] = {}
  for i, x in enumerate(prompts):
    groups.setdefault(bucket(len(x), cap=cap) if not cap or len(x) <= cap else len(x), []).append(i)
  for size, rows in sorted(groups.items()):
    lengths = np.array([len(prompts[i]) for i in rows], np.int32)
    tokens = np.zeros((len(rows), size), np.int32)
    for r, i in enumerate(rows):
      tokens[r, :lengths[r]] = prompts[i]
    prefill = max(1, min(int(lengths.min()), size // 2 if size > 16 else 1))
    yield rows, tokens, lengths, prefill


def pad_rows(rows, pad_id: int = 0, minimum: int = 16) -> np.ndarray:
  """Sources (lists of ids) as one [B, bucket(longest)] array padded with pad_id (which the encoders mask)."""
  out = np.full((len(rows), bucket(max(map(len, rows)), minimum)), pad_id, np.int32)
  for i, x in enumerate(rows):
    out[i, :len(x)] = x
  return out


@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'temperature', 'top_k', 'top_p', 'eos_id',
                                             'vocab_size', 'prefill', 'repetition_penalty'))
def sample_lm(model, params, prompt, rng, max_new: int, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0, eos_id: int = tk.EOS, vocab_size: int | None = None, lengths=None,
              prefill: int | None = None, repetition_penalty: float = 1.0):
  """Continue `prompt` [B, P] by `max_new` tokens from a decoder-only model with its cache. temperature=0 is
  greedy. After [EOS] a row emits [PAD]; ids >= vocab_size are never emitted. Returns [B, max_new] int32.

  Rows of different lengths: `lengths` [B] (default: all P) with the rows right-padded, and `prefill` (static, at
  most the shortest length; default P) the tokens run in one pass; each row's further prompt tokens are fed
  through the one-token cached step, so one compilation serves every length up to P (see `lm_batches`)."""
  b, p = prompt.shape
  lengths = jnp.full((b,), p, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
  prefill = p if prefill is None else prefill
  cache = model.init(jax.random.key(0), jnp.zeros((b, p + max_new), jnp.int32), decode=True)['cache']
  logits, mutated = model.apply({'params': params, 'cache': cache}, prompt[:, :prefill], decode=True,
                                mutable=['cache'])
  seen = (seen_tokens(prompt, jnp.arange(p)[None] < lengths[:, None], logits.shape[-1])
          if repetition_penalty != 1.0 else None)

  def step(carry, xs):
    cache, logits, done, seen = carry
    key, position = xs  # the position whose token is chosen now
    forced = position < lengths  # still inside the row's prompt
    picked = _pick(logits, key, temperature, top_k, top_p, vocab_size, seen, repetition_penalty)
    token = jnp.where(forced, jnp.take(prompt, jnp.minimum(position, p - 1), axis=1), jnp.where(done, 0, picked))
    done = done | (~forced & (token == eos_id))
    if seen is not None:
      seen = seen.at[jnp.arange(b), token].set(True)
    logits, mutated = model.apply({'params': params, 'cache': cache}, token[:, None], decode=True,
                                  mutable=['cache'])
    return (mutated['cache'], logits[:, -1], done, seen), token

  steps = p - prefill + max_new
  xs = (jax.random.split(rng, steps), prefill + jnp.arange(steps))
  _, out = jax.lax.scan(step, (mutated['cache'], logits[:, -1], jnp.zeros((b,), bool), seen), xs)
  first = (lengths - prefill)[:, None] + jnp.arange(max_new)[None]  # each row's first new token, and on
  return jnp.take_along_axis(out.T, first, axis=1)


def _pick(logits, key, temperature, top_k, top_p, vocab_size, seen=None, repetition_penalty: float = 1.0):
  logits = penalize_repeats(logits.astype(jnp.float32), seen, repetition_penalty)
  return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p, vocab_size)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'max_len', 'temperature', 'top_k', 'top_p', 'start_id',
                                             'eos_id', 'vocab_size', 'repetition_penalty'))
def sample_seq2seq(model, params, tokens, rng, max_len: int, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, start_id: int = tk.BOS, eos_id: int = tk.EOS, vocab_size: int | None = None,
                   repetition_penalty: float = 1.0):
  """Encode `tokens` [B, S] (padding: the model's pad_id, masked; `pad_rows` pads to a bucket) once, then emit a
  token at a time through the decoder's cache: greedy with temperature 0, else sampled (top-k / top-p); after
  [EOS] a row emits [PAD]; ids >= vocab_size are never emitted. Returns [B, max_len]. The repetition penalty
  counts the decoder's tokens (its start included), as transformers does.

  `start_id` is what the decoder read first in training: [BOS] for the denoising objective, [PAD] (0) for
  T5's span corruption.
  """
  b = tokens.shape[0]
  source = (tokens != getattr(model, 'pad_id', 0)).astype(jnp.int32)
  encoded = model.apply({'params': params}, tokens, method='encode')
  cache = model.init(jax.random.key(0), tokens, jnp.zeros((b, max_len), jnp.int32), decode=True)['cache']
  start = jnp.full((b,), start_id, jnp.int32)
  seen = None
  if repetition_penalty != 1.0:
    seen = seen_tokens(start[:, None], jnp.ones((b, 1), bool), model.vocab_size)

  def step(carry, key):
    cache, previous, done, seen = carry
    logits, mutated = model.apply({'params': params, 'cache': cache}, previous[:, None], encoded, source,
                                  method='decode', decode=True, mutable=['cache'])
    token = jnp.where(done, 0, _pick(logits[:, -1], key, temperature, top_k, top_p, vocab_size, seen,
                                     repetition_penalty))
    if seen is not None:
      seen = seen.at[jnp.arange(b), token].set(True)
    return (mutated['cache'], token, done | (token == eos_id), seen), token

  _, out = jax.lax.scan(step, (cache, start, jnp.zeros((b,), bool), seen), jax.random.split(rng, max_len))
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
                                             'vocab_size', 'repetition_penalty'))
def beam_search(model, params, tokens, max_len: int, num_beams: int = 4, alpha: float = 0.6,
                start_id: int = tk.BOS, eos_id: int = tk.EOS, vocab_size: int | None = None,
                repetition_penalty: float = 1.0):
  """Beam search for the encoder-decoders, with the decoder cache (one row per beam) and GNMT's length penalty.

  Each step extends every live beam by every token, keeps the `num_beams` best that do not end in [EOS] as the
  live beams, and moves those that do into the finished set (scored log p / length_penalty). Runs max_len steps;
  a row with no finished beam returns its best live one. Returns (sequences [B, max_len] (PAD after [EOS]),
  scores [B]). With num_beams=1 (and no [EOS] in the way) this is greedy decoding. The ids >= vocab_size are
  masked before the log-softmax: the scores are log-probabilities over the ids the tokenizer can decode. A
  repetition penalty (each beam's own tokens) changes the logits before it, as in transformers.
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
      done_seqs=jnp.zeros((b, k, max_len), jnp.int32), done_scores=jnp.full((b, k), neg),
      seen=(seen_tokens(jnp.full((b * k, 1), start_id, jnp.int32), jnp.ones((b * k, 1), bool), model.vocab_size)
            if repetition_penalty != 1.0 else None))

  def step(state, i):
    logits, mutated = model.apply({'params': params, 'cache': state['cache']}, state['last'][:, None], encoded,
                                  source, method='decode', decode=True, mutable=['cache'])
    v = logits.shape[-1]
    logits = penalize_repeats(logits[:, -1].astype(jnp.float32), state['seen'], repetition_penalty)
    logp = jax.nn.log_softmax(mask_past(logits, vocab_size)).reshape(b, k, v)
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
    last = jnp.take_along_axis(token, pick, axis=1).reshape(b * k)
    seen = state['seen']
    if seen is not None:
      seen = _gather_beams(seen, parent, b, k).at[jnp.arange(b * k), last].set(True)
    new = dict(cache=_gather_beams(mutated['cache'], parent, b, k), last=last, seen=seen,
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
                                             'vocab_size', 'repetition_penalty'))
def sample_glm(model, params, context, rng, max_new: int, mask_position=None, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, eos_id: int = tk.EOP, vocab_size: int | None = None,
               context_length=None, repetition_penalty: float = 1.0):
  """Fill a blank with GLM: `context` [B, P] is part A holding a [MASK] at `mask_position` [B] (default: the last
  token), each row `context_length` [B] long (default P; shorter rows right-padded, the padding never seen). The
  span is generated after [sop], each token at the [MASK]'s position with block positions 1, 2, ..., until [eop]
  (`eos_id`) or max_new tokens; ids >= vocab_size are never emitted. Returns [B, max_new] ([PAD] after the end).
  """
  b, p = context.shape
  mask_position = jnp.full((b,), p - 1, jnp.int32) if mask_position is None else mask_position
  ctx_len = jnp.full((b,), p, jnp.int32) if context_length is None else jnp.asarray(context_length, jnp.int32)
  part_b = jnp.full((b,), p, jnp.int32)  # the spans' first cache slot: the padding before it stays unseen
  cache = model.init(jax.random.key(0), jnp.zeros((b, p + max_new), jnp.int32), context_length=ctx_len,
                     decode=True)['cache']
  _, mutated = model.apply({'params': params, 'cache': cache}, context, context_length=ctx_len, part_b=part_b,
                           decode=True, mutable=['cache'])
  seen = None
  if repetition_penalty != 1.0:
    seen = seen_tokens(context, jnp.arange(p)[None] < ctx_len[:, None], model.vocab_size).at[:, tk.SOP].set(True)

  def feed(cache, token, block):
    logits, mutated = model.apply({'params': params, 'cache': cache}, token[:, None],
                                  positions=mask_position[:, None], block_positions=jnp.full((b, 1), block),
                                  context_length=ctx_len, part_b=part_b, decode=True, mutable=['cache'])
    return mutated['cache'], logits[:, -1]

  cache, logits = feed(mutated['cache'], jnp.full((b,), tk.SOP, jnp.int32), 1)

  def step(carry, xs):
    cache, logits, done, seen = carry
    key, i = xs
    token = jnp.where(done, 0, _pick(logits, key, temperature, top_k, top_p, vocab_size, seen, repetition_penalty))
    if seen is not None:
      seen = seen.at[jnp.arange(b), token].set(True)
    cache, logits = feed(cache, token, i + 2)
    return (cache, logits, done | (token == eos_id), seen), token

  _, out = jax.lax.scan(step, (cache, logits, jnp.zeros((b,), bool), seen),
                        (jax.random.split(rng, max_new), jnp.arange(max_new)))
  return out.T

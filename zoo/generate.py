"""Decoding from trained models: greedy decoding for the encoder-decoders (T5, BART, the RNN encoder-decoder)
and greedy / temperature / top-k / top-p sampling for the decoder-only LMs (GPT, the RNN LMs), all with the
KV cache (or recurrent state) and jit-compiled. Beam search comes with the generation issue.

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


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Logits [..., V] scaled by 1/temperature, with every token outside the top k, or outside the smallest set
  whose probability reaches top_p (the nucleus), set to -inf-ish. temperature 0 keeps only the argmax."""
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    best = jnp.argmax(logits, axis=-1)[..., None]
    return jnp.where(jnp.arange(logits.shape[-1]) == best, 0.0, _NEG)
  logits = logits / temperature
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


@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'temperature', 'top_k', 'top_p', 'eos_id'))
def sample_lm(model, params, prompt, rng, max_new: int, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0, eos_id: int = tk.EOS):
  """Continue `prompt` [B, P] (every row the same length) by `max_new` tokens from a decoder-only model with
  its cache: the prompt in one pass, then a token at a time. temperature=0 is greedy. After [EOS] a row emits
  [PAD]. Returns [B, max_new] int32."""
  b, p = prompt.shape
  cache = model.init(jax.random.key(0), jnp.zeros((b, p + max_new), jnp.int32), decode=True)['cache']
  logits, mutated = model.apply({'params': params, 'cache': cache}, prompt, decode=True, mutable=['cache'])

  def pick(logits, key):
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)

  def step(carry, key):
    cache, logits, done = carry
    token = jnp.where(done, 0, pick(logits, key))
    done = done | (token == eos_id)
    logits, mutated = model.apply({'params': params, 'cache': cache}, token[:, None], decode=True,
                                  mutable=['cache'])
    return (mutated['cache'], logits[:, -1], done), token

  keys = jax.random.split(rng, max_new)
  _, out = jax.lax.scan(step, (mutated['cache'], logits[:, -1], jnp.zeros((b,), bool)), keys)
  return out.T


@functools.partial(jax.jit, static_argnames=('model', 'max_len', 'start_id', 'eos_id'))
def greedy_seq2seq(model, params, tokens, max_len: int, start_id: int = tk.BOS, eos_id: int = tk.EOS):
  """Encode `tokens` [B, S] (0 = padding) once, then emit the most likely token step by step, feeding it
  back through the decoder's cache; after [EOS] a row emits [PAD]. Returns [B, max_len] int32.

  `start_id` is what the decoder read first in training: [BOS] for the denoising objective, [PAD] (0) for
  T5's span corruption.
  """
  b = tokens.shape[0]
  source = (tokens != 0).astype(jnp.int32)
  encoded = model.apply({'params': params}, tokens, method='encode')
  cache = model.init(jax.random.key(0), tokens, jnp.zeros((b, max_len), jnp.int32), decode=True)['cache']

  def step(carry, _):
    cache, previous, done = carry
    logits, mutated = model.apply({'params': params, 'cache': cache}, previous[:, None], encoded, source,
                                  method='decode', decode=True, mutable=['cache'])
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    return (mutated['cache'], token, done | (token == eos_id)), token

  start = jnp.full((b,), start_id, jnp.int32)
  _, out = jax.lax.scan(step, (cache, start, jnp.zeros((b,), bool)), None, length=max_len)
  return out.T

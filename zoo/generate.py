"""Decoding from trained models. So far: greedy decoding for the encoder-decoders (T5, BART, the RNN
encoder-decoder) with the decoder's cache; sampling and beam search come with the generation issue.

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

"""Recurrent models: RNN / GRU / LSTM language models, and an RNN encoder-decoder with attention.

>>> import jax, jax.numpy as jnp
>>> model = RnnLm(**LM_SIZES['tiny'], cell='gru')
>>> tokens = jnp.ones((2, 8), jnp.int32)
>>> model.apply(model.init(jax.random.key(0), tokens), tokens).shape
(2, 8, 512)

Both step token by token with decode=True (the carries live in the 'cache' collection), with the same
interface as the transformers' KV cache.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import common, recurrent

# Zaremba et al. 2014 (PTB, vocab 10,000): small 2x200, medium 2x650 (20M), large 2x1500 (66M).
LM_SIZES = {
    'tiny': dict(vocab_size=512, embed_dim=32, hidden_dim=64, num_layers=2),
    'small': dict(embed_dim=200, hidden_dim=200, num_layers=2),
    'medium': dict(embed_dim=650, hidden_dim=650, num_layers=2),
    'large': dict(embed_dim=1500, hidden_dim=1500, num_layers=2),
}
LM_PUBLISHED_PARAMS = {'large': 66_000_000}  # LSTM, untied embeddings: the paper's '66M'



def _uniform(scale: float):
  """U(-scale, scale)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


# The embeddings and projections of the RNN families start at U(-0.1, 0.1), as Luong et al. (2015) initialise
# every parameter (and PyTorch's word_language_model its embeddings and decoder), not at the transformers'
# normal(0.02). The recurrent cells keep their own (lecun normal, orthogonal recurrent: zoo.layers.recurrent).
INIT = _uniform(0.1)

SEQ2SEQ_SIZES = {
    'tiny': dict(vocab_size=512, embed_dim=32, hidden_dim=64, num_layers=1),
    'small': dict(embed_dim=256, hidden_dim=256, num_layers=2),
    'base': dict(embed_dim=512, hidden_dim=512, num_layers=2),
    'large': dict(embed_dim=1000, hidden_dim=1000, num_layers=4),  # Luong et al. 2015's stack
}


class RnnLm(nn.Module):
  """Embedding, stacked recurrent layers, softmax. Call: (tokens [B, T], deterministic, decode) ->
  logits [B, T, V] float32. Causal by construction."""
  vocab_size: int = 10000
  cell: str = 'lstm'  # 'rnn' (Elman), 'gru' or 'lstm'
  embed_dim: int = 650
  hidden_dim: int = 650
  num_layers: int = 2
  dropout_rate: float = 0.5
  tie_embeddings: bool = False  # needs embed_dim == hidden_dim
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, deterministic: bool = True,
               decode: bool = False, logits: bool = True):
    """segment_ids and positions are accepted for a common interface and not used: an RNN LM reads a packed
    row as one stream of text, its state flowing across document boundaries (as PTB LMs were trained)."""
    del segment_ids, positions
    token_embed = common.embed(self.vocab_size, self.embed_dim, dtype=self.dtype, init=INIT, name='token_embed')
    x = nn.Dropout(self.dropout_rate)(token_embed(tokens), deterministic=deterministic)
    x, _ = recurrent.StackedRNN(self.cell, self.hidden_dim, self.num_layers, dropout_rate=self.dropout_rate,
                                dtype=self.dtype, name='rnn')(x, deterministic=deterministic, decode=decode)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    if self.tie_embeddings:
      if self.embed_dim != self.hidden_dim:
        raise ValueError(f'model.tie_embeddings needs model.embed_dim ({self.embed_dim}) == '
                         f'model.hidden_dim ({self.hidden_dim})')
      return common.attend(token_embed, x, self.dtype, logits)
    head = common.OutputHead(self.vocab_size, ('rnn', 'vocab'), dtype=self.dtype, kernel_init=INIT, name='lm_head')
    return head(x, logits)

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    return dict(tokens=jnp.ones((batch_size, length), jnp.int32))


class RnnSeq2Seq(nn.Module):
  """RNN encoder-decoder with attention over the encoder states (Luong et al. 2015, global attention).

  encoder: (bi)directional stacked RNN over the source -> memory m_s (projected to hidden_dim);
  decoder: stacked RNN over the target inputs -> h_t, each layer starting from tanh(W_b [m_1; m_last]), the
  encoder's final states (Bahdanau et al. 2015's s_0; `start_carries`);
  score(h_t, m_s) = h_t^T W_a m_s ('dot', Luong's general) or v^T tanh(W_q h_t + W_k m_s) ('additive',
  Bahdanau); a_t = softmax over valid source positions; c_t = sum_s a_ts m_s;
  output = W_o tanh(W_c [h_t; c_t]).

  Call: (tokens [B, S] (0 = padding), decoder_tokens [B, T], deterministic, decode) -> logits [B, T, V].
  """
  vocab_size: int = 32000
  cell: str = 'lstm'
  embed_dim: int = 256
  hidden_dim: int = 256
  num_layers: int = 2
  bidirectional: bool = True
  attention: str = 'dot'  # or 'additive'
  dropout_rate: float = 0.1
  dtype: common.Dtype = jnp.float32

  def setup(self):
    h = self.hidden_dim
    self.token_embed = common.embed(self.vocab_size, self.embed_dim, dtype=self.dtype, init=INIT)
    self.encoder = recurrent.StackedRNN(self.cell, h, self.num_layers, self.bidirectional,
                                        self.dropout_rate, self.dtype)
    self.decoder = recurrent.StackedRNN(self.cell, h, self.num_layers, False, self.dropout_rate, self.dtype)
    self.memory = common.dense(h, ('rnn_memory', 'rnn'), dtype=self.dtype, kernel_init=INIT)
    if self.attention == 'dot':
      self.query = common.dense(h, ('rnn_query', 'rnn'), use_bias=False, dtype=self.dtype, kernel_init=INIT)
    elif self.attention == 'additive':
      self.query = common.dense(h, ('rnn_query', 'rnn'), use_bias=False, dtype=self.dtype, kernel_init=INIT)
      self.key = common.dense(h, ('rnn_memory', 'rnn'), use_bias=True, dtype=self.dtype, kernel_init=INIT)
      self.score = common.dense(1, ('rnn', None), use_bias=False, dtype=self.dtype, kernel_init=INIT)
    else:
      raise ValueError(f"model.attention must be 'dot' or 'additive', got {self.attention!r}")
    self.combine = common.dense(h, ('rnn_combined', 'rnn'), dtype=self.dtype, kernel_init=INIT)
    self.bridges = [common.dense(h, ('rnn_combined', 'rnn'), dtype=self.dtype, kernel_init=INIT, name=f'bridge_{i}')
                    for i in range(self.num_layers)]
    self.lm_head = common.OutputHead(self.vocab_size, ('rnn', 'vocab'), dtype=self.dtype, kernel_init=INIT)
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, tokens, deterministic: bool = True):
    """tokens [B, S] -> memory [B, S, H]."""
    x = self.dropout(self.token_embed(tokens), deterministic=deterministic)
    lengths = jnp.sum(tokens != 0, axis=-1)
    states, _ = self.encoder(x, seq_lengths=lengths, deterministic=deterministic)
    return self.memory(states)

  def start_carries(self, memory, source_valid):
    """Each decoder layer's first state from the encoder's final states (Bahdanau et al.: s0 = tanh(W h_1)):
    the memory at the source's first position (the backward direction's final state) and its last valid one
    (the forward direction's)."""
    b = memory.shape[0]
    last = jnp.maximum(source_valid.sum(-1) - 1, 0)
    final = jnp.concatenate([memory[:, 0], memory[jnp.arange(b), last]], axis=-1)  # [B, 2H]
    carries = []
    for i in range(self.num_layers):
      h0 = jnp.tanh(self.bridges[i](final))
      carries.append((jnp.zeros_like(h0), h0) if self.cell == 'lstm' else h0)
    return carries

  def decode(self, decoder_tokens, memory, source_valid, deterministic: bool = True, decode: bool = False,
             logits: bool = True):
    """decoder_tokens [B, T], memory [B, S, H], source_valid [B, S] bool -> logits [B, T, V] float32."""
    x = self.dropout(self.token_embed(decoder_tokens), deterministic=deterministic)
    h, _ = self.decoder(x, initial_carries=self.start_carries(memory, source_valid), deterministic=deterministic,
                        decode=decode)  # [B, T, H]
    if self.attention == 'dot':
      scores = common.einsum('bth,bsh->bts', self.query(h), memory, dtype=self.dtype)
    else:
      feats = jnp.tanh(self.query(h)[:, :, None, :] + self.key(memory)[:, None, :, :])  # [B, T, S, H]
      scores = self.score(feats)[..., 0].astype(jnp.float32)
    scores = jnp.where(source_valid[:, None, :], scores, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    context = common.einsum('bts,bsh->bth', weights, memory, dtype=self.dtype).astype(self.dtype)
    out = jnp.tanh(self.combine(jnp.concatenate([h, context], axis=-1)))
    out = self.dropout(out, deterministic=deterministic)
    return self.lm_head(out, logits)

  def __call__(self, tokens, decoder_tokens, deterministic: bool = True, decode: bool = False,
               logits: bool = True):
    memory = self.encode(tokens, deterministic)
    return self.decode(decoder_tokens, memory, tokens != 0, deterministic, decode, logits)

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    return dict(tokens=jnp.ones((batch_size, length), jnp.int32),
                decoder_tokens=jnp.ones((batch_size, length), jnp.int32))

"""Recurrent cells and layers.

Cells (each maps (carry, x_t) -> (carry, y_t)):
- Elman RNN: a<t> = g(W_aa a<t-1> + W_ax x<t> + b_a)  -- flax's `nn.SimpleCell` (g = tanh), used as is.
- GRU, the full form with a reset gate (Cho et al. 2014, as taught in Ng's course), written here because
  flax's `nn.GRUCell` applies the reset gate after the recurrent matmul (the cuDNN variant):
      Γu = σ(W_u [c<t-1>, x<t>] + b_u)
      Γr = σ(W_r [c<t-1>, x<t>] + b_r)
      c~ = tanh(W_c [Γr * c<t-1>, x<t>] + b_c)
      c<t> = Γu * c~ + (1 - Γu) * c<t-1>
- LSTM: flax's `nn.LSTMCell`, used as is:
      i = σ(W_ii x + W_hi h + b_hi), f = σ(W_if x + W_hf h + b_hf), g = tanh(W_ig x + W_hg h + b_hg),
      o = σ(W_io x + W_ho h + b_ho), c' = f * c + i * g, h' = o * tanh(c')
  (carry (c, h); the output is h).

Layers are `nn.RNN` (a scan over time) and `nn.Bidirectional`; a cell's parameters sit under `layer_{i}`
(`layer_{i}_forward` / `layer_{i}_backward` when bidirectional).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import common


class GRUCell(nn.RNNCellBase):
  """GRU with update gate Γu and reset gate Γr applied before the candidate's recurrent matmul.

  Parameters: `input` W_x [X, 3H] with bias b (update, reset, candidate), `recurrent_gates` [H, 2H] (update,
  reset) and `recurrent_candidate` [H, H]; so W_u = [W_h_u; W_x_u] in the bracket notation above.

  >>> cell = GRUCell(features=4)
  >>> x = jnp.ones((2, 3)); c = cell.initialize_carry(jax.random.key(0), x.shape)
  >>> new_c, y = cell.apply(cell.init(jax.random.key(1), c, x), c, x)
  >>> y.shape
  (2, 4)
  """
  features: int
  kernel_init: common.Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: common.Initializer = nn.initializers.orthogonal()
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, x):
    h = self.features
    dense = lambda n, init, bias, name: common.dense(  # noqa: E731
        n, ('embed', 'rnn') if name == 'input' else ('rnn', 'rnn_gates'), use_bias=bias, dtype=self.dtype,
        kernel_init=init, name=name)
    xu, xr, xc = jnp.split(dense(3 * h, self.kernel_init, True, 'input')(x), 3, axis=-1)
    hu, hr = jnp.split(dense(2 * h, self.recurrent_kernel_init, False, 'recurrent_gates')(carry), 2, axis=-1)
    update = nn.sigmoid(xu + hu)
    reset = nn.sigmoid(xr + hr)
    candidate = jnp.tanh(xc + dense(h, self.recurrent_kernel_init, False, 'recurrent_candidate')(
        reset * carry))
    new = update * candidate + (1.0 - update) * carry
    return new, new

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    return jnp.zeros((*input_shape[:-1], self.features), self.dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


CELLS = ('rnn', 'gru', 'lstm')


def make_cell(kind: str, features: int, dtype=jnp.float32, name: str | None = None) -> nn.RNNCellBase:
  """'rnn' (Elman, tanh), 'gru' (full form) or 'lstm'; parameters carry logical axis names."""
  kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ('embed', 'rnn'))
  recurrent = nn.with_logical_partitioning(nn.initializers.orthogonal(), ('rnn', 'rnn_gates'))
  bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), ('rnn_gates',))
  if kind == 'rnn':
    return nn.SimpleCell(features, kernel_init=kernel, recurrent_kernel_init=recurrent, bias_init=bias,
                         dtype=dtype, param_dtype=jnp.float32, name=name)
  if kind == 'gru':
    return GRUCell(features, dtype=dtype, name=name)
  if kind == 'lstm':
    return nn.LSTMCell(features, kernel_init=kernel, recurrent_kernel_init=recurrent, bias_init=bias,
                       dtype=dtype, param_dtype=jnp.float32, name=name)
  raise ValueError(f'cell must be one of {CELLS}, got {kind!r}')


def cell_output(kind: str, carry) -> jax.Array:
  """The hidden state h of a carry ((c, h) for the LSTM)."""
  return carry[1] if kind == 'lstm' else carry


class StackedRNN(nn.Module):
  """`num_layers` recurrent layers, each an `nn.RNN` over time (optionally bidirectional, outputs
  concatenated), with dropout between layers.

  With decode=True the carries live in the 'cache' collection, so a model can be stepped token by token with
  the same interface as the transformers' KV cache; `initial_carries` (one per layer, e.g. an encoder-decoder's
  bridge from the encoder) then apply to the first step only. Returns (outputs [B, T, H or 2H], final carries).
  """
  cell: str
  features: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, seq_lengths=None, initial_carries=None, deterministic: bool = True,
               decode: bool = False):
    carries = []
    for i in range(self.num_layers):
      if i:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
      if self.bidirectional:
        if decode:
          raise ValueError('a bidirectional layer cannot decode step by step')
        layer = nn.Bidirectional(
            nn.RNN(make_cell(self.cell, self.features, self.dtype, name=f'layer_{i}_forward')),
            nn.RNN(make_cell(self.cell, self.features, self.dtype, name=f'layer_{i}_backward')),
            return_carry=True)
        carry, x = layer(x, seq_lengths=seq_lengths)
      else:
        layer = nn.RNN(make_cell(self.cell, self.features, self.dtype, name=f'layer_{i}'), return_carry=True)
        init = None if initial_carries is None else initial_carries[i]
        if decode:  # the carry lives in the cache; the first step starts from initial_carries (if given)
          zero = jnp.zeros((x.shape[0], self.features), self.dtype)
          zero = (zero, zero) if self.cell == 'lstm' else zero
          first = not self.has_variable('cache', f'carry_{i}')
          cached = self.variable('cache', f'carry_{i}', lambda z=zero: z)
          started = self.variable('cache', f'started_{i}', lambda: jnp.zeros((), bool))
          init = cached.value if init is None else jax.tree.map(
              lambda c, s: jnp.where(started.value, c, s.astype(c.dtype)), cached.value, init)
        carry, x = layer(x, initial_carry=init, seq_lengths=seq_lengths)
        if decode and not first:
          cached.value = carry
          started.value = jnp.ones((), bool)
      carries.append(carry)
    return x, carries

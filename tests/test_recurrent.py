"""Each recurrent cell against its equations written out in numpy, on random weights; the layers."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from zoo.layers import recurrent


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def random_params(params, seed=0):
  """Replace every parameter (biases included) by a random draw."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.5, nn.unbox(params))


def run_cell(kind, x_dim=3, h_dim=4, steps=5):
  cell = recurrent.make_cell(kind, h_dim)
  xs = np.random.default_rng(1).normal(size=(steps, 2, x_dim)).astype(np.float32)
  carry = cell.initialize_carry(jax.random.key(0), xs[0].shape)
  params = random_params(cell.init(jax.random.key(0), carry, xs[0])['params'])
  outs = []
  for x in xs:
    carry, y = cell.apply({'params': params}, carry, x)
    outs.append(np.asarray(y))
  return xs, jax.tree_util.tree_map(np.asarray, params), outs


def test_elman_cell():
  xs, p, outs = run_cell('rnn')
  a = np.zeros((2, 4))
  for x, got in zip(xs, outs):
    a = np.tanh(a @ p['h']['kernel'] + x @ p['i']['kernel'] + p['i']['bias'])  # g(W_aa a + W_ax x + b_a)
    np.testing.assert_allclose(got, a, atol=1e-5)


def test_gru_cell_full_form():
  xs, p, outs = run_cell('gru')
  wx, bx = p['input']['kernel'], p['input']['bias']
  wh_u, wh_r = np.split(p['recurrent_gates']['kernel'], 2, axis=1)
  wx_u, wx_r, wx_c = np.split(wx, 3, axis=1)
  b_u, b_r, b_c = np.split(bx, 3)
  w_u = np.concatenate([wh_u, wx_u])  # W_u acting on [c<t-1>, x<t>]
  w_r = np.concatenate([wh_r, wx_r])
  w_c = np.concatenate([p['recurrent_candidate']['kernel'], wx_c])
  c = np.zeros((2, 4))
  for x, got in zip(xs, outs):
    gu = sigmoid(np.concatenate([c, x], -1) @ w_u + b_u)
    gr = sigmoid(np.concatenate([c, x], -1) @ w_r + b_r)
    cand = np.tanh(np.concatenate([gr * c, x], -1) @ w_c + b_c)
    c = gu * cand + (1 - gu) * c
    np.testing.assert_allclose(got, c, atol=1e-5)


def test_lstm_cell():
  xs, p, outs = run_cell('lstm')
  c = h = np.zeros((2, 4))
  for x, got in zip(xs, outs):
    gate = lambda g: x @ p['i' + g]['kernel'] + h @ p['h' + g]['kernel'] + p['h' + g]['bias']  # noqa: E731
    f, i, o = sigmoid(gate('f')), sigmoid(gate('i')), sigmoid(gate('o'))
    c = f * c + i * np.tanh(gate('g'))
    h = o * np.tanh(c)
    np.testing.assert_allclose(got, h, atol=1e-5)


@pytest.mark.parametrize('kind', [k if k == 'lstm' else pytest.param(k, marks=pytest.mark.slow)
                                  for k in recurrent.CELLS])
def test_stacked_bidirectional_layers(kind):
  """Two bidirectional layers: forward = cells run left to right, backward = right to left over the real
  tokens only (the padding of the shorter sequence is skipped), concatenated, fed to the next layer."""
  x = np.random.default_rng(2).normal(size=(2, 5, 3)).astype(np.float32)
  lengths = np.array([5, 3])
  model = recurrent.StackedRNN(kind, 4, num_layers=2, bidirectional=True)
  params = random_params(model.init(jax.random.key(0), x, lengths)['params'])
  got, _ = model.apply({'params': params}, x, lengths)
  cell = recurrent.make_cell(kind, 4)

  def run(p, seq):  # seq [T, X] for one example -> [T, H]
    carry = cell.initialize_carry(jax.random.key(0), seq[:1].shape)
    out = []
    for s in seq:
      carry, y = cell.apply({'params': p}, carry, s[None])
      out.append(np.asarray(y)[0])
    return np.stack(out)

  h = x
  for layer in range(2):
    nxt = np.zeros((2, 5, 8), np.float32)
    for b in range(2):
      n = lengths[b]
      nxt[b, :n, :4] = run(params[f'layer_{layer}_forward'], h[b, :n])
      nxt[b, :n, 4:] = run(params[f'layer_{layer}_backward'], h[b, :n][::-1])[::-1]
    h = nxt
  for b in range(2):
    np.testing.assert_allclose(np.asarray(got)[b, :lengths[b]], h[b, :lengths[b]], atol=1e-5)

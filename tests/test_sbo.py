"""SpanBERT's span boundary objective (SBO): the host's span boundaries, the head against a numpy reference of the
paper's formula, the spanbert recipe's two terms at chance and going downhill, and BERT's size without it."""
import importlib
import math
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import config as config_lib
from zoo import models, objectives, train
from zoo.data import tokenizer as tk
from zoo.models import bert
from zoo.objectives import sbo
from zoo.train import metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

V, SPECIAL = 1000, 19
WORD_STARTS = np.arange(V) >= 100  # ids 19..99 continue a word, 100.. start one


def _check(positions, group, seg, left, right, offsets):
  got = sbo.boundaries(np.array(positions), np.array(group), np.array(seg, np.int32))
  assert [x.tolist() for x in got] == [left, right, offsets]


def test_boundaries_of_hand_made_spans_in_one_document():
  seg = [1] * 10
  # spans [0, 1] at the row's start, [4], [8, 9] at its end: the missing outer token is clipped to the span's own
  _check([0, 1, 4, 8, 9], [0, 0, 1, 2, 2], seg,
         left=[0, 0, 3, 7, 7], right=[2, 2, 5, 9, 9], offsets=[0, 1, 0, 0, 1])
  _check([3, 4, 5, 6], [0, 0, 1, 1], seg,  # two spans that touch stay two: each is the other's boundary
         left=[2, 2, 4, 4], right=[5, 5, 7, 7], offsets=[0, 1, 0, 1])
  _check([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [0] * 10, seg, left=[0] * 10, right=[9] * 10, offsets=list(range(10)))
  _check([], [], seg, left=[], right=[], offsets=[])


def test_boundaries_stay_inside_their_document_in_a_packed_row():
  seg = [1, 1, 1, 1, 2, 2, 2, 2, 0, 0]  # two documents, then padding
  # [2, 3] ends document 1 (position 4 is document 2's): right clipped to 3; [4, 5] starts document 2: left is 4;
  # [7] ends document 2 before the padding: right is 7
  _check([2, 3, 4, 5, 7], [0, 0, 1, 1, 2], seg,
         left=[1, 1, 4, 4, 6], right=[3, 3, 6, 6, 7], offsets=[0, 1, 0, 1, 0])
  _check([1], [0], [1, 1, 1, 2, 2, 2], left=[0], right=[2], offsets=[0])  # inside: the plain neighbours
  _check([3], [0], [1, 1, 1, 2, 2, 2], left=[3], right=[4], offsets=[0])
  with pytest.raises(ValueError, match='non-decreasing'):
    sbo.boundaries(np.array([1, 2]), np.array([1, 0]), np.ones(4, np.int32))


def packed_batch(rng, b=8, t=96):
  """Rows of several documents of whole words, each closed by [EOS]; [CLS] first; some rows padded."""
  tokens = rng.integers(SPECIAL, V, (b, t)).astype(np.int32)
  seg = np.zeros((b, t), np.int32)
  for row in range(b):
    pos, s = 0, 1
    end = t - (int(rng.integers(0, 30)) if row % 2 else 0)
    while pos < end:
      n = min(int(rng.integers(8, 50)), end - pos)
      seg[row, pos:pos + n] = s
      tokens[row, pos + n - 1] = tk.EOS
      pos, s = pos + n, s + 1
    tokens[row, end:] = 0
  tokens[:, 0] = tk.CLS
  return {'tokens': tokens, 'segment_ids': seg, 'positions': np.zeros_like(seg)}


def test_the_objective_emits_each_span_tokens_boundaries():
  """Mlm.example with sbo: per prediction slot, the boundaries of its span (recovered from the masked runs) and its
  offset in it; the SBO targets are the MLM's; the masks are the ones drawn without sbo (same generator draws)."""
  obj = objectives.make('mlm', vocab_size=V, num_special=SPECIAL, masking='span', word_starts=WORD_STARTS, sbo=True)
  plain = objectives.make('mlm', vocab_size=V, num_special=SPECIAL, masking='span', word_starts=WORD_STARTS)
  assert obj.model_fields() == {'sbo': True} and plain.model_fields() == {}
  rng = np.random.default_rng(0)
  clipped = 0
  for step in range(10):
    batch = packed_batch(rng)
    ex = obj.example(batch, np.random.default_rng(step))
    ref = plain.example(batch, np.random.default_rng(step))
    assert set(ex) - set(ref) == {'sbo_left', 'sbo_right', 'sbo_offsets', 'sbo_labels', 'sbo_weights'}
    for k in ref:
      np.testing.assert_array_equal(ex[k], ref[k])
    np.testing.assert_array_equal(ex['sbo_labels'], ex['mlm_labels'])
    np.testing.assert_array_equal(ex['sbo_weights'], ex['mlm_weights'])
    seg = batch['segment_ids']
    for row in range(len(seg)):
      w = ex['mlm_weights'][row] > 0
      pos = ex['mlm_positions'][row][w]
      left, right, off = (ex[k][row][w] for k in ('sbo_left', 'sbo_right', 'sbo_offsets'))
      s = pos - off  # each slot's span's first token
      for i in range(len(pos)):
        assert off[i] == 0 or (pos[i - 1] == pos[i] - 1 and off[i - 1] == off[i] - 1)  # offsets count up in a span
      end = pos.copy()  # ... and its last
      for i in range(len(pos) - 2, -1, -1):
        end[i] = end[i + 1] if off[i + 1] else pos[i]
      assert (seg[row, left] == seg[row, s]).all() and (seg[row, right] == seg[row, end]).all()
      inside_l = (s > 0) & (seg[row, np.maximum(s - 1, 0)] == seg[row, s])
      np.testing.assert_array_equal(left, np.where(inside_l, s - 1, s))
      inside_r = (end < seg.shape[1] - 1) & (seg[row, np.minimum(end + 1, seg.shape[1] - 1)] == seg[row, end])
      np.testing.assert_array_equal(right, np.where(inside_r, end + 1, end))
      clipped += (~inside_l).sum() + (~inside_r).sum()
  assert clipped  # spans at a document's first token occurred, and had their left boundary clipped
  with pytest.raises(ValueError, match="needs objective.masking='span'"):
    objectives.make('mlm', vocab_size=V, num_special=SPECIAL, sbo=True).model_fields()


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0)))


def _layernorm(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


@pytest.mark.parametrize('embedding_dim', [None, 16])
def test_the_head_is_the_papers_formula(embedding_dim):
  """sbo_logits = LayerNorm(GeLU(W2 LayerNorm(GeLU(W1 [x_l; x_r; p_k] + b1)) + b2)) @ E^T + mlm_bias, from the
  encoder outputs x (numpy, float64, every parameter randomized), also under a factorized embedding (ALBERT's)."""
  model = bert.Bert(vocab_size=97, max_len=40, num_layers=1, embed_dim=24, num_heads=2, mlp_dim=32,
                    embedding_dim=embedding_dim, dropout_rate=0.0, norm_eps=1e-6, sbo=True)
  b, t, p = 2, 20, 7
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(5, 97, (b, t)), jnp.int32)
  left = jnp.asarray(rng.integers(0, t, (b, p)), jnp.int32)
  right = jnp.asarray(rng.integers(0, t, (b, p)), jnp.int32)
  offsets = jnp.asarray(rng.integers(0, 40, (b, p)), jnp.int32)
  # compiled whole (one program each, not one per operation: the suite's time)
  params = jax.jit(model.init)(jax.random.key(0), tokens, sbo_left=left, sbo_right=right, sbo_offsets=offsets)['params']
  params = jax.jit(lambda ps: jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(x.size), x.shape),
                                           ps))(params)
  apply = jax.jit(model.apply)
  out = apply({'params': params}, tokens, sbo_left=left, sbo_right=right, sbo_offsets=offsets)
  assert out['sbo_logits'].shape == (b, p, 97) and out['sbo_logits'].dtype == jnp.float32

  f64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), nn.unbox(tree))  # noqa: E731
  h, q = np.asarray(out['hidden'], np.float64), f64(params['sbo'])
  rows = np.arange(b)[:, None]
  h0 = np.concatenate([h[rows, np.asarray(left)], h[rows, np.asarray(right)],
                       q['position_embed']['embedding'][np.asarray(offsets)]], -1)
  h1 = _layernorm(_gelu(h0 @ q['transform_1']['kernel'] + q['transform_1']['bias']), q['norm_1'], 1e-6)
  y = _layernorm(_gelu(h1 @ q['transform_2']['kernel'] + q['transform_2']['bias']), q['norm_2'], 1e-6)
  logits = y @ f64(params['token_embed']['embedding']).T + f64(params['mlm_bias'])
  np.testing.assert_allclose(np.asarray(out['sbo_logits']), logits, atol=1e-5, rtol=1e-5)
  # without spans (init from example_batch) every position is a one-token span; a model without sbo refuses them
  assert apply({'params': params}, tokens)['sbo_logits'].shape == (b, t, 97)
  plain = bert.Bert(**{**bert.SIZES['tiny'], 'num_layers': 1})
  with pytest.raises(ValueError, match='sbo=True'):
    jax.eval_shape(plain.init, jax.random.key(0), tokens, sbo_left=left, sbo_right=right, sbo_offsets=offsets)


def _count(model, t=16):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, t), jnp.int32)))
  params = nn.unbox(shapes['params'])
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)), params


def test_bert_without_sbo_keeps_its_parameter_count():
  """117,250 (tiny) and transformers' 110,106,428 (base): the counts before the SBO head existed; with it, the
  head adds 3H x H + H x E (its two layers), H + E biases, 2 (H + E) LayerNorm parameters and max_len x H positions."""
  for size, before in (('tiny', 117_250), ('base', bert.PUBLISHED_PARAMS['base'])):
    n, params = _count(models.get_model('bert', size))
    assert n == before and 'sbo' not in params, size
    n_sbo, params = _count(models.get_model('bert', size, sbo=True))
    h, max_len = bert.SIZES[size]['embed_dim'], bert.SIZES[size].get('max_len', 512)
    assert n_sbo - n == 3 * h * h + h * h + 2 * h + 4 * h + max_len * h and 'sbo' in params, size


def test_flops_count_the_sbo_head_on_the_masked_positions():
  T = 128
  mlm = objectives.make('mlm', vocab_size=512, num_special=5, masking='span', sbo=True)
  frac = mlm.max_predictions(T) / T
  plain, with_sbo = models.get_model('bert', 'tiny'), models.get_model('bert', 'tiny', sbo=True)
  lean = metrics.flops_per_token(plain, _count(plain, T)[1], T, mlm)
  lean_sbo = metrics.flops_per_token(with_sbo, _count(with_sbo, T)[1], T, mlm)
  assert lean_sbo - lean == pytest.approx(6 * frac * (3 * 64 * 64 + 64 * 64 + 512 * 64))


def test_spanbert_recipe_has_mlm_and_sbo_at_chance_and_steps_downhill(tokenizer_path):
  c = importlib.import_module('configs.spanbert').get_config('tiny')
  c.data.tokenizer = tokenizer_path
  c.data.vocab_size = 1000
  c.log.tensorboard = False
  c = config_lib.override(c, {'train.steps': 3, 'train.seq_len': 32, 'train.batch_size': 8,
                              'model.dropout_rate': 0.0, 'optimizer.warmup_steps': 0, 'mesh.devices': 1})
  run = train.build(c, '/nonexistent-unused')  # the tokenizer is a file: nothing is written
  assert run.objective.sbo and run.model.sbo
  state = train.init_state(run)
  assert 'sbo' in state.params
  step = train.make_train_step(run)
  batch = next(iter(run.inputs.train_dataset(run)))
  example = run.placement.put(run.objective.example(batch, train.example_rng(0, 0)))
  curve = []
  for _ in range(3):
    state, m = step(state, example, jax.random.key(0))
    curve.append({k: float(v) for k, v in m.items()})
  assert sorted(k[:-len('_loss')] for k in curve[0] if k.endswith('_loss')) == ['mlm', 'sbo']
  assert 'sbo_accuracy' in curve[0]
  for term in ('mlm', 'sbo'):
    assert curve[0][f'{term}_loss'] == pytest.approx(np.log(run.model.vocab_size), abs=0.35), term
  assert curve[0]['loss'] == pytest.approx(curve[0]['mlm_loss'] + curve[0]['sbo_loss'], rel=1e-5)
  assert curve[2]['loss'] < curve[1]['loss'] < curve[0]['loss'], [x['loss'] for x in curve]

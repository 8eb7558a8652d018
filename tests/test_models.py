"""Model families: parameter counts, logical names, causality, padding, packing, KV-cache decoding, layer
scan / remat / sharing, and the dtype policy."""
import functools
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import models
from zoo.layers import common, transformer

V = 512  # vocabulary of every tiny size


_JITTED = {}
_STATIC = ('method', 'decode', 'mutable', 'deterministic')


def apply(model, variables, *args, **kwargs):
  """model.apply under jax.jit (one compile per model, static arguments and shapes): eager flax dispatches
  op by op and costs far more here."""
  static = {k: kwargs.pop(k) for k in _STATIC if k in kwargs}
  key = (id(model), tuple(sorted((k, str(v)) for k, v in static.items())))
  if key not in _JITTED:
    _JITTED[key] = (model, jax.jit(functools.partial(model.apply, **static)))
  return _JITTED[key][1](variables, *args, **kwargs)


def tiny(family, **kw):
  return models.get_model(family, 'tiny', dropout_rate=0.0, **kw)


def init(model, **batch):
  return jax.jit(model.init)(jax.random.key(0), **batch)


def toks(seed, *shape):
  return jax.random.randint(jax.random.key(seed), shape, 1, V)


def close(a, b, atol=1e-5):
  return np.allclose(np.asarray(a), np.asarray(b), atol=atol)


# ---------------------------------------------------------------- sizes and names

@pytest.fixture(scope='module')
def size_table():
  out = subprocess.run([sys.executable, '-m', 'zoo.models', '--json'], capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout)


@pytest.mark.slow
def test_published_parameter_counts_within_one_percent(size_table):
  rows = {(r['family'], r['size']): r for r in size_table}
  assert {('bert', 'base'), ('gpt', 'small'), ('t5', 'small')} <= {k for k, r in rows.items() if 'published' in r}
  for key, row in rows.items():
    if 'published' in row:  # the Transformer's are the paper's, rounded to millions (base: 63.1M for "65M")
      assert abs(row['params'] / row['published'] - 1) < (0.05 if key[0] == 'transformer' else 0.01), row
  assert abs(rows['bert', 'base']['params'] / 110e6 - 1) < 0.01
  assert abs(rows['gpt', 'small']['params'] / 124e6 - 1) < 0.01
  assert abs(rows['t5', 'small']['params'] / 60e6 - 1) < 0.01
  # every family and size is listed, with the count the library computes
  assert {r['family'] for r in size_table} == set(models.FAMILIES)
  assert rows['gpt', 'tiny']['params'] == models.count_params(tiny('gpt'))


@pytest.mark.parametrize('family', list(models.FAMILIES))
def test_every_parameter_has_logical_axis_names(family):
  model = tiny(family)
  params = models.abstract_params(model)
  boxes = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxes
  for box in boxes:
    assert isinstance(box, nn.LogicallyPartitioned), box
    assert len(box.names) == box.value.ndim, box
  if hasattr(model, 'scan_layers') and not getattr(model, 'share_layers', False):  # ALBERT shares, no scan
    scanned = models.abstract_params(model.clone(scan_layers=True))
    names = [b.names for b in jax.tree_util.tree_leaves(
        scanned, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))]
    assert any(n[0] == 'layers' for n in names)


def test_albert_parameters_do_not_grow_with_depth():
  counts = [models.count_params(tiny('albert', num_layers=n)) for n in (1, 2, 12)]
  assert counts[0] == counts[1] == counts[2]
  bert = [models.count_params(tiny('bert', num_layers=n)) for n in (1, 2)]
  assert bert[1] > bert[0]
  # the factorized embedding: vocab x E with E < H
  p = nn.unbox(models.abstract_params(tiny('albert')))
  assert p['token_embed']['embedding'].shape == (V, 32)


def test_bad_fields_get_clear_errors():
  model = tiny('bert', num_heads=5)
  with pytest.raises(ValueError, match='num_heads=5 does not divide .*embed_dim=64'):
    models.abstract_params(model)
  with pytest.raises(ValueError, match="no field.*'hiddne'"):
    models.get_model('bert', 'tiny', hiddne=3)
  with pytest.raises(ValueError, match='unknown size'):
    models.get_model('gpt', 'huge')


def test_transformer_sizes_match_the_paper_and_t5_bart_counts_stay():
  """Vaswani et al.'s Table 3 (base 65M, big 213M, rounded; 37,000 shared pieces) within 5%, counted by hand
  too; T5's and BART's counts are unchanged by the Transformer's options."""
  def count(family, size):
    return models.count_params(models.scanned(models.get_model(family, size)))

  def by_hand(v, d, f, layers=6):
    attention, mlp, norm = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
    encoder = attention + mlp + 2 * norm
    return v * d + layers * encoder + layers * (encoder + attention + norm)  # one shared table, no positions
  for size, d, published in (('base', 512, 65e6), ('big', 1024, 213e6)):
    n = count('transformer', size)
    assert n == by_hand(37000, d, 4 * d) and abs(n / published - 1) < 0.05, (size, n)
  assert count('t5', 'small') == models.encdec.T5_PUBLISHED_PARAMS['small']
  assert count('bart', 'base') == models.encdec.BART_PUBLISHED_PARAMS['base'] - 3072  # 1,024 positions, not 1,026


def _first_block_input(model, variables, *args, method=None):
  """What the first TransformerBlock the call runs reads (intercepted while tracing)."""
  def run(variables, *args):
    seen = []

    def record(f, a, kw, context):
      if not seen and isinstance(context.module, transformer.TransformerBlock) and context.method_name == '__call__':
        seen.append(a[0])
      return f(*a, **kw)
    with nn.intercept_methods(record):
      model.apply(variables, *args, method=method)
    return seen[0]
  return np.asarray(jax.jit(run)(variables, *args))


def test_transformer_stacks_read_scaled_embeddings_plus_sinusoids():
  """Each stack's first block reads sqrt(d) E[token] + PE(position), PE(p, 2i) = sin(p / 10000^(2i/d)),
  PE(p, 2i+1) = cos(p / 10000^(2i/d)): no embedding norm, and no parameters for the positions."""
  model = tiny('transformer')
  d = model.embed_dim
  src, tgt = toks(1, 2, 7), toks(2, 2, 5)
  params = init(model, tokens=src, decoder_tokens=tgt)['params']
  table = np.asarray(nn.unbox(params)['token_embed']['embedding'])
  assert set(nn.unbox(params)) == {'token_embed', 'encoder', 'decoder'}
  assert not {'position_embed', 'embed_norm', 'final_norm'} & set(nn.unbox(params)['encoder'])

  def sinusoids(pos):
    angles = np.asarray(pos, np.float64)[..., None] / 10000.0 ** (np.arange(0, d, 2) / d)
    pe = np.zeros((*angles.shape[:-1], d))
    pe[..., 0::2], pe[..., 1::2] = np.sin(angles), np.cos(angles)
    return pe
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 3]] * 2)  # two packed documents: the positions restart
  got = _first_block_input(model, {'params': params}, src, None, pos, method='encode')
  np.testing.assert_allclose(got, np.sqrt(d) * table[np.asarray(src)] + sinusoids(pos), atol=1e-5)
  encoded = apply(model, {'params': params}, src, method='encode')
  got = _first_block_input(model, {'params': params}, tgt, encoded, (src != 0).astype(jnp.int32), method='decode')
  np.testing.assert_allclose(got, np.sqrt(d) * table[np.asarray(tgt)] + sinusoids(np.arange(5)), atol=1e-5)
  # T5 and BART keep their unscaled embeddings
  assert not models.get_model('t5', 'tiny').embed_scale and not models.get_model('bart', 'tiny').embed_scale


# ---------------------------------------------------------------- causality

def assert_causal(fn, tokens, t):
  """fn(tokens) -> [B, T, ...]: outputs at <= t don't move when tokens after t change; later ones do."""
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % (V - 1) + 1)
  a, b = fn(tokens), fn(changed)
  assert close(a[:, :t + 1], b[:, :t + 1])
  assert not close(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize('family,kw', [('gpt', {}), ('gpt', {'position': 'rotary'}), ('rnn_lm', {'cell': 'rnn'}),
                                       ('rnn_lm', {'cell': 'gru'}), ('rnn_lm', {'cell': 'lstm'})])
def test_decoder_only_models_are_causal(family, kw):
  model = tiny(family, **kw)
  tokens = toks(1, 2, 10)
  v = init(model, tokens=tokens)
  assert_causal(lambda x: apply(model, v, x), tokens, 4)


@pytest.mark.parametrize('family', ['t5'] + [pytest.param(f, marks=pytest.mark.slow)
                                              for f in ('bart', 'rnn_seq2seq', 'transformer')])
def test_encoder_decoder_decoders_are_causal(family):
  model = tiny(family)
  src, tgt = toks(1, 2, 7), toks(2, 2, 9)
  v = init(model, tokens=src, decoder_tokens=tgt)
  assert_causal(lambda y: apply(model, v, src, y), tgt, 3)
  # and the decoder sees the source
  assert not close(apply(model, v, src, tgt), apply(model, v, src.at[:, 2].set(src[:, 2] % (V - 1) + 1), tgt))


def test_glm_sees_part_a_bidirectionally_and_part_b_causally():
  model = tiny('glm')
  ctx, n = 6, 12
  tokens = toks(1, 2, n)
  context = jnp.full((2,), ctx)
  v = init(model, tokens=tokens, context_length=context)

  def fn(x):
    return apply(model, v, x, context_length=context)
  base = fn(tokens)
  t = ctx + 2  # change part B after t
  later = fn(tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % (V - 1) + 1))
  assert close(base[:, :t + 1], later[:, :t + 1])  # all of A, and B up to t
  assert not close(base[:, t + 1:], later[:, t + 1:])
  in_a = fn(tokens.at[:, ctx - 1].set(tokens[:, ctx - 1] % (V - 1) + 1))
  assert not close(base[:, ctx:], in_a[:, ctx:])  # B sees A
  assert not close(base[:, 0], in_a[:, 0])  # and A is bidirectional: token 0 sees the change at ctx - 1


# ---------------------------------------------------------------- padding and packing

def test_bert_padding_does_not_change_real_positions():
  model = tiny('bert')
  real = toks(1, 2, 5)
  padded = jnp.concatenate([real, jnp.zeros((2, 3), jnp.int32)], axis=1)  # [PAD] = 0
  v = init(model, tokens=padded)
  a, b = apply(model, v, real), apply(model, v, padded)
  assert close(a['hidden'], b['hidden'][:, :5])
  assert close(a['mlm_logits'], b['mlm_logits'][:, :5], atol=1e-4)
  # other pad values at the pad positions, with segment ids saying they are padding: still no change
  other = padded.at[:, 5:].set(9)
  c = apply(model, v, other, segment_ids=(padded != 0).astype(jnp.int32))
  assert close(a['hidden'], c['hidden'][:, :5])


def packed(a, b):
  """Two documents in one row: tokens, segment ids 1/2, positions restarting at 0."""
  tokens = jnp.concatenate([a, b], axis=1)
  seg = jnp.concatenate([jnp.ones_like(a), 2 * jnp.ones_like(b)], axis=1)
  pos = jnp.concatenate([jnp.arange(a.shape[1]), jnp.arange(b.shape[1])])[None].repeat(a.shape[0], 0)
  return tokens, seg, pos


@pytest.mark.parametrize('family', ['gpt', pytest.param('bert', marks=pytest.mark.slow), 'glm'])
def test_packed_documents_do_not_see_each_other(family):
  model = tiny(family)
  a, b = toks(1, 2, 4), toks(2, 2, 6)
  tokens, seg, pos = packed(a, b)
  v = init(model, tokens=tokens)
  out = lambda x, s=None, p=None: apply(model, v, x, segment_ids=s, positions=p)  # noqa: E731
  if family == 'bert':
    out_ = out
    out = lambda *args: out_(*args)['hidden']  # noqa: E731
  both = out(tokens, seg, pos)
  if family != 'glm':  # GLM's positions are 2-D; packing there is checked by the invariance below
    assert close(both[:, :4], out(a), atol=2e-5)
    assert close(both[:, 4:], out(b), atol=2e-5)
  changed = out(tokens.at[:, 4:].set((tokens[:, 4:] + 3) % (V - 1) + 1), seg, pos)
  assert close(both[:, :4], changed[:, :4])
  assert not close(both[:, 4:], changed[:, 4:])
  earlier = out(tokens.at[:, :4].set((tokens[:, :4] + 3) % (V - 1) + 1), seg, pos)  # the first document
  assert close(both[:, 4:], earlier[:, 4:])  # the second document does not see it
  assert not close(both[:, :4], earlier[:, :4])


def test_t5_packed_pairs_equal_separate_pairs():
  model = tiny('t5')
  sa, sb, ta, tb = toks(1, 1, 5), toks(2, 1, 4), toks(3, 1, 3), toks(4, 1, 6)
  src, sseg, spos = packed(sa, sb)
  tgt, tseg, tpos = packed(ta, tb)
  v = init(model, tokens=src, decoder_tokens=tgt)
  both = apply(model, v, src, tgt, segment_ids=sseg, decoder_segment_ids=tseg, positions=spos,
                     decoder_positions=tpos)
  assert close(both[:, :3], apply(model, v, sa, ta), atol=2e-5)
  assert close(both[:, 3:], apply(model, v, sb, tb), atol=2e-5)


# ---------------------------------------------------------------- KV cache

def step_by_step(model, params, full_kwargs, step_kwargs, n, prefill=1, method=None):
  """Logits from decode=True calls: a prefill of `prefill` tokens, then one token at a time."""
  cache = jax.jit(functools.partial(model.init, decode=True))(jax.random.key(0), **full_kwargs)['cache']
  outs = []
  bounds = [(0, prefill)] + [(i, i + 1) for i in range(prefill, n)]
  for a, b in bounds:
    y, mut = apply(model, {'params': params, 'cache': cache}, **step_kwargs(a, b), decode=True,
                         mutable=['cache'], method=method)
    cache = mut['cache']
    outs.append(y)
  return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize('family,kw', [('gpt', {}), pytest.param('gpt', {'position': 'rotary'}, marks=pytest.mark.slow),
                                       pytest.param('gpt', {'scan_layers': True}, marks=pytest.mark.slow),
                                       ('rnn_lm', {'cell': 'lstm'}),
                                       pytest.param('rnn_lm', {'cell': 'gru'}, marks=pytest.mark.slow)])
def test_decoder_kv_cache_equals_full_forward(family, kw):
  model = tiny(family, **kw)
  tokens = toks(1, 2, 8)
  params = init(model, tokens=tokens)['params']
  full = apply(model, {'params': params}, tokens)
  got = step_by_step(model, params, dict(tokens=tokens), lambda a, b: dict(tokens=tokens[:, a:b]), 8, prefill=3)
  np.testing.assert_allclose(got, full, atol=1e-4)


def test_glm_kv_cache_equals_full_forward():
  model = tiny('glm')
  tokens, ctx = toks(1, 2, 9), jnp.array([5, 5])
  pos = jnp.array([[0, 1, 2, 3, 4, 3, 3, 3, 1]] * 2)
  block = jnp.array([[0, 0, 0, 0, 0, 1, 2, 3, 1]] * 2)
  params = init(model, tokens=tokens, context_length=ctx)['params']
  full = apply(model, {'params': params}, tokens, pos, block, ctx)
  got = step_by_step(model, params, dict(tokens=tokens, context_length=ctx),
                     lambda a, b: dict(tokens=tokens[:, a:b], positions=pos[:, a:b],
                                       block_positions=block[:, a:b], context_length=ctx), 9, prefill=5)
  np.testing.assert_allclose(got, full, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['t5', 'bart', 'rnn_seq2seq', 'transformer'])
def test_encoder_decoder_kv_cache_equals_full_forward(family):
  model = tiny(family)
  src, tgt = toks(1, 2, 7), toks(2, 2, 6)
  src = src.at[1, 5:].set(0)  # a padded source
  params = init(model, tokens=src, decoder_tokens=tgt)['params']
  full = apply(model, {'params': params}, src, tgt)
  encoded = apply(model, {'params': params}, src, method='encode')
  if family == 'rnn_seq2seq':
    args = lambda a, b: dict(decoder_tokens=tgt[:, a:b], memory=encoded, source_valid=src != 0)  # noqa: E731
  else:
    args = lambda a, b: dict(decoder_tokens=tgt[:, a:b], encoded=encoded,  # noqa: E731
                             encoder_segment_ids=(src != 0).astype(jnp.int32))
  got = step_by_step(model, params, dict(tokens=src, decoder_tokens=tgt), args, 6, prefill=2, method='decode')
  np.testing.assert_allclose(got, full, atol=1e-4)


# ---------------------------------------------------------------- scan, remat, dtype

def test_scan_and_remat_compute_the_same_function():
  tokens = toks(1, 2, 8)
  loop = tiny('gpt')
  scan = tiny('gpt', scan_layers=True)
  sp = nn.unbox(init(scan, tokens=tokens)['params'])
  lp = transformer.unstack_params(sp)
  assert set(lp) == set(nn.unbox(init(loop, tokens=tokens)['params']))
  np.testing.assert_allclose(apply(scan, {'params': sp}, tokens), apply(loop, {'params': lp}, tokens), atol=1e-5)

  def grads(model, params):
    return jax.jit(jax.grad(lambda p: jnp.mean(model.apply({'params': p}, tokens) ** 2)))(params)
  for remat_model, params in ((tiny('gpt', remat=True), lp), (tiny('gpt', scan_layers=True, remat=True), sp)):
    np.testing.assert_allclose(apply(remat_model, {'params': params}, tokens),
                               apply(loop, {'params': lp}, tokens), atol=1e-5)
  g_plain = grads(loop, lp)
  g_remat = grads(tiny('gpt', remat=True), lp)
  for x, y in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_remat)):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_bfloat16_policy():
  tokens = toks(1, 2, 8)
  f32, bf16 = tiny('gpt'), tiny('gpt', dtype=jnp.bfloat16)
  params = nn.unbox(init(bf16, tokens=tokens)['params'])
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
  lo, hi = apply(bf16, {'params': params}, tokens), apply(f32, {'params': params}, tokens)
  assert lo.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(lo - hi))) < 0.05 * float(jnp.max(jnp.abs(hi)))
  # bf16 gradients point the same way as float32 ones
  def grad(m):
    return jax.jit(jax.grad(lambda p: jnp.mean(jax.nn.log_softmax(m.apply({'params': p}, tokens))[..., 0])))
  g_lo = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grad(bf16)(params))])
  g_hi = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grad(f32)(params))])
  assert float(jnp.dot(g_lo, g_hi) / jnp.linalg.norm(g_lo) / jnp.linalg.norm(g_hi)) > 0.99


def test_dense_matmuls_accumulate_in_float32_forward_and_backward():
  x = jax.random.normal(jax.random.key(0), (4, 64)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (64, 8)).astype(jnp.bfloat16)
  dims = (((1,), (0,)), ((), ()))
  f = lambda x, w: jnp.sum(common.dot_general(x, w, dims).astype(jnp.float32) ** 2)  # noqa: E731
  jaxpr = str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, w))
  assert jaxpr.count('preferred_element_type=float32') == 3  # forward, d/dx, d/dw
  gx, gw = jax.grad(f, argnums=(0, 1))(x, w)
  rx, rw = jax.grad(lambda x, w: jnp.sum((x @ w) ** 2), argnums=(0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
  assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
  np.testing.assert_allclose(gx.astype(jnp.float32), rx, rtol=0.05, atol=0.5)
  np.testing.assert_allclose(gw.astype(jnp.float32), rw, rtol=0.05, atol=0.5)


@pytest.mark.parametrize('amx', [False, True])
def test_bfloat16_operands_widen_on_a_cpu_without_amx(amx, monkeypatch):
  """On a CPU without AMX the bf16 x bf16 -> f32 contractions (forward and both gradients) widen their operands to
  float32 first: the same products (exact in float32), the same result; with AMX they stay bfloat16."""
  from zoo.layers import matmul
  monkeypatch.setattr(matmul, 'cpu_has_amx', lambda: amx)
  x = jax.random.normal(jax.random.key(0), (4, 64)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (64, 8)).astype(jnp.bfloat16)
  f = lambda x, w: jnp.sum(matmul.einsum('ti,io->to', x, w) ** 2)  # noqa: E731
  dots = [e for e in jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, w).eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 3  # forward, d/dx, d/dw
  assert {str(v.aval.dtype) for e in dots for v in e.invars} == ({'bfloat16'} if amx else {'float32'})
  assert {str(v.aval.dtype) for e in dots for v in e.outvars} == {'float32'}
  want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)  # the exact products, summed in float64
  np.testing.assert_allclose(jax.jit(lambda x, w: matmul.einsum('ti,io->to', x, w))(x, w), want, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['t5', 'bart', 'rnn_seq2seq'])
def test_greedy_decoding_with_the_cache_equals_full_forward_passes(family):
  from zoo import decoding
  model = tiny(family)
  src = toks(1, 2, 7).at[1, 5:].set(0)
  params = init(model, tokens=src, decoder_tokens=toks(2, 2, 6))['params']
  got = np.asarray(decoding.greedy_seq2seq(model, params, src, max_len=6, eos_id=-1))
  prefix = jnp.full((2, 1), 2, jnp.int32)  # [BOS]
  for _ in range(6):  # no cache: run the decoder on the whole prefix each time
    logits = apply(model, {'params': params}, src, prefix)
    prefix = jnp.concatenate([prefix, jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)], axis=1)
  np.testing.assert_array_equal(got, np.asarray(prefix[:, 1:]))

"""Recipes that do what their names say (issue 13): label smoothing, the inverse-square-root schedule, GPT-2's
residual initialization, LoRA's own dropout rate, T5's Mesh TensorFlow initialization and Adafactor. Each is
checked against the formula written out in numpy, not against zoo's own code."""
import flax.linen as nn
from flax.traverse_util import flatten_dict as flax_flatten
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import albert as albert_config
from configs import t5 as t5_config
from zoo import models, objectives, optim
from zoo.layers import adapters as adapters_lib
from zoo.config import base_config, check
from zoo.data import tokenizer as tk
from zoo.layers.losses import Features, chunked_cross_entropy
from zoo.objectives.base import cross_entropy

B, T, D, V = 2, 7, 8, 37


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, T, D)).astype(np.float32)
  kernel = rng.normal(size=(D, V)).astype(np.float32)
  bias = (0.5 * rng.normal(size=V)).astype(np.float32)
  labels = rng.integers(0, V, (B, T)).astype(np.int32)
  weights = (rng.random((B, T)) < 0.7).astype(np.float32)
  return hidden, kernel, bias, labels, weights


def _numpy_smoothed(logits, labels, weights, a):
  """-sum_k q_k log p_k with q = (1 - a) one_hot + a / K (optax.smooth_labels), K = logits.shape[-1], in float64."""
  logits = logits.astype(np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  k = logits.shape[-1]
  q = (1 - a) * np.eye(k)[labels] + a / k
  return float((-(q * logp).sum(-1) * weights).sum())


@pytest.mark.parametrize('a', [0.1, 0.3])
def test_label_smoothing_matches_numpy_plain_and_chunked(a):
  hidden, kernel, bias, labels, weights = _problem()
  logits = hidden @ kernel + bias
  want = _numpy_smoothed(logits, labels, weights, a)
  assert abs(want - _numpy_smoothed(logits, labels, weights, 0.0)) > 0.5  # smoothing changes the loss a lot here
  plain, _ = cross_entropy(jnp.asarray(logits), labels, weights, label_smoothing=a)
  np.testing.assert_allclose(float(plain), want, rtol=1e-5)
  for chunk in (3, 4, 1000):  # several chunks (scan, padded) and one chunk (no scan)
    loss, _ = chunked_cross_entropy(hidden, kernel, labels, weights, bias=bias, chunk_size=chunk, label_smoothing=a)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # through Features (what a lean-loss model returns) and the objective's own rate
  feats = Features(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(bias))
  obj = objectives.make('causal_lm', vocab_size=V, num_special=9, label_smoothing=a)
  (loss, _), = obj.terms(feats, {'targets': labels, 'weights': weights}).values()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_label_smoothing_zero_is_todays_loss_exactly():
  hidden, kernel, bias, labels, weights = _problem(1)
  logits = jnp.asarray(hidden @ kernel + bias)
  logp = jax.nn.log_softmax(logits, axis=-1)
  today = jnp.sum(-jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0] * weights)
  assert float(cross_entropy(logits, labels, weights)[0]) == float(today)
  assert float(cross_entropy(logits, labels, weights, label_smoothing=0.0)[0]) == float(today)
  zero = objectives.make('causal_lm', vocab_size=V, num_special=9)
  assert zero.label_smoothing == 0.0
  feats = Features(jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(bias))
  lean = float(zero.terms(feats, {'targets': labels, 'weights': weights})['lm'][0])
  chunked = float(chunked_cross_entropy(hidden, kernel, labels, weights, bias=bias, chunk_size=4)[0])
  assert lean == float(chunked_cross_entropy(hidden, kernel, labels, weights, bias=bias)[0])
  np.testing.assert_allclose(chunked, _numpy_smoothed(np.asarray(logits), labels, weights, 0.0), rtol=1e-5)


def test_label_smoothing_reaches_the_mlm_objective():
  """Mlm passes its own label_smoothing field to cross_entropy."""
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(B, T, V)), jnp.float32)
  labels, weights = rng.integers(0, V, (B, T)), np.ones((B, T), np.float32)
  example = {'mlm_labels': labels, 'mlm_weights': weights}
  for a in (0.0, 0.2):
    obj = objectives.make('mlm', vocab_size=V, num_special=9, label_smoothing=a)
    got = float(obj.terms({'mlm_logits': logits}, example)['mlm'][0])
    np.testing.assert_allclose(got, _numpy_smoothed(np.asarray(logits), labels, weights, a), rtol=1e-5)
  assert float(cross_entropy(logits, labels, weights)[0]) == float(
      objectives.make('mlm', vocab_size=V, num_special=9).terms({'mlm_logits': logits}, example)['mlm'][0])


def test_label_smoothing_config_field_is_checked():
  c = base_config()
  assert c.objective.label_smoothing == 0.0
  c.objective.label_smoothing = 1.5
  with pytest.raises(ValueError, match='objective.label_smoothing'):
    check(c)


def _opt_cfg(**fields):
  c = base_config().optimizer
  c.update(fields)
  return c


def test_rsqrt_schedule_is_vaswanis_formula():
  peak, warmup = 2e-3, 400
  schedule = optim.make_schedule(_opt_cfg(decay='rsqrt', learning_rate=peak, warmup_steps=warmup), 10_000)
  d_model = 512  # the paper's: lr = d^-0.5 min(step^-0.5, step warmup^-1.5); its top is d^-0.5 warmup^-0.5
  top = d_model ** -0.5 * warmup ** -0.5
  for step in (1, 100, 399, 400, 401, 1600, 10_000, 100_000):
    paper = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
    np.testing.assert_allclose(float(schedule(step)), peak * paper / top, rtol=1e-6)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose([float(schedule(s)) for s in (200, 400, 1600, 6400)], [1e-3, 2e-3, 1e-3, 5e-4], rtol=1e-6)
  c = base_config()
  c.optimizer.decay = 'rsqrt'
  check(c)  # an allowed value


def _kernel_stds(params):
  """{path ending in a kernel or embedding: empirical std} of unboxed params."""
  flat = jax.tree_util.tree_leaves_with_path(nn.unbox(params))
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): float(np.std(np.asarray(x))) for path, x in flat
          if getattr(path[-1], 'key', '') in ('kernel', 'embedding')}


def test_gpt_residual_projections_are_scaled_by_depth():
  layers = 8
  model = models.get_model('gpt', 'tiny', num_layers=layers)
  stds = _kernel_stds(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
  wo = [v for k, v in stds.items() if k.endswith(('mlp/wo/kernel', 'out/kernel'))]  # the MLP's and attention's
  assert len(wo) == 2 * layers
  np.testing.assert_allclose(wo, 0.02 / np.sqrt(2 * layers), rtol=0.05)  # 0.005 (GPT-2, section 2.3)
  others = [v for k, v in stds.items() if k.endswith(('query/kernel', 'key/kernel', 'value/kernel', 'wi/kernel',
                                                      'token_embed/embedding'))]
  assert len(others) == 4 * layers + 1
  np.testing.assert_allclose(others, 0.02, rtol=0.05)


def test_t5_mesh_tf_initialization():
  """transformers' T5PreTrainedModel._init_weights (Mesh TensorFlow): MLP wi N(0, d^-0.5), wo N(0, d_ff^-0.5);
  attention q N(0, (d d_kv)^-0.5), k and v N(0, d^-0.5), o N(0, (heads d_kv)^-0.5); relative bias N(0, d^-0.5);
  token embeddings N(0, 1). BART keeps normal(0.02)."""
  size = models.FAMILIES['t5'].sizes['tiny']
  d, ff, heads, d_kv = size['embed_dim'], size['mlp_dim'], size['num_heads'], size['head_dim']  # 64, 128, 4, 16
  model = models.get_model('t5', 'tiny', num_encoder_layers=4, num_decoder_layers=4, mlp_dim=4 * ff)
  src = jnp.ones((1, 8), jnp.int32)
  stds = _kernel_stds(model.init(jax.random.key(0), src, src)['params'])
  want = {'mlp/wi/kernel': d ** -0.5, 'mlp/wo/kernel': (4 * ff) ** -0.5, 'query/kernel': (d * d_kv) ** -0.5,
          'key/kernel': d ** -0.5, 'value/kernel': d ** -0.5, 'out/kernel': (heads * d_kv) ** -0.5}
  for suffix, std in want.items():
    got = [v for k, v in stds.items() if k.endswith(suffix)]
    n = 8 if suffix.startswith('mlp') else 12  # 4 + 4 blocks; self-attention in 8, cross-attention in 4
    assert len(got) == n, suffix
    np.testing.assert_allclose(np.mean(got), std, rtol=0.05, err_msg=suffix)
  np.testing.assert_allclose(stds['token_embed/embedding'], 1.0, rtol=0.05)  # Mesh TF's N(0, 1)
  rel = [v for k, v in _param_stds(model, src).items() if k.endswith('rel_embedding')]
  assert len(rel) == 2
  np.testing.assert_allclose(rel, d ** -0.5, rtol=0.3)  # 32 x 4 values each: a loose tolerance
  bart = _kernel_stds(models.get_model('bart', 'tiny').init(jax.random.key(0), src, src)['params'])
  np.testing.assert_allclose([v for k, v in bart.items() if 'mlp/w' in k or 'embed' in k or 'query' in k], 0.02,
                             rtol=0.1)


def _param_stds(model, src):
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(model.init(jax.random.key(0), src, src)['params']))[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): float(np.std(v)) for path, v in flat}


class _LoraOnly(nn.Module):
  """The LoRA branch alone, with A = B = identity and alpha = rank: it returns dropout(x) itself."""
  adapters: adapters_lib.Adapters

  @nn.compact
  def __call__(self, x, deterministic):
    return adapters_lib.lora(self, self.adapters, 'query', x, x.shape[-1], ('embed', 'heads'), deterministic)


@pytest.mark.parametrize('rate', [0.0, 0.3])
def test_lora_dropout_follows_its_own_rate(rate):
  r = 16
  ad = adapters_lib.Adapters(lora_rank=r, lora_alpha=float(r), lora_dropout=rate)
  x = jnp.ones((4096, r))
  eye = nn.with_logical_partitioning(lambda *_: jnp.eye(r), (None, None))(None)
  params = {'params': {'query_lora_a': eye, 'query_lora_b': eye}}
  y = np.asarray(_LoraOnly(ad).apply(params, x, False, rngs={'dropout': jax.random.key(1)}))
  dropped = float((y == 0).mean())
  np.testing.assert_allclose(dropped, rate, atol=0.01)
  np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(_LoraOnly(ad).apply(params, x, True), x)  # eval: no dropout
  # and in a model whose own dropout is 0: the LoRA branch (B made non-zero) still drops, the base does not
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0, adapters=ad)
  tokens = jnp.arange(16, dtype=jnp.int32)[None]
  p = nn.unbox(model.init(jax.random.key(0), tokens)['params'])
  p = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.full_like(v, 0.05) if str(getattr(path[-1], 'key', '')).endswith('lora_b') else v, p)
  out = [model.apply({'params': p}, tokens, deterministic=False, rngs={'dropout': jax.random.key(s)}) for s in (0, 1)]
  assert (float(jnp.abs(out[0] - out[1]).max()) > 1e-3) == (rate > 0)


def test_adafactor_is_optax_adafactor_and_t5_uses_it():
  cfg = _opt_cfg(name='adafactor', learning_rate=1e-2, decay='constant', warmup_steps=0, weight_decay=0.0,
                 clip_norm=0.0)
  tx, _ = optim.make_optimizer(cfg, total_steps=10)
  params = {'w': jnp.asarray(np.random.default_rng(0).normal(size=(256, 130)), jnp.float32), 'b': jnp.ones(130)}
  grads = jax.tree.map(lambda p: jnp.cos(p) * 0.1, params)
  got, state = tx.update(grads, tx.init(params), params)
  ref = optax.adafactor(1e-2)
  want, ref_state = ref.update(grads, ref.init(params), params)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  kinds = lambda st: {type(s).__name__ for s in jax.tree.leaves(st, is_leaf=lambda x: hasattr(x, '_fields'))}  # noqa: E731
  assert 'FactoredState' in kinds(state) and 'ScaleByAdamState' not in kinds(state)  # factored moments, no Adam
  assert kinds(ref_state) <= kinds(state)
  c = t5_config.get_config('small')
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.decay) == ('adafactor', 1e-2, 'rsqrt_hold')
  assert c.optimizer.clip_norm == 0.0  # Mesh TF clips nothing
  schedule = optim.make_schedule(c.optimizer, c.train.steps)
  for step in (0, 1, 9_999, 10_000, 40_000, 250_000):  # Mesh TF's rsqrt_decay: 1 / sqrt(max(step, 10^4))
    np.testing.assert_allclose(float(schedule(step)), 1 / np.sqrt(max(step, 10_000)), rtol=1e-6)
  check(c)
  assert t5_config.get_config('tiny').optimizer.name == 'adamw'
  c.optimizer.name = 'lion'
  with pytest.raises(ValueError, match='optimizer.name'):
    check(c)


def test_albert_trains_with_optax_lamb_as_its_paper():
  cfg = _opt_cfg(name='lamb', learning_rate=1.76e-3, decay='constant', warmup_steps=0, weight_decay=0.01,
                 clip_norm=0.0, b1=0.9, b2=0.999, eps=1e-6)
  tx, _ = optim.make_optimizer(cfg, total_steps=10)
  rng = np.random.default_rng(0)
  params = {'dense': {'kernel': jnp.asarray(10 * rng.normal(size=(64, 32)), jnp.float32), 'bias': jnp.ones(32)},
            'norm': {'scale': jnp.full(32, 2.0)}}
  grads = jax.tree.map(lambda p: jnp.cos(p) * 0.1, params)
  got, _ = tx.update(grads, tx.init(params), params)
  ref = optax.lamb(1.76e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                   mask={'dense': {'kernel': True, 'bias': False}, 'norm': {'scale': False}})
  want, _ = ref.update(grads, ref.init(params), params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  adam = optax.adamw(1.76e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
  moved = adam.update(grads, adam.init(params), params)[0]
  assert not np.allclose(got['dense']['kernel'], moved['dense']['kernel'], rtol=1e-2)  # the trust ratio acts
  for size in ('base', 'large', 'xxlarge'):
    c = albert_config.get_config(size)
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay) == ('lamb', 1.76e-3, 0.01)
    check(c)
  assert albert_config.get_config('tiny').optimizer.name == 'adamw'


@pytest.mark.slow
def test_adafactor_trains_t5_the_same_on_every_layout(tokenizer_path):
  """Adafactor's factored moments are not parameter-shaped: the sharded state must still place them (replicated),
  and the losses match one device's."""
  import importlib
  import sys
  sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent.parent))
  from zoo import config as config_lib
  from zoo import train
  curves = {}
  for name, layout in {'one': {'mesh.devices': 1}, 'fsdp': {'mesh.data': 4, 'mesh.fsdp': 2},
                       'tensor': {'mesh.data': 2, 'mesh.tensor': 4}}.items():
    c = config_lib.override(importlib.import_module('configs.t5').get_config('tiny'), {
        'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'train.seq_len': 32, 'train.batch_size': 8,
        'optimizer.name': 'adafactor', 'optimizer.decay': 'rsqrt', 'optimizer.learning_rate': 1e-2,
        'optimizer.warmup_steps': 1, 'model.dropout_rate': 0.0, 'model.num_encoder_layers': 1,
        'model.num_decoder_layers': 1, **layout})  # every kind of T5 parameter, in half the compile time of two
    run = train.build(c, '/nonexistent-unused')
    state, step = train.init_state(run), train.make_train_step(run)
    example = run.placement.put(run.objective.example(next(iter(run.inputs.train_dataset(run))),
                                                      train.example_rng(0, 0)))
    curve = []
    for _ in range(4):
      state, metrics = step(state, example, jax.random.key(0))
      curve.append(float(run.placement.fetch(metrics)['loss']))
    curves[name] = curve
  one = curves['one']  # the rsqrt schedule's first step has learning rate 0; then every step goes downhill
  assert one[0] == one[1] and one[3] < one[2] < one[1], curves
  for name in ('fsdp', 'tensor'):
    np.testing.assert_allclose(curves[name], curves['one'], rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------- BART denoising as fairseq's DenoisingDataset

BV, BS = 50_000, 19  # vocabulary and special ids of the denoising tests


def _word_table(seed=0):
  """Word starts per id: specials start words, about 55% of the other ids do ('▁' pieces)."""
  table = np.random.default_rng(seed).random(BV) < 0.55
  table[:BS] = True
  return table


def _words_doc(table, n_words, rng, num_special=BS):
  """A document of n_words whole words of 1 to 3 pieces, every id distinct: (tokens, word starts)."""
  begin = rng.permutation(np.flatnonzero(table[num_special:]) + num_special)
  inside = rng.permutation(np.flatnonzero(~table[num_special:]) + num_special)
  sizes = rng.integers(1, 4, n_words)
  pieces, j = [], 0
  for i, size in enumerate(sizes):
    pieces += [begin[i], *inside[j:j + size - 1]]
    j += size - 1
  x = np.asarray(pieces, np.int32)
  return x, table[x]


def _infilled_runs(x, starts, y):
  """[lo, hi) of x that each [MASK] of y stands for, if y is x with runs each replaced by one [MASK] (the rest in
  order, all of x's ids distinct); else None."""
  where = {int(v): i for i, v in enumerate(x)}
  runs, cur, open_at = [], 0, None
  for v in y:
    if v == tk.MASK:
      if open_at is not None:
        return None  # two [MASK]s in a row: spans never touch
      open_at = cur
      continue
    p = where.get(int(v), -1)
    if p < cur or (p > cur and open_at is None):
      return None  # out of order, or tokens gone without a [MASK]
    if open_at is not None:
      runs.append((open_at, p))
      open_at = None
    cur = p + 1
  if open_at is not None:
    runs.append((open_at, len(x)))
  elif cur != len(x):
    return None
  return runs


def _whole_words(runs, starts):
  """Every run starts and ends at a word boundary; their lengths in words."""
  n = len(starts)
  assert all(a == b or starts[a] for a, b in runs), 'a span starts inside a word'
  assert all(b == n or starts[b] for a, b in runs), 'a span ends inside a word'
  return [int(starts[a:b].sum()) for a, b in runs]


def test_bart_infilling_masks_whole_words_in_poisson_spans():
  """fairseq's add_whole_word_mask with mask_length=span-poisson, replace_length=1: ceil(0.3 * words) words go, in
  spans of Poisson(3) words (zero-length spans insert a [MASK]) that never start or end inside a word, each span one
  [MASK]."""
  table = _word_table()
  obj = objectives.make('denoising', vocab_size=BV, num_special=BS, infill_rate=0.3, permute_rate=0.0,
                        word_starts=table)
  rng = np.random.default_rng(0)
  lengths = []
  for _ in range(60):
    x, starts = _words_doc(table, 1000, rng)
    runs = _infilled_runs(x, starts, obj.noise([x], rng))
    assert runs is not None
    words = _whole_words(runs, starts)
    assert sum(words) == 300  # the budget, in words
    lengths += words
  n = len(lengths)  # about 6000 spans
  # Poisson(3): mean 3, sd sqrt(3/n) ~ 0.022; the trimmed last span of each document lowers it by ~1.5 / 100
  # spans ~ 0.015: 0.15 is 5 sd plus that bias
  assert abs(np.mean(lengths) - 3.0) < 0.15, np.mean(lengths)
  assert abs(np.var(lengths) - 3.0) < 0.4, np.var(lengths)  # Poisson: variance = mean (sd of the estimate ~0.07)
  zero = np.mean(np.asarray(lengths) == 0)  # P(0) = e^-3 ~ 0.050, sd sqrt(p (1 - p) / n) ~ 0.003
  assert abs(zero - np.exp(-3)) < 5 * np.sqrt(np.exp(-3) * (1 - np.exp(-3)) / n) + 0.002, zero
  # token level (no word_starts: every token a word, fairseq without mask_whole_words) still spans of tokens
  tokens = objectives.make('denoising', vocab_size=BV, num_special=BS, infill_rate=0.3, permute_rate=0.0)
  x, _ = _words_doc(table, 300, rng)
  runs = _infilled_runs(x, np.ones(len(x), bool), tokens.noise([x], rng))
  assert sum(b - a for a, b in runs) == int(np.ceil(0.3 * len(x)))


def test_bart_token_masking_and_deletion_take_whole_words():
  table = _word_table(1)
  rng = np.random.default_rng(1)
  x, starts = _words_doc(table, 500, rng)
  lo = np.flatnonzero(starts)
  word_of = np.cumsum(starts) - 1
  masking = objectives.make('denoising', vocab_size=BV, num_special=BS, mask_rate=0.2, infill_rate=0.0,
                            permute_rate=0.0, word_starts=table)
  y = masking.noise([x], rng)
  hit = np.unique(word_of[y == tk.MASK])
  assert len(hit) == 100 and (y[np.isin(word_of, hit)] == tk.MASK).all()  # every piece of 20% of the words
  deleting = objectives.make('denoising', vocab_size=BV, num_special=BS, delete_rate=0.2, infill_rate=0.0,
                             permute_rate=0.0, word_starts=table)
  y = deleting.noise([x], rng)
  gone = np.setdiff1d(np.arange(500), np.unique(word_of[np.isin(x, y)]))
  assert len(gone) == 100 and not np.isin(x[np.isin(word_of, gone)], y).any() and len(lo) == 500


def test_bart_whole_words_come_from_the_tokenizer(tokenizer_path):
  """The recipe's objective learns which ids start a word from the tokenizer (the trainer fills word_starts, as for
  MLM's whole-word masking), and example() on a packed row masks whole words of each document."""
  import importlib
  import sys
  sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent.parent))
  from zoo import config as config_lib
  build = importlib.import_module('zoo.train.build')
  c = config_lib.override(importlib.import_module('configs.bart').get_config('tiny'), {
      'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'objective.mask_random': 0.0})
  tok = tk.Tokenizer.load(tokenizer_path)
  obj = build.make_objective(c, tok)
  assert (obj.infill_rate, obj.poisson_lambda, obj.permute_rate, obj.mask_random) == (0.3, 3.0, 1.0, 0.0)
  table = np.asarray(obj.word_starts)
  np.testing.assert_array_equal(table, tok.word_starts(np.arange(tok.vocab_size)))
  rng = np.random.default_rng(2)
  spans = 0
  for step in range(20):
    x, starts = _words_doc(table, 50, rng, obj.num_special)  # two documents of distinct pieces, one sentence each
    cut = int(np.flatnonzero(starts)[25])
    docs = [x[:cut], x[cut:]]
    tokens = np.concatenate([np.append(d, tk.EOS) for d in docs])
    seg = np.concatenate([np.full(len(d) + 1, i + 1) for i, d in enumerate(docs)])
    t = len(tokens) + 3
    batch = {k: np.pad(v, (0, t - len(v)))[None].astype(np.int32)
             for k, v in {'tokens': tokens, 'segment_ids': seg, 'sentence_ids': seg}.items()}
    got = obj.example(batch, np.random.default_rng(step))['tokens'][0]
    ends = np.flatnonzero(got == tk.EOS)
    for d, lo, hi in zip(docs, [0, ends[0] + 1], ends):
      runs = _infilled_runs(d, table[d], got[lo:hi])
      assert runs is not None
      _whole_words(runs, table[d])
      spans += len(runs)
  assert spans > 40


def within(count, n, p, sigmas=5.0):
  """count ~ Binomial(n, p): within `sigmas` standard deviations of n p."""
  return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


def test_bart_mask_random_replaces_a_tenth_of_the_masks():
  """fairseq's random_ratio (BART: --mask-random 0.1): of the infilled spans, the masked words and the insertions,
  that fraction gets a random token instead of [MASK]; none at 0."""
  import importlib
  assert importlib.import_module('configs.bart').get_config('tiny').objective.mask_random == 0.1
  table = _word_table(2)
  rng = np.random.default_rng(3)
  for rate in (0.1, 0.0):
    obj = objectives.make('denoising', vocab_size=BV, num_special=BS, infill_rate=0.3, permute_rate=0.0,
                          word_starts=table, mask_random=rate)
    spans, masks, invented = [], 0, 0
    for _ in range(40):
      x, starts = _words_doc(table, 1000, rng)
      y = obj.infill(x, rng, spans, starts)
      masks += int((y == tk.MASK).sum())
      invented += int((~np.isin(y, x) & (y != tk.MASK)).sum())
    n = len(spans)  # about 4000 spans: 10% is 400 +- 19
    assert within(n - masks, n, rate), (n - masks, n)
    # the others are random tokens: ids that are no piece of x, but for the ~4% that happen to be one of x's
    assert 0.9 * (n - masks) <= invented <= n - masks
    # token masking: per masked word, all its pieces random or all [MASK]
    masking = objectives.make('denoising', vocab_size=BV, num_special=BS, mask_rate=0.3, infill_rate=0.0,
                              permute_rate=0.0, word_starts=table, mask_random=rate)
    random_words = words = 0
    for _ in range(10):
      x, starts = _words_doc(table, 1000, rng)
      y = masking.noise([x], rng)
      word_of = np.cumsum(starts) - 1
      for w in np.unique(word_of[y != x]):
        piece = y[word_of == w]
        assert (piece == tk.MASK).all() or not (piece == tk.MASK).any()
        random_words += int(not (piece == tk.MASK).any())
        words += 1
    assert words == 3000 and within(random_words, words, rate)
    # insertion: ceil(0.1 * n) of the inserted tokens random, as fairseq's add_insertion_noise
    inserting = objectives.make('denoising', vocab_size=BV, num_special=BS, insert_rate=0.2, infill_rate=0.0,
                                permute_rate=0.0, mask_random=rate)
    x, _ = _words_doc(table, 300, rng)
    y = inserting.noise([x], rng)
    added = int(np.ceil(0.2 * len(x)))
    assert len(y) == len(x) + added and (y[np.isin(y, x)] == x).all()
    assert (y == tk.MASK).sum() == added - int(np.ceil(added * rate))


def _unrolled(x, starts, y):
  """The spans of some rotation of y that is x infilled whole-word-wise (None: no rotation is)."""
  for i in np.flatnonzero((y == x[0]) | (y == tk.MASK)):  # x infilled starts with x[0] or a [MASK]
    runs = _infilled_runs(x, starts, np.roll(y, -i))
    if runs is not None and all(a == b or starts[a] for a, b in runs) and \
        all(b == len(x) or starts[b] for a, b in runs):
      return runs
  return None


def test_bart_rotation_comes_after_masking():
  """fairseq's order: permutation, whole-word masking / infilling, insertion, then rotation. With rotate_rate=1 the
  input is always a rotation of the infilled document (a span never wraps from its end to its start); infilling a
  rotated document instead, as zoo once did, makes spans across the wrap and inside words, which no rotation of
  an infilled document shows."""
  table = _word_table(3)
  rng = np.random.default_rng(4)
  obj = objectives.make('denoising', vocab_size=BV, num_special=BS, infill_rate=0.3, permute_rate=0.0,
                        rotate_rate=1.0, word_starts=table)
  before = objectives.make('denoising', vocab_size=BV, num_special=BS, infill_rate=0.3, permute_rate=0.0,
                           word_starts=table)
  wrong = 0
  for _ in range(100):
    x, starts = _words_doc(table, 40, rng)
    y = obj.noise([x], rng, [starts])
    assert _unrolled(x, starts, y) is not None
    assert _infilled_runs(x, starts, y) is None or y[0] == tk.MASK  # it was rotated
    k = int(rng.integers(1, len(x)))  # the old order: rotate, then infill
    wrong += _unrolled(x, starts, before.noise([np.roll(x, -k)], rng, [np.roll(starts, -k)])) is None
  assert wrong > 20, wrong  # about 4 in 10 old-order inputs are no rotation of an infilled document


# ---------------------------------------------------------------- GLM: packed documents, nothing dropped

def _glm_documents(ex, row):
  """Each document of an example row rebuilt from its part A and its spans in part B: {segment id: tokens}."""
  ctx = int(ex['context_length'][row])
  toks, pos, doc, tgt = (ex[k][row] for k in ('tokens', 'positions', 'segment_ids', 'targets'))
  n = ctx + int(ex['weights'][row].sum())
  fills, i = {}, ctx
  while i < n:
    assert toks[i] == tk.SOP
    j = i + int(np.argmax(np.append(tgt[i:n], tk.EOP) == tk.EOP))  # the span's [eop] target
    fills[doc[i], pos[i]] = list(tgt[i:j])
    i = j + 1
  out = {}
  for d in np.unique(doc[:ctx]):
    a = toks[:ctx][doc[:ctx] == d]
    out[int(d)] = [x for k, v in enumerate(a) for x in (fills.pop((d, k)) if v == tk.MASK else [v])]
  assert not fills  # every span belongs to a [MASK] of its own document
  return out


@pytest.mark.parametrize('packing', ['concat', 'first_fit'])
def test_glm_drops_no_token_the_pipeline_delivers(tokenizer_path, packing):
  """The pipeline packs rows to the objective's input_length(seq_len) and pads them to seq_len: part A and the
  spans of part B then hold every token delivered, for any seq_len (zoo once cut each row to seq_len - 2 k_max)."""
  from zoo.data import pipeline, sources
  tok = tk.Tokenizer.load(tokenizer_path)
  docs, _ = sources.read_documents('default')
  obj = objectives.make('blank_infilling', vocab_size=tok.vocab_size, num_special=tk.FIRST_SENTINEL + 20)
  for seq_len in (16, 32, 100, 256):
    room = obj.input_length(seq_len)
    assert seq_len - room == 2 * obj.max_spans(seq_len)
    ds = pipeline.make_dataset(docs[:300], tok, seq_len=seq_len, batch_size=4, packing=packing, shuffle=False,
                               prefetch=0, text_len=room)
    it = iter(ds)
    for step in range(3):
      batch = next(it)
      assert batch['tokens'].shape == (4, seq_len) and (batch['segment_ids'][:, room:] == 0).all()
      ex = obj.example(batch, np.random.default_rng(step))
      for row in range(4):
        seg = batch['segment_ids'][row]
        got = _glm_documents(ex, row)
        want = {d: list(batch['tokens'][row][seg == s]) for d, s in enumerate(np.unique(seg[seg > 0]), 1)}
        assert got == want, (seq_len, step, row)
        assert int((ex['segment_ids'][row] > 0).sum()) <= seq_len
  # rows full of short documents: the spans' cap (max_spans a row) keeps part B in the row
  rng = np.random.default_rng(5)
  for seq_len in (16, 64, 128):
    room = obj.input_length(seq_len)
    seg = np.zeros((4, seq_len), np.int32)
    for row in range(4):
      seg[row, :room] = np.cumsum(rng.random(room) < 0.3) + 1
    batch = {'tokens': np.where(seg > 0, rng.integers(tk.FIRST_SENTINEL + 20, tok.vocab_size, seg.shape), 0),
             'segment_ids': seg}
    ex = obj.example(batch, rng)
    for row in range(4):
      want = {d: list(batch['tokens'][row][seg[row] == s]) for d, s in enumerate(np.unique(seg[row][seg[row] > 0]), 1)}
      assert _glm_documents(ex, row) == want
  with pytest.raises(ValueError, match='input_length'):  # a fuller row is refused, never cut
    obj.example({'tokens': np.full((1, 64), 500), 'segment_ids': np.ones((1, 64), np.int32)}, rng)


def test_glm_packed_documents_are_separate_examples():
  """A row of three documents: the mask the model builds lets each document's part A see its own part A only, and
  each span see its own part A and its own spans causally, as three separate GLM examples would; document 1's
  logits are the same as when it is alone in the row, and do not change when the other documents do."""
  from zoo.models import glm
  obj = objectives.make('blank_infilling', vocab_size=512, num_special=BS)
  t = 96
  rng = np.random.default_rng(6)
  lengths = [30, 22, 18]
  texts = [rng.integers(BS, 512, n) for n in lengths]

  def example(texts, seed=0):
    tokens = np.concatenate(texts)
    seg = np.concatenate([np.full(len(x), i + 1) for i, x in enumerate(texts)])
    batch = {'tokens': np.pad(tokens, (0, t - len(tokens)))[None].astype(np.int32),
             'segment_ids': np.pad(seg, (0, t - len(seg)))[None].astype(np.int32)}
    return obj.example(batch, np.random.default_rng(seed))

  ex = example(texts)
  ctx, doc = int(ex['context_length'][0]), ex['segment_ids'][0]
  assert len(np.unique(doc[doc > 0])) == 3 and ex['weights'][0].sum() > 6
  mask = np.asarray(glm.training_mask(jnp.asarray(ex['segment_ids']), jnp.asarray(ex['context_length'])).dense(t, t))
  mask = mask[0, 0]
  # the mask of three separate examples, written out: per document, its part A (bidirectional) and its part B
  want = np.zeros((t, t), bool)
  for d in (1, 2, 3):
    a = np.flatnonzero((doc == d) & (np.arange(t) < ctx))
    b = np.flatnonzero((doc == d) & (np.arange(t) >= ctx))
    want[np.ix_(a, a)] = True
    want[np.ix_(b, a)] = True
    for r, q in enumerate(b):
      want[q, b[:r + 1]] = True
  real = doc > 0
  np.testing.assert_array_equal(mask[real][:, real], want[real][:, real])
  assert not (mask[real][:, ~real]).any()
  # and through the model: document 1's logits alone, in the row, and with the others changed
  model = models.get_model('glm', 'tiny', dropout_rate=0.0)
  keys = ('tokens', 'positions', 'block_positions', 'context_length', 'segment_ids')
  params = model.init(jax.random.key(0), **{k: jnp.asarray(ex[k]) for k in keys})
  apply = jax.jit(model.apply)
  logits = lambda e: np.asarray(apply(params, **{k: jnp.asarray(e[k]) for k in keys}))[0]  # noqa: E731
  both = logits(ex)
  alone_ex = example(texts[:1])
  alone = logits(alone_ex)
  one = doc == 1
  np.testing.assert_allclose(both[one], alone[alone_ex['segment_ids'][0] == 1], atol=1e-5)
  other = example([texts[0], (texts[1] + 7) % 400 + BS, (texts[2] + 3) % 400 + BS])
  np.testing.assert_array_equal(other['segment_ids'], ex['segment_ids'])  # same layout, other tokens
  changed = logits(other)
  np.testing.assert_allclose(both[one], changed[one], atol=1e-5)
  assert not np.allclose(both[doc == 2], changed[doc == 2], atol=1e-3)


def test_rnn_seq2seq_decoder_starts_from_the_encoders_final_states():
  """Issue 13 (Bahdanau et al. 2015: s0 = tanh(W h_1)): each decoder layer's first state is tanh of a projection
  of the encoder's final states, the memory at the source's first position (the backward direction's last step)
  and at its last real one (the forward direction's); the LSTM's cell starts at 0. A source that differs only in
  its last real token changes the decoder's first state."""
  from zoo.models import rnn
  model = rnn.RnnSeq2Seq(**{**rnn.SEQ2SEQ_SIZES['tiny'], 'num_layers': 2, 'dropout_rate': 0.0})
  src = jnp.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
  dec = jnp.array([[2, 5, 6], [2, 9, 10]])
  params = nn.unbox(model.init(jax.random.key(0), src, dec)['params'])
  memory = model.apply({'params': params}, src, method='encode')
  carries = model.apply({'params': params}, memory, src != 0, method='start_carries')
  final = np.concatenate([np.asarray(memory[:, 0]), np.asarray(memory)[[0, 1], [3, 5]]], -1)
  for i, (c, h) in enumerate(carries):
    p = params[f'bridge_{i}']
    np.testing.assert_allclose(h, np.tanh(final @ np.asarray(p['kernel']) + np.asarray(p['bias'])), atol=1e-5)
    np.testing.assert_array_equal(c, 0.0)
  other = src.at[0, 3].set(20)  # the last real token of row 0
  moved = model.apply({'params': params}, model.apply({'params': params}, other, method='encode'), other != 0,
                      method='start_carries')
  assert not np.allclose(moved[0][1][0], carries[0][1][0]) and np.allclose(moved[0][1][1], carries[0][1][1])


def test_sgd_is_optax_sgd_after_clipping():
  """optimizer.name='sgd' (the RNN papers'): clip to the global norm, then plain SGD at the schedule's rate."""
  c = base_config()
  c.optimizer.update(name='sgd', learning_rate=1.0, clip_norm=5.0, weight_decay=0.0, warmup_steps=0,
                     decay='constant')
  check(c)
  tx, _ = optim.make_optimizer(c.optimizer, 10)
  params = {'w': jnp.ones((3,))}
  grads = {'w': jnp.array([30.0, 40.0, 0.0])}  # norm 50: clipped to 5
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], [-3.0, -4.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize('family', ['bart', 't5'])
def test_only_t5_drops_out_after_the_last_layer(family):
  """T5 applies dropout after its final RMSNorm; BART and the Transformer (post-LN) end on the last layer's norm."""
  model = models.get_model(family, 'tiny', dropout_rate=0.5)
  tokens = jnp.arange(1, 33, dtype=jnp.int32)[None] % 50 + 10
  params = model.init(jax.random.key(0), tokens, tokens)['params']
  out = model.apply({'params': params}, tokens, deterministic=False, method=model.encode,
                    rngs={'dropout': jax.random.key(1)})
  zeros = float((np.asarray(out) == 0).mean())
  if family == 't5':
    np.testing.assert_allclose(zeros, 0.5, atol=0.05)
  else:
    assert zeros == 0.0


def test_glm_scales_its_output_projections_as_megatron():
  """GLM's reference (Megatron-based) draws the attention output and MLP output kernels from N(0, 0.02 / sqrt(2 L)),
  the other kernels from N(0, 0.02)."""
  model = models.get_model('glm', 'tiny', num_layers=4, embed_dim=256, mlp_dim=1024, num_heads=4)
  tokens = jnp.arange(1, 17, dtype=jnp.int32)[None]
  params = nn.unbox(model.init(jax.random.key(0), tokens, context_length=jnp.asarray([8]))['params'])
  flat = flax_flatten(params)
  want = 0.02 / np.sqrt(2 * 4)
  outs = [v for k, v in flat.items() if k[-1] == 'kernel' and any(p in ('out', 'wo') for p in k)]
  others = [v for k, v in flat.items() if k[-1] == 'kernel' and any(p in ('query', 'key', 'value', 'wi') for p in k)]
  assert len(outs) == 8 and others
  for v in outs:
    np.testing.assert_allclose(float(np.std(np.asarray(v))), want, rtol=0.1)
  for v in others:
    np.testing.assert_allclose(float(np.std(np.asarray(v))), 0.02, rtol=0.1)


@pytest.mark.parametrize('pair_task', ['sop', 'nsp'])
def test_sentence_pairs_keep_the_segmenters_word_boundaries(pair_task):
  """With the batch's word_starts (Chinese words from jieba), whole-word masking in NSP/SOP masks those words, as
  plain MLM does: without them every run of characters between [CLS] and [SEP] was one 'word' (a whole piece)."""
  from zoo.objectives.sentence_pairs import MlmNsp
  vocab, special, b, t = 300, 10, 8, 128
  rng = np.random.default_rng(0)
  tokens = rng.integers(special, vocab, (b, t)).astype(np.int32)
  seg = np.repeat(np.arange(1, 5), t // 4)[None].repeat(b, 0).astype(np.int32)  # 4 documents a row
  sent = (np.arange(t) % 32 // 8 + 1)[None].repeat(b, 0).astype(np.int32)  # 4 sentences each
  starts = np.zeros((b, t), np.int32)
  starts[:, ::2] = 1  # words of two characters
  batch = {'tokens': tokens, 'segment_ids': seg, 'sentence_ids': sent, 'word_starts': starts,
           'positions': np.tile(np.arange(t) % 32, (b, 1)).astype(np.int32),
           'document_ids': (seg + 10 * np.arange(b)[:, None]).astype(np.int32)}
  obj = MlmNsp(vocab_size=vocab, num_special=special, masking='whole_word', pair_task=pair_task,
               word_starts=np.zeros(vocab, bool))  # a character vocabulary: no '▁' pieces
  runs, shares = [], []
  for seed in range(20):
    out = obj.example(batch, np.random.default_rng(seed))
    for row in range(b):
      chosen = np.sort(out['mlm_positions'][row][out['mlm_weights'][row] > 0])
      real = int(((out['segment_ids'][row] > 0) & (out['tokens'][row] >= special) |
                  np.isin(np.arange(t), chosen)).sum())
      shares.append(len(chosen) / max(real, 1))
      cuts = np.flatnonzero(np.diff(chosen) > 1)
      runs += [len(r) for r in np.split(chosen, cuts + 1) if len(r)]
  assert np.mean(runs) < 3  # words of two (neighbours join runs now and then); a whole piece was ~30
  np.testing.assert_allclose(np.mean(shares), 0.15, atol=0.03)

"""Recipes that do what their names say (issue 13): label smoothing, the inverse-square-root schedule, GPT-2's
residual initialization, LoRA's own dropout rate, T5's Mesh TensorFlow initialization and Adafactor. Each is
checked against the formula written out in numpy, not against zoo's own code."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import t5 as t5_config
from zoo import models, objectives, optim
from zoo.layers import adapters as adapters_lib
from zoo.config import base_config, check
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


def test_gpt_residual_mlp_projection_is_scaled_by_depth():
  layers = 8
  model = models.get_model('gpt', 'tiny', num_layers=layers)
  stds = _kernel_stds(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
  wo = [v for k, v in stds.items() if k.endswith('mlp/wo/kernel')]
  assert len(wo) == layers
  np.testing.assert_allclose(wo, 0.02 / np.sqrt(2 * layers), rtol=0.05)  # 0.005 (GPT-2, section 2.3)
  others = [v for k, v in stds.items() if k.endswith(('query/kernel', 'key/kernel', 'value/kernel', 'wi/kernel',
                                                      'token_embed/embedding'))]
  assert len(others) == 4 * layers + 1
  np.testing.assert_allclose(others, 0.02, rtol=0.05)


def test_t5_mesh_tf_initialization_of_the_mlp():
  size = models.FAMILIES['t5'].sizes['tiny']
  d, ff = size['embed_dim'], size['mlp_dim']  # 64, 128
  model = models.get_model('t5', 'tiny')
  src = jnp.ones((1, 8), jnp.int32)
  stds = _kernel_stds(model.init(jax.random.key(0), src, src)['params'])
  wi = [v for k, v in stds.items() if k.endswith('mlp/wi/kernel')]
  wo = [v for k, v in stds.items() if k.endswith('mlp/wo/kernel')]
  assert len(wi) == len(wo) == 4  # 2 encoder + 2 decoder blocks
  np.testing.assert_allclose(wi, d ** -0.5, rtol=0.05)  # 0.125
  np.testing.assert_allclose(wo, ff ** -0.5, rtol=0.05)  # 0.0884
  bart = _kernel_stds(models.get_model('bart', 'tiny').init(jax.random.key(0), src, src)['params'])
  np.testing.assert_allclose([v for k, v in bart.items() if 'mlp/w' in k or 'embed' in k], 0.02, rtol=0.1)


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
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.decay) == ('adafactor', 1e-2, 'rsqrt')
  check(c)
  assert t5_config.get_config('tiny').optimizer.name == 'adamw'
  c.optimizer.name = 'sgd'
  with pytest.raises(ValueError, match='optimizer.name'):
    check(c)


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
        'optimizer.warmup_steps': 1, 'model.dropout_rate': 0.0, **layout})
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

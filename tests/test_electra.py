"""ELECTRA: the published discriminator size, replaced-token labels, no gradient through the generator's samples,
one shared embedding, Gumbel sampling from the softmax, fine-tuning from the discriminator, and a short run that
learns."""
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from zoo import checkpoint as ckpt
from zoo import config as config_lib
from zoo import models, train
from zoo.models import electra
from zoo.objectives import rtd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def test_small_discriminator_is_14m_and_generators_are_a_quarter_and_a_third():
  small = models.scanned(models.get_model('electra', 'small', head='discriminator'))
  n = models.count_params(small)
  assert abs(n / 14e6 - 1) < 0.05 and n == electra.PUBLISHED_PARAMS['small']  # transformers' count, exactly
  assert models.FAMILIES['electra'].kind == models.ENCODER
  for size, frac in (('small', 1 / 4), ('base', 1 / 3)):
    s = electra.SIZES[size]
    assert s['generator_embed_dim'] == round(s['embed_dim'] * frac) and s['generator_mlp_dim'] == 4 * s[
        'generator_embed_dim'] and s['generator_num_heads'] == s['generator_embed_dim'] // 64
  # pretraining adds the generator (its layers, projection and MLM head) and nothing else
  both = models.count_params(models.scanned(models.get_model('electra', 'small')))
  e, h, f, layers = 128, 64, 256, 12
  generator = e * h + h + layers * (4 * (h * h + h) + 2 * h * f + f + h + 4 * h) + h * e + e + 2 * e + 30522
  assert both - n == generator


def _example(model, seq_len=16, rows=4, seed=0):
  obj = rtd.Rtd(vocab_size=model.vocab_size, num_special=8)
  rng = np.random.default_rng(seed)
  batch = {'tokens': rng.integers(8, model.vocab_size, (rows, seq_len)).astype(np.int32),
           'segment_ids': np.ones((rows, seq_len), np.int32), 'positions': np.tile(np.arange(seq_len), (rows, 1))}
  batch['segment_ids'][0, -3:] = 0  # padding at the end of one row
  batch['tokens'][0, -3:] = 0
  return obj, batch, obj.example(batch, rng)


@pytest.fixture(scope='module')
def tiny():
  model = models.get_model('electra', 'tiny', dropout_rate=0.0)
  obj, batch, ex = _example(model)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), **obj.inputs(ex))['params'])
  return model, obj, batch, ex, params


def test_labels_are_sampled_differs_from_original_on_masked_positions_only(tiny):
  rng = np.random.default_rng(1)
  b, p, t = 3, 5, 9
  positions = np.stack([np.sort(rng.choice(t, p, replace=False)) for _ in range(b)])
  originals, sampled = rng.integers(0, 4, (b, p)), rng.integers(0, 4, (b, p))  # a small vocabulary: some agree
  weights = (rng.random((b, p)) < 0.7).astype(np.float32)
  positions[weights == 0] = 0  # empty slots point at 0, as Mlm leaves them
  want = np.zeros((b, t), np.int32)
  for i in range(b):
    for j in range(p):
      if weights[i, j] and sampled[i, j] != originals[i, j]:
        want[i, positions[i, j]] = 1
  np.testing.assert_array_equal(rtd.labels(sampled, positions, originals, weights, t), want)
  np.testing.assert_array_equal(rtd.labels(*map(jnp.asarray, (sampled, positions, originals, weights)), t, xp=jnp),
                                want)
  # in the model: the discriminator reads the original row with the samples at the masked positions, and the
  # labels are exactly where that row differs from the original
  model, obj, batch, ex, params = tiny
  out = jax.jit(lambda p: model.apply({'params': p}, **obj.inputs(ex)))(params)
  seen = np.asarray(out['discriminator_tokens'])
  got = rtd.labels(np.asarray(out['sampled']), ex['mlm_positions'], ex['mlm_labels'], ex['mlm_weights'], 16)
  np.testing.assert_array_equal(got, seen != batch['tokens'])
  real = ex['mlm_weights'] > 0
  at_masked = np.take_along_axis(seen, ex['mlm_positions'], 1)
  np.testing.assert_array_equal(at_masked[real], np.asarray(out['sampled'])[real])
  assert 0 < got.sum() <= real.sum()


def test_no_gradient_reaches_the_generator_through_the_samples_and_the_embedding_is_shared(tiny):
  model, obj, _, ex, params = tiny
  assert not set(electra.SHARED) & set(params['generator'])  # one table: the discriminator's
  assert 'embed_project' in params['generator']  # the generator projects E=64 to its width 16

  def term(name):
    def f(p):
      out = model.apply({'params': p}, **obj.inputs(ex))
      return obj.terms(out, ex)[name][0]
    return jax.jit(jax.grad(f))(params)
  g_rtd, g_mlm = term('rtd'), term('mlm')
  generator_only = {k: g_rtd[k] for k in ('generator', 'mlm_transform', 'mlm_norm', 'mlm_bias')}
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(generator_only))
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_rtd['discriminator'])) > 0
  # the MLM loss trains the shared embeddings (token, position) and the generator, not the discriminator's layers
  for k in ('token_embed', 'position_embed'):
    assert float(jnp.abs(g_mlm['discriminator'][k]['embedding']).max()) > 0, k
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_mlm['discriminator']['layers_0']))
  # the generator reads the discriminator's table: changing it changes the generator's logits
  bumped = jax.tree.map(lambda x: x, params)
  bumped['discriminator']['position_embed']['embedding'] = params['discriminator']['position_embed']['embedding'] + 1
  run = jax.jit(lambda p: model.apply({'params': p}, **obj.inputs(ex))['mlm_logits'])
  assert not np.allclose(run(params), run(bumped))


def test_gumbel_samples_follow_the_softmax_not_the_argmax():
  logits = jnp.log(jnp.array([0.6, 0.3, 0.1]))
  draws = np.asarray(electra.gumbel_sample(jnp.arange(4000, dtype=jnp.uint32), jnp.tile(logits, (4000, 1))))
  freq = np.bincount(draws, minlength=3) / 4000
  np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)  # 4 standard errors or more
  again = np.asarray(electra.gumbel_sample(jnp.arange(4000, dtype=jnp.uint32), jnp.tile(logits, (4000, 1))))
  np.testing.assert_array_equal(draws, again)  # the seeds decide: a resumed run samples the same


def _recipe(tokenizer_path, **overrides):
  from configs import electra as recipe
  return config_lib.override(recipe.get_config('tiny'), {
      'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'log.tensorboard': False, 'log.every': 1,
      'train.eval_batches': 2, 'mesh.devices': 1, **overrides})


@pytest.mark.slow
def test_tiny_recipe_learns_and_finetuning_starts_from_the_discriminator(tokenizer_path, tmp_path):
  steps = 100  # the discriminator first learns the prior (always original), then to detect
  metrics = train.train_and_evaluate(_recipe(tokenizer_path, **{'train.steps': steps, 'train.seq_len': 64,
                                                                'model.dropout_rate': 0.0}), str(tmp_path / 'pre'))
  rows = [json.loads(x) for x in open(tmp_path / 'pre' / 'metrics.jsonl')]
  curve = {r['step']: r for r in rows if 'rtd_loss' in r}
  mean = lambda key, s: np.mean([curve[i][key] for i in s])  # noqa: E731
  for key in ('mlm_loss', 'rtd_loss'):
    assert mean(key, range(steps - 4, steps + 1)) < mean(key, (1, 2, 3)) - 0.3, key
  assert metrics['rtd_accuracy'] > metrics['rtd_baseline_accuracy'], metrics
  # fine-tuning: the discriminator's weights arrive bit for bit; the pooler and classifier are new
  from configs import finetune
  c = config_lib.override(finetune.get_config('classification'), {
      'task.init_from': str(tmp_path / 'pre'), 'train.seq_len': 32, 'mesh.devices': 1})
  run = train.build(c, str(tmp_path / 'cls'))
  assert run.model.head == 'classification'
  flat = traverse_util.flatten_dict(jax.device_get(train.init_state(run)).params)
  state_dir, _ = ckpt.find_state(str(tmp_path / 'pre'))
  saved = ckpt.saved_params(state_dir)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  want = traverse_util.flatten_dict(jax.device_get(ckpt.restore_params(state_dir, traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(v, jnp.float32, sharding=one) for k, v in saved.items()}))))
  assert {k[:2] for k in flat if k not in want} == {('discriminator', 'pooler'), ('discriminator', 'classifier')}
  copied = [k for k in flat if k in want]
  assert len(copied) > 20 and all(k[0] == 'discriminator' for k in copied)
  for k in copied:
    np.testing.assert_array_equal(flat[k], want[k])

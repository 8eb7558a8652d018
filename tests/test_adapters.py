"""LoRA and prefix tuning: parameter counts against the formula, step 0 equal to the base model, merged
weights equal to the adapted model, and prefixes that act like extra keys and values."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from zoo import models
from zoo.layers import adapters as ad_lib
from zoo.layers.adapters import Adapters

ALL = ('query', 'key', 'value', 'out', 'mlp')


def _init(model, **batch):
  return nn.unbox(model.init(jax.random.key(0), **batch)['params'])


def _batch(family, b=2, t=12):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(10, 500, (b, t)), jnp.int32)
  if family in ('t5', 'bart'):
    return dict(tokens=tokens, decoder_tokens=tokens[:, ::-1])
  if family == 'glm':
    return dict(tokens=tokens, context_length=jnp.array([5, 7]))
  return dict(tokens=tokens)


def _out(family, model, params, batch, **kw):
  out = model.apply({'params': params}, **batch, **kw)
  return out['hidden'] if isinstance(out, dict) else out


def _randomize_b(params, seed=1):
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(seed)
  for k, v in flat.items():
    if k[-1].endswith('_lora_b'):
      flat[k] = jnp.asarray(rng.normal(0, 0.05, v.shape), v.dtype)
  return traverse_util.unflatten_dict(flat)


def _adapter_size(params):
  return sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(params) if ad_lib.is_adapter(p))


@pytest.mark.parametrize('family,targets,scan', [
    ('gpt', ('query', 'value'), False),
    pytest.param('bert', ALL, False, marks=pytest.mark.slow), pytest.param('t5', ALL, True, marks=pytest.mark.slow),
    pytest.param('glm', ('out', 'mlp'), False, marks=pytest.mark.slow),
    pytest.param('albert', ('query',), False, marks=pytest.mark.slow)])
def test_lora_count_zero_start_and_merge(family, targets, scan):
  ad = Adapters(lora_rank=3, lora_alpha=6.0, lora_targets=targets)
  kw = dict(dropout_rate=0.0, scan_layers=scan) if family != 'albert' else dict(dropout_rate=0.0)
  base = models.get_model(family, 'tiny', **kw)
  model = base.clone(adapters=ad)
  batch = _batch(family)
  params = _init(model, **batch)
  # the trainable count is the formula r (in + out) per adapted projection and layer
  assert _adapter_size(params) == ad_lib.lora_param_count(model) > 0
  # B = 0: step 0 is the base model, bit for bit
  base_params = ad_lib.merge_lora(params, ad)
  assert _adapter_size(base_params) == 0
  np.testing.assert_array_equal(_out(family, model, params, batch), _out(family, base, base_params, batch))
  # trained (random) B: the merged base model equals the adapted model
  params = _randomize_b(params)
  adapted = _out(family, model, params, batch)
  merged = _out(family, base, ad_lib.merge_lora(params, ad), batch)
  assert float(jnp.max(jnp.abs(adapted - _out(family, base, base_params, batch)))) > 1e-4  # B matters
  np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=1e-5)


def test_lora_dropout_only_in_training():
  ad = Adapters(lora_rank=2, lora_dropout=0.5, lora_targets=ALL)
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0, adapters=ad)
  batch = _batch('gpt')
  params = _randomize_b(_init(model, **batch))
  a = model.apply({'params': params}, **batch, deterministic=True)
  b = model.apply({'params': params}, **batch, deterministic=False, rngs={'dropout': jax.random.key(1)})
  c = model.apply({'params': params}, **batch, deterministic=False, rngs={'dropout': jax.random.key(1)})
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  np.testing.assert_array_equal(b, c)


def _reference_attention(q, k, v, mask):
  logits = jnp.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(mask, logits, -1e9)
  return jnp.einsum('bnts,bsnh->btnh', jax.nn.softmax(logits, -1), v)


def test_prefix_is_extra_keys_and_values():
  """Self-attention with a prefix equals textbook attention over [prefix; keys] (every query sees the prefix)."""
  from zoo.layers.attention import MultiHeadAttention, causal_mask
  ad = Adapters(prefix_length=3)
  mha = MultiHeadAttention(num_heads=2, head_dim=4, adapters=ad, use_bias=False)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  mask = causal_mask(5)
  params = nn.unbox(mha.init(jax.random.key(1), x, mask=mask)['params'])
  assert params['prefix'].shape == (3, 2 * 2 * 4)
  out = mha.apply({'params': params}, x, mask=mask)
  proj = lambda name, h: (h @ params[name]['kernel']).reshape(2, -1, 2, 4)  # noqa: E731
  pk, pv = jnp.split(params['prefix'].reshape(3, 2, 2, 4), 2, axis=1)
  k = jnp.concatenate([jnp.broadcast_to(pk[:, 0], (2, 3, 2, 4)), proj('key', x)], 1)
  v = jnp.concatenate([jnp.broadcast_to(pv[:, 0], (2, 3, 2, 4)), proj('value', x)], 1)
  full_mask = jnp.concatenate([jnp.ones((1, 1, 5, 3), bool), mask], -1)
  ref = _reference_attention(proj('query', x), k, v, full_mask).reshape(2, 5, 8) @ params['out']['kernel']
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('hidden', [0, 16])
def test_prefix_gpt_causal_and_cached(hidden):
  """A GPT with prefixes stays causal, and decoding with the KV cache gives the full forward pass's logits."""
  model = models.get_model('gpt', 'tiny', dropout_rate=0.0, adapters=Adapters(prefix_length=4, prefix_hidden=hidden))
  tokens = _batch('gpt', t=10)['tokens']
  params = _init(model, tokens=tokens)
  names = {k[-2] if k[-1] in ('kernel', 'bias') else k[-1] for k in traverse_util.flatten_dict(params)
           if ad_lib.is_adapter(k)}
  assert names == ({'prefix'} if not hidden else {'prefix_embed', 'prefix_hidden', 'prefix_out'})
  full = model.apply({'params': params}, tokens)
  changed = tokens.at[:, 6:].set(7)
  np.testing.assert_allclose(model.apply({'params': params}, changed)[:, :6], full[:, :6], atol=1e-5)
  cache = model.init(jax.random.key(0), tokens, decode=True)['cache']
  steps = []
  for t in range(tokens.shape[1]):
    logits, mut = model.apply({'params': params, 'cache': cache}, tokens[:, t:t + 1], decode=True, mutable=['cache'])
    cache = mut['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4)
  base = model.clone(adapters=None)
  assert float(jnp.max(jnp.abs(full - base.apply({'params': ad_lib.merge_lora(params, Adapters())}, tokens)))) > 1e-4


def test_bad_adapters_are_refused():
  with pytest.raises(ValueError, match='lora_targets'):
    Adapters(lora_rank=2, lora_targets=('qkv',))
  with pytest.raises(ValueError, match='lora_dropout'):
    Adapters(lora_rank=2, lora_dropout=1.0)


@pytest.mark.slow
def test_prefix_in_an_encoder_decoder_caches_like_the_full_pass():
  """T5 with prefixes in every encoder and decoder self-attention (not in cross-attention): decoding with the
  cache gives the full forward pass's logits."""
  model = models.get_model('t5', 'tiny', dropout_rate=0.0, adapters=Adapters(prefix_length=2))
  batch = _batch('t5', t=8)
  params = _init(model, **batch)
  flat = traverse_util.flatten_dict(params)
  owners = {k[:-1] for k in flat if k[-1] == 'prefix'}
  assert {o[0] for o in owners} == {'encoder', 'decoder'} and all(o[-1] == 'self_attention' for o in owners)
  full = model.apply({'params': params}, **batch)
  src, tgt = batch['tokens'], batch['decoder_tokens']
  encoded = model.apply({'params': params}, src, method='encode')
  cache = model.init(jax.random.key(0), src, tgt, decode=True)['cache']
  steps = []
  for t in range(tgt.shape[1]):
    logits, mut = model.apply({'params': params, 'cache': cache}, tgt[:, t:t + 1], encoded, (src != 0).astype(jnp.int32),
                              method='decode', decode=True, mutable=['cache'])
    cache = mut['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4)

"""The logical names map onto a ('data', 'fsdp', 'tensor') mesh: sharded params give the same outputs."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from zoo import models, parallel


@pytest.mark.parametrize('family', ['bert', 'gpt', pytest.param('t5', marks=pytest.mark.slow)])
def test_sharded_forward_equals_single_device(family):
  model = models.get_model(family, 'tiny', dropout_rate=0.0)
  batch = model.example_batch(4, 8)
  batch = {k: (v * 3 + 1) % 500 if v.ndim == 2 else v for k, v in batch.items()}
  init = lambda: model.init(jax.random.key(0), **batch)  # noqa: E731
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = parallel.param_shardings(jax.eval_shape(init), mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
    variables = jax.jit(init, out_shardings=shardings)()
    sharded = jax.jit(model.apply)(variables, **batch)
  kernel = nn.unbox(variables)['params']['token_embed']['embedding']
  assert len({str(s.index) for s in kernel.addressable_shards}) == 4  # vocab over tensor x embed over fsdp
  plain = jax.jit(model.apply)(jax.device_get(nn.unbox(variables)), **batch)
  out = sharded['mlm_logits'] if family == 'bert' else sharded
  ref = plain['mlm_logits'] if family == 'bert' else plain
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_mesh_errors_name_the_fields():
  with pytest.raises(ValueError, match='mesh.data x mesh.fsdp x mesh.tensor = 6 but there are 8 devices'):
    parallel.make_mesh(data=3, fsdp=2)
  with pytest.raises(ValueError, match='only one of'):
    parallel.make_mesh(data=-1, fsdp=-1)
  assert parallel.make_mesh(data=-1, tensor=2).shape == {'data': 4, 'fsdp': 1, 'tensor': 2}


def _logical_names(family):
  model = models.scanned(models.get_model(family, 'tiny'))
  specs = nn.get_partition_spec(models.abstract_params(model))
  return parallel.logical_names(specs)


def test_logical_axes_are_exactly_the_names_zoo_uses():
  """LOGICAL_AXES (what a rule may map) is the union of every family's parameter names and the activation
  names: a name added to a layer without a rule, or a rule left for a name no layer has, fails here."""
  used = set(parallel.ACTIVATION_AXES)
  for family in models.FAMILIES:
    names = _logical_names(family)
    assert names <= set(parallel.LOGICAL_AXES), (family, names - set(parallel.LOGICAL_AXES))
    used |= names
  assert used == set(parallel.LOGICAL_AXES)


def test_rule_typos_and_unmapped_names_are_errors():
  rules = tuple(r for r in parallel.LOGICAL_RULES if r[0] != 'embed') + (('embd', 'fsdp'),)
  with pytest.raises(ValueError, match="maps the logical axis 'embd'.*did you mean 'embed'"):
    parallel.check_rules(rules)
  with pytest.raises(ValueError, match="maps 'embed' to the mesh axis 'fdsp'"):
    parallel.check_rules((('embed', 'fdsp'),))
  without_mlp = tuple(r for r in parallel.LOGICAL_RULES if r[0] != 'mlp')
  model = models.get_model('gpt', 'tiny')
  mesh = parallel.make_mesh(data=-1)
  with pytest.raises(ValueError, match="no rule for the logical axis 'mlp'"):
    parallel.param_shardings(jax.eval_shape(lambda: model.init(jax.random.key(0), **model.example_batch(1, 8))),
                             mesh, without_mlp)
  parallel.check_rules(parallel.LOGICAL_RULES, parallel.LOGICAL_AXES)  # the default table maps every name

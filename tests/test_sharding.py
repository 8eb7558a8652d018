"""The logical names map onto a ('data', 'fsdp', 'tensor') mesh: sharded params give the same outputs."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from zoo import models, parallel


@pytest.mark.parametrize('family', ['bert', 'gpt', 't5'])
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

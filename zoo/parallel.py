"""Device meshes and the logical-axis rules that map zoo's parameter and activation names onto them.

Model code names axes ('embed', 'mlp', 'heads', 'vocab', ...); a rule table maps each name to a mesh axis
('data', 'fsdp', 'tensor') or to None (replicated). Flax takes the first rule whose mesh axis is still free,
so 'embed' is sharded over 'fsdp' in a parameter but replicated in an activation whose batch already uses it.

>>> mesh = make_mesh(data=-1)
>>> mesh.shape['data'] == jax.device_count()
True
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

MESH_AXES = ('data', 'fsdp', 'tensor')

# (logical name, mesh axis or axes or None): the t5x/MaxText convention, one line a name.
LOGICAL_RULES = (
    ('batch', ('data', 'fsdp')),  # activations: the global batch over every data-parallel device
    ('length', None),  # sequence positions stay whole
    ('embed', 'fsdp'),  # model width: parameters sharded over fsdp (ZeRO-3 style)
    ('embed_factor', None),  # ALBERT's small embedding width
    ('mlp', 'tensor'),  # feed-forward width: Megatron-style tensor parallelism
    ('heads', 'tensor'),  # attention heads x head_dim
    ('kv', None),
    ('vocab', 'tensor'),  # embedding table rows and output logits
    ('positions', None), ('types', None), ('relpos_buckets', None), ('classes', None),
    ('layers', None),  # the scan axis of stacked layers
    ('rnn', 'tensor'), ('rnn_gates', None), ('rnn_memory', None), ('rnn_query', None), ('rnn_combined', None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over all devices; one size may be -1 to take what is left."""
  devices = jax.devices() if devices is None else devices
  sizes = {'data': data, 'fsdp': fsdp, 'tensor': tensor}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f'only one of mesh.data, mesh.fsdp, mesh.tensor may be -1, got {sizes}')
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if known <= 0 or len(devices) % known:
      raise ValueError(f'mesh sizes {sizes} do not divide the {len(devices)} devices: make the product of '
                       f'the fixed sizes a divisor of {len(devices)}')
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f'mesh.data x mesh.fsdp x mesh.tensor = {math.prod(sizes.values())} but there are '
                     f'{len(devices)} devices: set one of them to -1 to fill the rest')
  shape = tuple(sizes[a] for a in MESH_AXES)
  # Auto axes: flax's logical constraints are hints here, not asserts (JAX_NOTES).
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(shape))


def param_shardings(abstract_variables, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a (boxed) variable tree, e.g. the output of `jax.eval_shape(model.init, ...)`."""
  specs = nn.get_partition_spec(abstract_variables)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.sharding.PartitionSpec())

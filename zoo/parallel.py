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


# Every logical name zoo's layers give a parameter or an activation (tests/test_sharding.py keeps it exact).
LOGICAL_AXES = tuple(name for name, _ in LOGICAL_RULES)
ACTIVATION_AXES = ('batch', 'length', 'embed', 'mlp')  # what zoo.layers.common.constrain names
_RETIRED_AXES = ('kv',)  # names no layer has any more, still in the mesh.rules of older workdirs' config.json


def logical_names(specs) -> set[str]:
  """The logical axis names in a tree of PartitionSpecs."""
  names = set()
  for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    if isinstance(spec, jax.sharding.PartitionSpec):
      for entry in spec:
        names.update(entry if isinstance(entry, tuple) else (entry,) if entry is not None else ())
  return names


def check_rules(rules, used=()) -> None:
  """Refuse a rule table that would silently replicate: a rule for a logical name zoo does not have (a typo), a
  mesh axis that is not one of MESH_AXES, or a name in `used` (the model's parameters and activations) that no
  rule maps.

  >>> check_rules((('embd', 'fsdp'),))
  Traceback (most recent call last):
  ValueError: mesh.rules maps the logical axis 'embd', which no zoo parameter or activation has: did you mean 'embed'? ...
  """
  import difflib
  mapped = set()
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f'mesh.rules entry {rule!r}: give (logical name, mesh axis or axes or None)')
    name, axes = rule
    if name in _RETIRED_AXES:
      continue
    if name not in LOGICAL_AXES:
      close = difflib.get_close_matches(name, LOGICAL_AXES, n=1)
      hint = f'did you mean {close[0]!r}? ' if close else ''
      raise ValueError(f'mesh.rules maps the logical axis {name!r}, which no zoo parameter or activation has: '
                       f'{hint}the names are {", ".join(LOGICAL_AXES)}')
    for axis in (axes if isinstance(axes, (tuple, list)) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f'mesh.rules maps {name!r} to the mesh axis {axis!r}: use one of {MESH_AXES} or None')
    mapped.add(name)
  missing = sorted(set(used) - mapped)
  if missing:
    raise ValueError(f'mesh.rules has no rule for the logical axis {missing[0]!r}, which this model uses: add '
                     f'({missing[0]!r}, None) to replicate it, or map it to a mesh axis')


def param_shardings(abstract_variables, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a (boxed) variable tree, e.g. the output of `jax.eval_shape(model.init, ...)`, after
  `check_rules` on the names it and the activations use."""
  specs = nn.get_partition_spec(abstract_variables)
  check_rules(rules, logical_names(specs) | set(ACTIVATION_AXES))
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, jax.sharding.PartitionSpec())

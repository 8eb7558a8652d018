"""The data-parallel path under `jax.pmap`: the state replicated on every local device, each device stepping on
its rows and summing gradients over the 'batch' axis. Same interface as `zoo.train.placement.Jit`."""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from zoo import config as config_lib
from zoo.train.placement import Placement, devices_of


class Pmap(Placement):
  """State replicated per local device (stacked on a leading axis); batches split [devices, rows, ...]."""
  name = 'pmap'
  axis_name = 'batch'

  def __init__(self, config):
    self.devices = devices_of(config)
    self.mesh = None
    config_lib.check_batch(config, jax.device_count() if config.mesh.devices <= 0 else len(self.devices), 'pmap')
    self.local = [d for d in self.devices if d.process_index == jax.process_index()]

  def describe(self) -> str:
    return 'pmap'

  def state_shardings(self, boxed, abstract, tx, rules):
    return None  # every device holds all of it

  def context(self):
    return contextlib.nullcontext()

  def init(self, fn, rng, shardings):
    return jax.jit(fn)(rng)

  def distribute(self, state):
    """One copy per local device, stacked on a leading axis (what pmap takes)."""
    sharding = NamedSharding(jax.sharding.Mesh(np.array(self.local), ('batch',)), P('batch'))
    return jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x[None], (len(self.local), *x.shape)), sharding), state)

  def restore_target(self, abstract, shardings):
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract)

  def compile_train(self, step, state_shardings):
    return jax.pmap(step, axis_name=self.axis_name, in_axes=(0, 0, None), donate_argnums=(0,))

  def compile_eval(self, step):
    return jax.pmap(step, axis_name=self.axis_name)

  def put(self, example: dict):
    """This process's rows -> [local devices, rows per device, ...]."""
    n = len(self.local)
    return jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), example)

  def fetch(self, tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))

  def fetch_rows(self, tree):
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), jax.device_get(tree))  # [devices, rows] -> rows

  def saveable(self, state):
    return jax.tree.map(lambda x: x[0], state)

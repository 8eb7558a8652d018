"""How the state and the batches meet the devices. `Jit` shards both over a ('data', 'fsdp', 'tensor') mesh by
the logical-axis rules and runs one jitted, donated step; `zoo.train.pmap.Pmap` replicates the state on every
local device and runs the same step under `jax.pmap`. The loop, evaluation and state code call only this
interface, so neither path is a branch through the rest."""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from zoo import checkpoint as ckpt
from zoo import config as config_lib
from zoo import parallel


def devices_of(config) -> list:
  devices = jax.devices()
  if config.mesh.devices > 0:
    if jax.process_count() > 1:
      raise ValueError('mesh.devices picks devices of a single process; leave it at -1 on several hosts')
    if config.mesh.devices > len(devices):
      raise ValueError(f'mesh.devices={config.mesh.devices} but only {len(devices)} devices are present')
    devices = devices[:config.mesh.devices]
  return devices


class Placement:
  """What the loop, evaluation and state code ask of a placement. Subclasses: `Jit` here, `zoo.train.pmap.Pmap`."""
  name = ''
  axis_name: str | None = None  # the collective axis a step sums over (pmap), or None (jit: XLA partitions)
  mesh = None  # the device Mesh (jit), or None
  devices: list = []

  def describe(self) -> str:
    """For the run's first log line: the mesh shape, or 'pmap'."""
    raise NotImplementedError

  def state_shardings(self, boxed, abstract, tx, rules):
    """The TrainState's shardings from its boxed shapes (None: the placement places it itself)."""
    raise NotImplementedError

  def init(self, fn, rng, shardings):
    """fn(rng) -> state, compiled and run so that the state lands where `shardings` says (one copy for pmap)."""
    raise NotImplementedError

  def distribute(self, state):
    """A whole state -> what the train step takes (pmap: one copy per local device)."""
    raise NotImplementedError

  def restore_target(self, abstract, shardings):
    """ShapeDtypeStructs with shardings for Orbax to restore into."""
    raise NotImplementedError

  def compile_train(self, step, state_shardings):
    """step(state, example, rng) -> (state, metrics), compiled with the state donated."""
    raise NotImplementedError

  def compile_eval(self, step):
    """step(params, example) -> outputs, compiled."""
    raise NotImplementedError

  def put(self, example: dict):
    """This process's rows of a host example -> device arrays for the step."""
    raise NotImplementedError

  def fetch(self, tree):
    """Step outputs that are the same everywhere (metrics, sums) -> one host copy."""
    raise NotImplementedError

  def fetch_rows(self, tree):
    """Per-row step outputs (predictions) -> host arrays, rows in batch order."""
    raise NotImplementedError

  def saveable(self, state):
    """The state as a checkpoint holds it (one copy)."""
    raise NotImplementedError

  def context(self):
    """The context the step is traced in (mesh and logical-axis rules; nothing for pmap)."""
    raise NotImplementedError


class Jit(Placement):
  """Global arrays sharded over a mesh; the step is one `jax.jit` with shardings that donates its state."""
  name = 'jit'

  def __init__(self, config, devices=None):
    self.devices = devices_of(config) if devices is None else list(devices)
    self.rules = tuple(config.mesh.rules)
    self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=self.devices)
    config_lib.check_batch(config, self.mesh.shape['data'] * self.mesh.shape['fsdp'],
                           f"mesh.data={self.mesh.shape['data']} x mesh.fsdp={self.mesh.shape['fsdp']}")

  def describe(self) -> str:
    return str(dict(self.mesh.shape))

  def state_shardings(self, boxed, abstract, tx, rules):
    """NamedShardings of the state: parameters by their logical axes, optimizer moments of a parameter's shape
    like it; other per-parameter state (Adafactor's factored rows and columns) is small and replicated."""
    from zoo.train.state import TrainState
    param_shardings = parallel.param_shardings(boxed.params, self.mesh, rules)
    repl = parallel.replicated(self.mesh)
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  frozen parameters have no state
    like = lambda x, s, p: x if masked(x) else (s if x.shape == p.shape else repl)  # noqa: E731
    opt_shardings = optax.tree_map_params(tx, like, abstract.opt_state, param_shardings, abstract.params,
                                          transform_non_params=lambda _: repl, is_leaf=masked)
    return TrainState(step=repl, params=param_shardings, opt_state=opt_shardings)

  def context(self):
    """Mesh and logical-axis rules for tracing."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init(self, fn, rng, shardings):
    with self.context():
      return jax.jit(fn, out_shardings=shardings)(rng)

  def distribute(self, state):
    return state

  def restore_target(self, abstract, shardings):
    return ckpt.abstract_with_shardings(abstract, shardings)

  def compile_train(self, step, state_shardings):
    jitted = jax.jit(step, out_shardings=(state_shardings, parallel.replicated(self.mesh)), donate_argnums=(0,))
    return self._under_mesh(jitted)

  def compile_eval(self, step):
    return self._under_mesh(jax.jit(step, out_shardings=parallel.replicated(self.mesh)))

  def _under_mesh(self, jitted):
    def call(*args):
      with self.context():
        return jitted(*args)
    call.jitted = jitted  # for ahead-of-time lowering: call.jitted.lower(...) under self.context()
    return call

  def put(self, example: dict):
    """This process's rows -> global arrays sharded over the data-parallel axes."""
    sharding = NamedSharding(self.mesh, P(('data', 'fsdp')))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in example.items()}

  def fetch(self, tree):
    return jax.device_get(tree)

  def fetch_rows(self, tree):
    return jax.device_get(tree)

  def saveable(self, state):
    return state

"""Orbax checkpoints of the train state and the input pipeline's position, restorable on any topology.

Layout: <workdir>/checkpoints/<step>/{state, data_iter}. Saves are atomic (Orbax writes to a temporary
directory and renames it when complete), so a crash never leaves a half-written checkpoint behind, and only
`keep` of the newest are kept once a newer one is complete. The workdir may be local or on any epath filesystem
(gs://...): Orbax reads and writes through epath and TensorStore.
"""
from __future__ import annotations

import json

import grain
import jax
import orbax.checkpoint as ocp

from zoo import paths


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = paths.join(paths.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter=None, force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(_JsonState(data_iter))
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iter=None):
    """abstract_state: jax.ShapeDtypeStruct leaves with the shardings wanted now (any mesh, any size)."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointRestore(_JsonState(data_iter))
    return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class _JsonState:
  """A grain iterator as grain's checkpoint handler saves it (the same JSON file), restored with the tuples JSON
  turned into lists made tuples again: grain 0.2.18's concat-then-split packing compares a restored
  `remainder_slices` slice with its tuple sentinel (-1, -1), so a list [-1, -1] read back from JSON looked like
  a remainder and the resumed run skipped a document whenever a checkpoint fell where a row ended a document."""

  def __init__(self, iterator):
    self.iterator = iterator

  def get_state(self) -> bytes:
    return json.dumps(self.iterator.get_state(), indent=4).encode()

  def set_state(self, state: bytes) -> None:
    self.iterator.set_state(_slices_as_tuples(json.loads(state)))

  def start_prefetch(self) -> None:
    if hasattr(self.iterator, 'start_prefetch'):
      self.iterator.start_prefetch()


def _slices_as_tuples(state):
  if isinstance(state, dict):
    return {k: ({f: tuple(v) if isinstance(v, list) else v for f, v in s.items()}
                if k == 'remainder_slices' and isinstance(s, dict) else _slices_as_tuples(s))
            for k, s in state.items()}
  if isinstance(state, list):
    return [_slices_as_tuples(s) for s in state]
  return state


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings: what Orbax restores onto another topology."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def find_state(path: str, step: int | None = None) -> tuple[str, int]:
  """The Orbax `state` directory and step of a workdir (its newest checkpoint, or `step`) or of a checkpoint
  directory (<workdir>/checkpoints/<step>). A clear error when there is none."""
  path = paths.abspath(path, expanduser=True)
  p = paths.path(path)
  if (p / 'state').is_dir():  # a checkpoint directory
    return paths.join(p, 'state'), int(p.name)
  directory = p / 'checkpoints'
  steps = sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit()) if directory.is_dir() else []
  steps = [s for s in steps if (directory / str(s) / 'state').is_dir()]
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {path}: point at a workdir that train.py saved to (it holds '
                            f'checkpoints/<step>/state), or at one of those step directories')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'{path} has no checkpoint of step {step}; it has steps {steps}')
  return paths.join(directory, str(step), 'state'), step


def saved_params(state_dir: str) -> dict:
  """{path tuple: shape} of the parameters saved in a `state` directory (metadata only, nothing read)."""
  from flax import traverse_util
  tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
  if 'params' not in tree:
    raise ValueError(f'{state_dir} holds no parameters (its items are {sorted(tree)})')
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree['params']).items()}


def restore_params(state_dir: str, abstract_params):
  """Only the parameters (no optimizer state) of a saved TrainState, onto the shardings of `abstract_params`
  (ShapeDtypeStruct leaves with sharding; any mesh, any device count). `abstract_params` may be a subset of
  what was saved: a partial restore."""
  target = {'params': abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(
          target), partial_restore=True))
  return restored['params']

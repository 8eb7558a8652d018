"""Orbax checkpoints of the train state and the input pipeline's position, restorable on any topology.

Layout: <workdir>/checkpoints/<step>/{state, data_iter}. Saves are atomic (Orbax writes to a temporary
directory and renames it when complete), so a crash never leaves a half-written checkpoint behind, and only
`keep` of the newest are kept once a newer one is complete.
"""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter=None, force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iter=None):
    """abstract_state: jax.ShapeDtypeStruct leaves with the shardings wanted now (any mesh, any size)."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings: what Orbax restores onto another topology."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

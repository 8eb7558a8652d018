"""The train state: its initialization (shape first, then sharded), the pretrained weights a fine-tuning run
starts from, and its restoration from a checkpoint onto whatever devices are present."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import checkpoint as ckpt
from zoo import finetune, pretrained
from zoo.train import metrics as metrics_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def dummy_example(objective, seq_len: int, rows: int = 1) -> dict:
  """A well-formed example of `rows` rows: what initialization and shape inference trace with."""
  return objective.example(objective.dummy_batch(rows, seq_len), np.random.default_rng(0))


def init_fn(model, objective, tx, example):
  """rng -> TrainState (boxed: the parameters carry their logical axis names)."""
  def init(rng):
    variables = model.init({'params': rng, 'dropout': rng}, **objective.inputs(example), deterministic=True)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(nn.unbox(params)))
  return init


def init_state(run) -> TrainState:
  """A new state from config.seed, placed for the step; a fine-tuning run (task.init_from) then takes every
  parameter the pretraining checkpoint holds."""
  init = init_fn(run.model, run.objective, run.tx, dummy_example(run.objective, run.config.train.seq_len))
  state = run.placement.init(lambda rng: nn.unbox(init(rng)), jax.random.key(run.config.seed), run.state_shardings)
  if pretrained.spec_of(run.config):
    params, report = finetune.load_pretrained(run.config, run.workdir, state.params,
                                              None if run.state_shardings is None else run.state_shardings.params,
                                              scan_layers=bool(getattr(run.model, 'scan_layers', False)))
    state = state.replace(params=params)
    metrics_lib.say(f"restored {report['restored']} parameter arrays from {report['where']}; new: "
                    f"{', '.join(report['new']) or 'none'}; not used: {len(report['unused'])}")
  return run.placement.distribute(state)


def restore_state(run, checkpointer: ckpt.Checkpointer, step: int, data_iter=None) -> TrainState:
  """The state saved at `step` (and the input pipeline's position into data_iter), placed for the step."""
  target = run.placement.restore_target(run.abstract_state, run.state_shardings)
  return run.placement.distribute(checkpointer.restore(step, target, data_iter))

"""Will it fit? Compile a recipe's real training step for a TPU topology on a CPU host, ahead of time.

  python train.py --config=configs/gpt.py:medium --workdir=DIR --aot=v5e:2x4 --config.mesh.fsdp=8

libtpu (the `[tpu]` and `[test]` extras) compiles for TPU chips that are not attached. The step is the one
`train.py` would run: same config, model, optimizer, mesh and shardings. XLA's memory plan gives the peak per
chip; the model FLOPs come from the formula (`zoo.train.metrics.flops_per_token`), since XLA's cost analysis
counts a scanned layer once. Writes DIR/aot.json and returns it; `train.py` exits with `EXIT_DOES_NOT_FIT` when
the step does not fit in a chip's memory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from zoo import paths
from zoo.errors import UserError
from zoo.layers import transformer

log = logging.getLogger('zoo')

EXIT_DOES_NOT_FIT = 3  # train.py's exit status when the planned step needs more memory than a chip has

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # as in a topology name: v4, v5e, v5p, v6e
  hbm_gib: float  # memory per chip
  peak_flops: float  # dense bf16 FLOP/s per chip
  chips_per_host: tuple  # the host bounds libtpu assumes for the topology


CHIPS = {
    'v4': Chip('v4', 32.0, 275e12, (2, 2, 1)),
    'v5e': Chip('v5e', 16.0, 197e12, (2, 2, 1)),
    'v5p': Chip('v5p', 95.0, 459e12, (2, 2, 1)),
    'v6e': Chip('v6e', 32.0, 918e12, (2, 2, 1)),
}


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
  """'v5e:2x4' -> (the v5e chip, (2, 4)). v4 and v5p name 3-D topologies (v4:2x2x2); v5e and v6e 2-D ones.

  >>> parse_topology('v5e:2x4')[1]
  (2, 4)
  """
  m = re.fullmatch(r'(v\d+[a-z]*):(\d+(?:x\d+){1,2})', name.strip())
  if not m or m.group(1) not in CHIPS:
    raise ValueError(f'--aot={name!r}: give a TPU topology as CHIP:SHAPE, CHIP one of {", ".join(CHIPS)} '
                     f'(e.g. v5e:2x4, v4:2x2x2, v5p:4x4x4)')
  return CHIPS[m.group(1)], tuple(int(x) for x in m.group(2).split('x'))


def topology_devices(name: str) -> list:
  """The TPU devices of a topology, for compiling on a host without them (needs libtpu)."""
  chip, shape = parse_topology(name)
  # libtpu takes a lock file per host: without this a second planning process (or a test worker) is refused
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    from jax.experimental import topologies
    bounds = tuple(min(s, b) for s, b in zip(shape + (1,) * (3 - len(shape)), chip.chips_per_host))
    desc = topologies.get_topology_desc(platform='tpu', topology_name=name, chips_per_host_bounds=bounds)
  except Exception as e:  # no libtpu, or a shape the chip does not come in
    if 'tpu' in str(e).lower() and ('not found' in str(e).lower() or 'unknown backend' in str(e).lower()):
      raise UserError(f"--aot={name}: libtpu is not installed: pip install -e '.[tpu]'") from e
    raise ValueError(f'--aot={name}: libtpu refused this topology ({e})') from e
  return list(desc.devices)


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _gib(number: str, unit: str) -> float:
  return float(number) * 1024 ** ('KMGT'.index(unit) + 1) / 1024 ** 3


def oom_gib(message: str) -> float | None:
  """What XLA:TPU's out-of-memory refusal says the program needs, in GiB (None: not such a refusal). It words it
  two ways: temporaries alone, or the HBM used plus the excess.

  >>> oom_gib('RESOURCE_EXHAUSTED: ... required for HLO temporaries (29.39G) exceeds available HBM (15.75G).')
  29.39
  >>> round(oom_gib('RESOURCE_EXHAUSTED: E1000: ... Used 15.75G of 15.75G hbm. Exceeded hbm capacity by 512.00M.'), 2)
  16.25
  """
  if 'RESOURCE_EXHAUSTED' not in message:
    return None
  temporaries = re.search(r'HLO temporaries \(([\d.]+)([KMGT])\)', message)
  if temporaries:
    return _gib(*temporaries.groups())
  used = re.search(r'Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm\. Exceeded hbm capacity by ([\d.]+)([KMGT])', message)
  if used:
    return _gib(*used.groups()[:2]) + _gib(*used.groups()[2:])
  return None


def _sig(x: float) -> float:
  return float(f'{x:.4g}')


def _per_chip_bytes(x) -> int:
  """Bytes of one chip's shard of a ShapeDtypeStruct with a sharding."""
  shape = x.sharding.shard_shape(x.shape)
  return int(math.prod(shape)) * x.dtype.itemsize


def plan(config, workdir: str, topology: str) -> dict:
  """Compile `config`'s training step for `topology` and return (and write to workdir/aot.json) the plan."""
  from zoo.train import steps
  from zoo.train.build import build
  from zoo.train.state import dummy_example
  chip, _ = parse_topology(topology)
  devices = topology_devices(topology)
  run = build(config, workdir, devices=devices)
  if run.mesh is None:
    raise ValueError('--aot compiles the jit step: leave parallelism at its default (jit), not pmap')
  mesh = run.mesh
  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  example = dummy_example(run.objective, config.train.seq_len, config.train.batch_size)
  example = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch) for k, v in example.items()}
  state = _abstract(run.abstract_state, run.state_shardings)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=NamedSharding(mesh, P()))
  step = steps.make_train_step(run)
  t0 = time.perf_counter()
  with run.placement.context():
    lowered = step.jitted.lower(state, example, rng)
    try:
      mem = lowered.compile().memory_analysis()
      arguments = mem.argument_size_in_bytes / GIB
      outputs = (mem.output_size_in_bytes - mem.alias_size_in_bytes) / GIB  # the donated state is updated in place
      temporaries = mem.temp_size_in_bytes / GIB
    except jax.errors.JaxRuntimeError as e:  # XLA:TPU refuses a program that does not fit the chip
      needed = oom_gib(str(e))
      if needed is None:
        raise
      arguments = sum(_per_chip_bytes(x) for x in jax.tree.leaves((state, example))) / GIB
      temporaries, outputs = max(needed - arguments, 0.0), 0.0
  compile_s = time.perf_counter() - t0
  # v4 shows each chip's two TensorCores as two devices, which share its memory: report per chip
  chips = len({tuple(d.coords) for d in devices})
  cores = len(devices) // chips
  arguments, temporaries, outputs = arguments * cores, temporaries * cores, outputs * cores
  peak = arguments + outputs + temporaries
  tokens = config.train.batch_size * config.train.seq_len
  flops = tokens * run.flops_per_token  # per step, all chips
  at = lambda mfu: flops / (chips * chip.peak_flops * mfu)  # noqa: E731  seconds per step
  out = {
      'topology': topology, 'chips': chips, 'devices': len(devices), 'hbm_gib_per_chip': chip.hbm_gib,
      'mesh': {k: int(v) for k, v in mesh.shape.items()},
      'recipe': f'{config.model.family}:{config.model.size}', 'batch': config.train.batch_size,
      'seq_len': config.train.seq_len, 'dtype': config.model.dtype, 'params': run.n_params,
      'peak_gib_per_chip': _sig(peak),
      'arguments_gib': _sig(arguments), 'temporaries_gib': _sig(temporaries), 'outputs_gib': _sig(outputs),
      'fits': bool(peak <= chip.hbm_gib),
      'model_flops_per_step': flops,
      'step_s_at_100_mfu': _sig(at(1.0)), 'step_s_at_50_mfu': _sig(at(0.5)),
      'tokens_per_s_at_100_mfu': round(tokens / at(1.0)), 'tokens_per_s_at_50_mfu': round(tokens / at(0.5)),
      'compile_s': round(compile_s, 2),
  }
  if not out['fits']:
    out['fixes'] = fixes(config, peak, chip.hbm_gib, out['mesh'])
  paths.path(workdir).mkdir(parents=True, exist_ok=True)
  paths.path(workdir).joinpath('aot.json').write_text(json.dumps(out, indent=2))
  return out


def fixes(config, peak: float, hbm: float, mesh: dict) -> list[str]:
  """The cheapest changes that lower the peak, most effective first."""
  out = []
  if mesh['data'] > 1:
    out.append(f'--config.mesh.fsdp={mesh["data"] * mesh["fsdp"]} --config.mesh.data=1 (shard parameters and '
               f'optimizer state over the data-parallel chips)')
  if not transformer.remat_policy(config.model.get('remat', 'none'))[0]:
    out.append('--config.model.remat=full (recompute activations in the backward pass), or a lighter policy '
               'such as dots_saveable')
  out.append(f'--config.train.microbatches={2 * config.train.microbatches} (accumulate gradients over '
             f'smaller micro-batches; same global batch)')
  out.append(f'--config.train.batch_size={config.train.batch_size // 2} (a smaller global batch)')
  return out


def report(plan_: dict) -> str:
  """A short table for the terminal."""
  rows = [
      ('topology', f"{plan_['topology']} ({plan_['chips']} chips, {plan_['hbm_gib_per_chip']:g} GiB each)"),
      ('mesh', ' x '.join(f'{k}={v}' for k, v in plan_['mesh'].items())),
      ('peak per chip', f"{plan_['peak_gib_per_chip']:.2f} GiB (arguments {plan_['arguments_gib']:.2f}, "
                        f"temporaries {plan_['temporaries_gib']:.2f}, outputs {plan_['outputs_gib']:.2f})"),
      ('fits', 'yes' if plan_['fits'] else 'NO'),
      ('model FLOPs per step', f"{plan_['model_flops_per_step']:.3g}"),
      ('step time', f"{plan_['step_s_at_100_mfu'] * 1e3:.3g} ms at 100% MFU, "
                    f"{plan_['step_s_at_50_mfu'] * 1e3:.3g} ms at 50%"),
      ('tokens/s', f"{plan_['tokens_per_s_at_100_mfu']:,} at 100% MFU, {plan_['tokens_per_s_at_50_mfu']:,} at 50%"),
      ('compile', f"{plan_['compile_s']:.1f} s"),
  ]
  width = max(len(k) for k, _ in rows)
  lines = [f'{k:<{width}}  {v}' for k, v in rows]
  for fix in plan_.get('fixes', []):
    lines.append(f'{"try":<{width}}  {fix}')
  return '\n'.join(lines)

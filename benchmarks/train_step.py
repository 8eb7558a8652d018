"""Tokens/s, MFU, compile time and peak memory of a recipe's training step, side by side, as JSON.

  python benchmarks/train_step.py --recipe=gpt:tiny --compare='model.dtype=float32;model.dtype=bfloat16'
  python benchmarks/train_step.py --recipe=gpt:tiny --compare='model.scan_layers=False;model.scan_layers=True'

Each variant (a ';'-separated list of comma-separated overrides) is built, compiled and timed in this one
process on the same synthetic batch, one after the other, so the ratios compare like with like. The first
variant is the baseline of the `ratio` fields.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zoo import train  # noqa: E402
from zoo.data import sources  # noqa: E402
from zoo.data import tokenizer as tk  # noqa: E402


def override(config, assignment: str):
  key, value = assignment.split('=', 1)
  *path, last = key.strip().split('.')
  node = config
  for p in path:
    node = node[p]
  old = node[last]
  node[last] = (value.lower() == 'true') if isinstance(old, bool) else type(old)(value) if old is not None else value


def measure(config, workdir: str, steps: int) -> dict:
  run = train.build(config, workdir)
  state = train.init_state(run)
  obj = run.objective
  batch = obj.dummy_batch(run.local_batch, config.train.seq_len)
  batch['tokens'] = np.random.default_rng(0).integers(obj.num_special, obj.vocab_size, batch['tokens'].shape,
                                                      dtype=np.int32)
  example = run.placement.put(obj.example(batch, np.random.default_rng(0)))
  rng = jax.random.key(0)
  step = train.make_train_step(run)
  out = {}
  if run.mesh is not None:  # jit: compile ahead of time to read the memory plan
    with run.placement.context():
      t0 = time.perf_counter()
      lowered = step.jitted.lower(state, example, rng)
      compiled = lowered.compile()
      out['compile_s'] = round(time.perf_counter() - t0, 3)
    mem = compiled.memory_analysis()
    if mem is not None:
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
              - mem.alias_size_in_bytes)
      out['peak_memory_mib_per_device'] = round(peak / 2**20, 2)
  state, metrics = step(state, example, rng)  # warm-up (compiles under pmap)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, example, rng)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / steps
  tokens = config.train.batch_size * config.train.seq_len
  out.update(step_ms=round(1000 * dt, 2), tokens_per_s=round(tokens / dt),
             mfu=round(tokens / dt * run.flops_per_token / run.peak_flops, 4) if run.peak_flops else None,
             params=run.n_params, flops_per_token=run.flops_per_token)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--recipe', default='gpt:tiny', help='configs/<name>.py and size, as name:size')
  parser.add_argument('--compare', default='model.dtype=float32;model.dtype=bfloat16')
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  name, _, size = args.recipe.partition(':')
  workdir = tempfile.mkdtemp()
  docs, _ = sources.read_documents('default')
  tok_path = os.path.join(workdir, 'spm.model')
  tk.train_tokenizer(docs, 2000, num_sentinels=100, path=tok_path)
  results = []
  for variant in args.compare.split(';'):
    config = importlib.import_module(f'configs.{name}').get_config(size or 'tiny')
    config.data.tokenizer = tok_path
    config.data.vocab_size = 2000
    for assignment in filter(None, (a.strip() for a in variant.split(','))):
      override(config, assignment)
    results.append({'variant': variant, **measure(config, workdir, args.steps)})
  base = results[0]
  for r in results[1:]:
    r['tokens_per_s_ratio'] = round(r['tokens_per_s'] / base['tokens_per_s'], 3)
  print(json.dumps({'recipe': args.recipe, 'devices': jax.device_count(),
                    'device_kind': jax.devices()[0].device_kind, 'results': results}, indent=1))


if __name__ == '__main__':
  main()

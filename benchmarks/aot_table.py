"""Will the base and large recipes fit? `train.py --aot` for each recipe on each TPU topology, as JSON lines and a
markdown table (the README's).

  python benchmarks/aot_table.py                       # bert base/large, gpt small/large, t5 base/large
  python benchmarks/aot_table.py --recipes=gpt:small --topologies=v5e:2x4 --set=model.remat=full

Each recipe runs as published (its batch and sequence length) in bfloat16, with scanned layers (compile time flat
in depth) under the remat policy dots_saveable, and its parameters and optimizer state sharded
over every device (mesh.fsdp=-1, ZeRO-3). Needs libtpu (the [tpu] or [test] extra); no TPU.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = 'bert:base,bert:large,gpt:small,gpt:large,t5:base,t5:large'
TOPOLOGIES = 'v5e:2x4,v4:2x2x4,v5p:2x4x4'  # v5e-8, v4-32 and v5p-64 (v4 and v5p count two cores a chip)
# Scanned layers save every intermediate of the layer for the backward pass (XLA cannot rematerialize across the
# loop): keep the matmul outputs and recompute the rest, as MaxText does.
REMAT = 'dots_saveable'


def plan(recipe: str, topology: str, extra: list[str], tokenizer: str) -> dict:
  name, size = recipe.split(':')
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={ROOT}/configs/{name}.py:{size}',
           f'--workdir={workdir}', f'--aot={topology}', '--config.model.dtype=bfloat16',
           '--config.model.scan_layers=True', f'--config.model.remat={REMAT}', '--config.mesh.fsdp=-1',
           '--config.mesh.data=1',
           f'--config.data.tokenizer={tokenizer}', *[f'--config.{s}' for s in extra]]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    path = os.path.join(workdir, 'aot.json')
    if not os.path.exists(path):
      return {'recipe': recipe, 'topology': topology, 'error': out.stderr.strip().splitlines()[-1:]}
    with open(path) as f:
      return json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--recipes', default=RECIPES)
  parser.add_argument('--topologies', default=TOPOLOGIES)
  parser.add_argument('--set', action='append', default=[], help='a config override, e.g. model.remat=full')
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  from zoo.data import sources
  from zoo.data import tokenizer as tk
  tokenizer = os.path.join(tempfile.mkdtemp(), 'spm.model')  # one tokenizer for every plan: it sets no shape
  tk.train_tokenizer(sources.read_documents('default')[0], vocab_size=8000, num_sentinels=100, path=tokenizer)
  rows = []
  for recipe in args.recipes.split(','):
    for topology in args.topologies.split(','):
      p = plan(recipe, topology, args.set, tokenizer)
      print(json.dumps(p), flush=True)
      rows.append(p)
  print('\n| recipe | batch x seq | topology (chips) | peak GiB per chip (of) | fits | step at 50% MFU '
        '| tokens/s at 50% |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for p in rows:
    if 'error' in p:
      print(f"| {p['recipe']} | | {p['topology']} | error: {p['error']} | | | |")
      continue
    print(f"| {p['recipe']} | {p['batch']} x {p['seq_len']} | {p['topology']} ({p['chips']}) | "
          f"{p['peak_gib_per_chip']:.1f} ({p['hbm_gib_per_chip']:g}) | {'yes' if p['fits'] else 'no'} | "
          f"{p['step_s_at_50_mfu'] * 1e3:.0f} ms | {p['tokens_per_s_at_50_mfu']:,} |")


if __name__ == '__main__':
  main()

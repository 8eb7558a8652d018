"""Loss and evaluation curves of one or several workdirs, from their metrics.jsonl.

  python -m zoo.plot workdir/gpt workdir/gpt_bf16 --out=curves.png

In a notebook, `zoo.plot.plot(['workdir/gpt'])` returns the matplotlib figure (shown inline).

>>> import tempfile, json, os
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
...   for s in range(1, 4):
...     _ = f.write(json.dumps({'step': s, 'loss': 5.0 / s}) + '\\n')
...   _ = f.write(json.dumps({'step': 3, 'eval_loss': 2.0}) + '\\n')
>>> fig = plot([d], out=os.path.join(d, 'curves.png'))
>>> os.path.getsize(os.path.join(d, 'curves.png')) > 0
True
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from zoo import paths

# Task metrics shown in the second panel when a workdir has them (fine-tuning), besides the eval loss.
_EVAL_METRICS = ('eval_accuracy', 'eval_f1', 'eval_entity_f1', 'eval_exact_match', 'eval_token_accuracy',
                 'eval_lm_accuracy', 'eval_mlm_accuracy')


def read_metrics(workdir: str) -> list[dict]:
  """The rows of workdir/metrics.jsonl (a clear error when the run wrote none)."""
  path = paths.join(workdir, 'metrics.jsonl')
  if not paths.is_file(path):
    raise FileNotFoundError(f'{path} is missing: plot workdirs that train.py wrote')
  rows = []
  with paths.path(path).open() as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue  # a line cut by a crash: skip it
  return rows


def curves(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of `key`, the last value for a step that was logged twice (a resumed run)."""
  points = {r['step']: r[key] for r in rows if key in r and isinstance(r[key], (int, float))}
  steps = sorted(points)
  return steps, [points[s] for s in steps]


def plot(workdirs: Sequence[str], out: str | None = None, labels: Sequence[str] | None = None):
  """Train loss (left) and eval loss plus accuracy-like eval metrics (right) for each workdir; saved to `out`
  (PNG) when given. Returns the matplotlib Figure."""
  import matplotlib
  if out and matplotlib.get_backend().lower() not in ('agg', 'module://matplotlib_inline.backend_inline'):
    matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  accuracy_axis = None
  for i, workdir in enumerate(workdirs):
    rows = read_metrics(workdir)
    name = labels[i] if labels else paths.path(workdir).name
    color = f'C{i}'
    steps, loss = curves(rows, 'loss')
    left.plot(steps, loss, color=color, label=name)
    steps, eval_loss = curves(rows, 'eval_loss')
    if steps:
      right.plot(steps, eval_loss, 'o-', color=color, label=f'{name} eval loss')
    for j, key in enumerate(k for k in _EVAL_METRICS if curves(rows, k)[0]):
      accuracy_axis = accuracy_axis or right.twinx()
      s, v = curves(rows, key)
      accuracy_axis.plot(s, v, 's--', color=color, alpha=0.6 + 0.4 / (j + 1), label=f'{name} {key[5:]}')
  left.set(xlabel='step', ylabel='train loss', title='training')
  right.set(xlabel='step', ylabel='eval loss', title='evaluation')
  left.legend(fontsize=8)
  handles, names = right.get_legend_handles_labels()
  if accuracy_axis is not None:
    accuracy_axis.set_ylabel('metric')
    h2, n2 = accuracy_axis.get_legend_handles_labels()
    handles, names = handles + h2, names + n2
  if handles:
    right.legend(handles, names, fontsize=8)
  for ax in (left, right):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  if out:
    fig.savefig(out, dpi=110)
  return fig


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(prog='python -m zoo.plot', description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='curves.png', help='PNG to write')
  args = parser.parse_args(argv)
  plot(args.workdirs, out=args.out)
  print(args.out)
  return args.out


if __name__ == '__main__':
  main()

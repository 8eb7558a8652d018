"""Where the test suite's time goes: CPU-seconds per test (its own process, every thread, plus the child processes
it started: train.py runs, notebook kernels) and the seconds JAX spent tracing, lowering and compiling in it.
Prints one JSON object: totals, the totals per module, and the costliest tests.

  python benchmarks/suite_cpu.py [--top=40] [pytest arguments, e.g. -n 2 -m "not slow"]

Delete `.jax_cache/` first for a cold run. The suite is CPU-bound on a small machine, so CPU-seconds (not the wall
time of one test, which depends on what the other xdist worker runs meanwhile) are what a change must lower.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_EVENTS = {'/jax/core/compile/jaxpr_trace_duration': 'trace',
           '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
           '/jax/core/compile/backend_compile_duration': 'compile'}


class Recorder:
  """A pytest plugin (loaded in each xdist worker through -p): one JSON line per test in $SUITE_CPU_OUT."""

  def __init__(self):
    self.seconds = collections.Counter()

  def _listen(self, event, duration, **kwargs):
    del kwargs
    if event in _EVENTS:
      self.seconds[_EVENTS[event]] += duration
      self.seconds['programs'] += event.endswith('backend_compile_duration')

  def pytest_configure(self, config):
    del config
    import jax.monitoring
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(self, item, nextitem):
    del nextitem
    self.seconds.clear()
    start, cpu = time.time(), time.process_time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {'test': item.nodeid, 'slow': item.get_closest_marker('slow') is not None,
           'wall': time.time() - start, 'cpu': time.process_time() - cpu,
           'children': after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, **self.seconds}
    with open(os.environ['SUITE_CPU_OUT'], 'a') as f:
      f.write(json.dumps(row) + '\n')


def pytest_configure(config):  # this module as a plugin: -p suite_cpu
  config.pluginmanager.register(Recorder(), 'suite-cpu-recorder')


def summarize(rows: list[dict], top: int) -> dict:
  keys = ('wall', 'cpu', 'children', 'trace', 'lower', 'compile', 'programs')
  total = lambda rs: {k: round(sum(r.get(k, 0) for r in rs), 1) for k in keys}  # noqa: E731
  modules = collections.defaultdict(list)
  for r in rows:
    modules[r['test'].split('::')[0]].append(r)
  cost = lambda r: r['cpu'] + r['children']  # noqa: E731
  return {'tests': len(rows), 'total': total(rows), 'slow': total([r for r in rows if r['slow']]),
          'modules': dict(sorted(((m, total(rs)) for m, rs in modules.items()),
                                 key=lambda kv: -(kv[1]['cpu'] + kv[1]['children']))),
          'costliest': [{'test': r['test'], **{k: round(r.get(k, 0), 1) for k in keys}}
                        for r in sorted(rows, key=cost, reverse=True)[:top]]}


def main(argv: list[str]) -> int:
  top = next((int(a.split('=')[1]) for a in argv if a.startswith('--top=')), 40)
  args = [a for a in argv if not a.startswith('--top=')]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'rows.jsonl')
    os.environ['SUITE_CPU_OUT'] = out  # the xdist workers inherit it, and this directory on their path
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT / 'benchmarks'), os.environ.get('PYTHONPATH')]))
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    start = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # pytest's report; stdout is the JSON line
      code = pytest.main(['-q', '-p', 'suite_cpu', '-p', 'no:cacheprovider', *args])
    rows = [json.loads(line) for line in open(out)] if os.path.exists(out) else []
  print(json.dumps({'exit': int(code), 'wall_s': round(time.time() - start, 1), **summarize(rows, top)}))
  return int(code)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

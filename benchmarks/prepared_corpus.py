"""A large text corpus prepared once (`python -m zoo.data.prepare`) and trained on: the tokenizer's training time,
the preparation's tokens per second and memory, and a tiny GPT run's time and memory on it next to the same run
on the default corpus. Prints one JSON object per measurement, one a line.

  python benchmarks/prepared_corpus.py [--sizes=1] [--dir=/tmp/zoo_bench] [--workers=2] [--repeats=2] [--steps=20]

For each size (GiB of text, in 4 line-per-document files made from the default corpus's documents, shuffled):
  tokenizer  a --vocab_size tokenizer trained on the bounded sample prepare draws (units.sample_documents)
  prepare    the whole corpus tokenized by --workers processes with that tokenizer, into a new directory
  train      train.py configs/gpt.py:tiny for --steps steps on prepared:DIR, and on the default corpus with the
             same tokenizer, alternating, --repeats times each
With several sizes, a last object compares the training runs' peak memory on each size with the first size's.
Memory is the peak of the resident set summed over the process and all its descendants, sampled every 0.2 s
(rss: a page shared by several processes counts in each; rss_anon and rss_file, each with its own peak: its
anonymous part and its file pages, memory-mapped shards among them), and every 1 s the same for pss (a shared page
split between the processes) and uss (the pages of one process alone). Corpora are kept under --dir and reused;
the preparation is redone every time.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = 4

TOKENIZER_SCRIPT = '''
import json, sys, time
from zoo.data import tokenizer as tk, units
source, path, vocab_size, sample_chars = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
opts = units.Options(source=source)
plan = units.plan_units(opts)
sample = units.sample_documents(plan, opts, sample_chars)
t1 = time.perf_counter()
tok = tk.train_tokenizer(sample, vocab_size, num_sentinels=100, path=path, seed_field='--vocab_size',
                         source=f'a sample of {source}')
t2 = time.perf_counter()
print(json.dumps(dict(sample_s=t1 - t0, train_s=t2 - t1, sample_documents=len(sample),
                      sample_chars=sum(map(len, sample)), vocab_size=tok.vocab_size)))
'''


def machine() -> dict:
  cpu = ''
  try:
    cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')), '')
  except OSError:
    pass
  return dict(cpu=cpu or platform.processor(), processor=platform.processor(), cpus=os.cpu_count(),
              memory_gib=round(psutil.virtual_memory().total / 2**30, 1), python=platform.python_version())


def emit(record: dict, meta: dict, gib=None) -> None:
  head = {'measurement': record.pop('measurement'), **({'gib': gib} if gib is not None else {})}
  print(json.dumps({**head, **record, **meta, 'date': datetime.datetime.now().isoformat(timespec='seconds')}),
        flush=True)


def make_corpus(directory: str, gib: float, seed: int = 0) -> str:
  """FILES text files of gib GiB in all, one document of the default corpus a line; reused when complete."""
  done = os.path.join(directory, 'corpus.json')
  if os.path.exists(done):
    return os.path.join(directory, '*.txt')
  from zoo.data import sources
  os.makedirs(directory, exist_ok=True)
  docs, _ = sources.read_documents('default')
  docs = [' '.join(d.split('\n')) for d in docs]
  rng, per_file, passes, lines = np.random.default_rng(seed), int(gib * 2**30 / FILES), 0, 0
  for k in range(FILES):
    with open(os.path.join(directory, f'part-{k}.txt'), 'w', encoding='utf-8') as fh:
      size = 0
      while size < per_file:
        # Each pass appends its number, so no two lines are equal: the validation split hashes the text.
        block = ''.join(f'{docs[i]} {passes}\n' for i in rng.permutation(len(docs)))
        fh.write(block)
        size += len(block.encode('utf-8'))
        passes += 1
        lines += len(docs)
  with open(done, 'w') as fh:
    json.dump(dict(gib=gib, files=FILES, lines=lines, passes=passes, seed=seed), fh)
  return os.path.join(directory, '*.txt')


def _rss_split(pid: int) -> dict:
  """A process's resident set as anonymous memory (its own) and file pages (page cache it maps: memory-mapped
  shards, libraries), which the kernel can drop."""
  out = {'rss_anon': 0, 'rss_file': 0}
  with open(f'/proc/{pid}/status') as fh:
    for line in fh:
      if line.startswith(('RssAnon:', 'RssFile:')):
        out['rss_anon' if line.startswith('RssAnon') else 'rss_file'] = int(line.split()[1]) << 10
  return out


class TreeMemory:
  """The peak memory of a process and all its descendants, sampled by a thread."""

  def __init__(self, pid: int, every: float = 0.2, full_every: int = 5):
    self.root, self.every, self.full_every = psutil.Process(pid), every, full_every
    self.peak = {'rss': 0, 'pss': 0, 'uss': 0, 'rss_anon': 0, 'rss_file': 0, 'processes': 0, 'root_rss': 0}
    self.samples = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _sample(self) -> None:
    try:
      procs = [self.root] + self.root.children(recursive=True)
    except psutil.Error:
      return
    # PSS reads smaps_rollup, which costs 100x what RSS does: every full_every-th sample, to load the cores less.
    full = self.samples % self.full_every == 0
    self.samples += 1
    total = {'rss': 0, 'pss': 0, 'uss': 0, 'rss_anon': 0, 'rss_file': 0}
    for p in procs:
      try:
        m = p.memory_full_info() if full else p.memory_info()
        split = _rss_split(p.pid)
      except (psutil.Error, OSError):  # exited between the listing and the read
        continue
      for k in ('rss', 'pss', 'uss'):
        total[k] += getattr(m, k, 0)
      for k, v in split.items():
        total[k] += v
      if p is self.root:
        self.peak['root_rss'] = max(self.peak['root_rss'], m.rss)
    if total['rss'] > self.peak['rss']:
      self.peak['processes'] = len(procs)
    for k, v in total.items():
      self.peak[k] = max(self.peak[k], v)

  def _run(self) -> None:
    while not self._stop.is_set():
      self._sample()
      self._stop.wait(self.every)

  def stop(self) -> dict:
    self._stop.set()
    self._thread.join()
    out = {f'peak_{k}_mb': round(self.peak[k] / 2**20) for k in ('rss', 'pss', 'uss', 'rss_anon', 'rss_file',
                                                                  'root_rss')}
    return {**out, 'processes_at_peak': self.peak['processes'], 'memory_samples': self.samples}


def run_tree(cmd: list[str], log_path: str, env: dict | None = None) -> dict:
  """Run cmd to completion (output to log_path): wall seconds, peak memory of its process tree, its output."""
  with open(log_path, 'w') as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    mem = TreeMemory(proc.pid)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    peak = mem.stop()
  out = open(log_path).read()
  if rc:
    raise SystemExit(f'{" ".join(cmd)} failed ({rc}):\n{out[-4000:]}')
  return dict(wall_s=round(wall, 2), **peak, output=out)


def train_tokenizer(source: str, path: str, args, log_dir: str) -> dict:
  r = run_tree([sys.executable, '-c', TOKENIZER_SCRIPT, source, path, str(args.vocab_size), str(args.sample_chars)],
               os.path.join(log_dir, 'tokenizer.log'))
  found = json.loads(r.pop('output').strip().splitlines()[-1])
  return dict(measurement='tokenizer', vocab_size=found['vocab_size'], sample_chars=found['sample_chars'],
              sample_documents=found['sample_documents'], sample_s=round(found['sample_s'], 2),
              train_s=round(found['train_s'], 2), total_s=round(found['sample_s'] + found['train_s'], 2),
              target_total_s=60, **r)


def prepare(source: str, out: str, tokenizer: str, args, log_dir: str) -> dict:
  shutil.rmtree(out, ignore_errors=True)
  cmd = [sys.executable, '-m', 'zoo.data.prepare', f'--source={source}', f'--out={out}', f'--tokenizer={tokenizer}',
         f'--workers={args.workers}', f'--unit_mb={args.unit_mb}']
  r = run_tree(cmd, os.path.join(log_dir, 'prepare.log'))
  output = r.pop('output')
  manifest = json.load(open(os.path.join(out, 'manifest.json')))
  tokens = sum(manifest['totals'][s]['tokens'] for s in ('train', 'validation'))
  # prepare logs the time of the tokenizing alone, without the start-up and the manifest.
  logged = re.search(r'in ([\d.]+) s \(([\d,]+) tokens/s', output)
  return dict(measurement='prepare', workers=args.workers, unit_mb=args.unit_mb, units=len(manifest['units']),
              documents=sum(manifest['totals'][s]['documents'] for s in ('train', 'validation')), tokens=tokens,
              tokens_per_s=round(tokens / r['wall_s']), logged_tokenize_s=float(logged.group(1)) if logged else None,
              logged_tokens_per_s=int(logged.group(2).replace(',', '')) if logged else None,
              output_mb=round(sum(f.stat().st_size for f in pathlib.Path(out, 'units').iterdir()) / 2**20),
              target_tokens_per_s=3_000_000, target_peak_rss_mb=2000, command_run=' '.join(cmd), **r)


def train_env() -> dict:
  return dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))


def train_run(data: str, prepared_dir: str, args, log_dir: str) -> dict:
  workdir = tempfile.mkdtemp(prefix='train-', dir=log_dir)
  data_flag = (f'--config.data.source=prepared:{prepared_dir}' if data == 'prepared' else
               f'--config.data.tokenizer={prepared_dir}/tokenizer.model')
  cmd = [sys.executable, 'train.py', '--config=configs/gpt.py:tiny', f'--workdir={workdir}', data_flag,
         f'--config.train.steps={args.steps}']
  r = run_tree(cmd, os.path.join(workdir, 'train.log'), train_env())
  r.pop('output')
  shutil.rmtree(workdir, ignore_errors=True)
  return dict(measurement='train', data=data, steps=args.steps, command_run=' '.join(cmd), **r)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='1', help='comma-separated corpus sizes in GiB')
  parser.add_argument('--gib', type=float, default=None, help='one size (the same as --sizes=N)')
  parser.add_argument('--dir', default=os.path.join(tempfile.gettempdir(), 'zoo_bench'),
                      help='where the corpora and preparations are kept')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--sample_chars', type=int, default=10_000_000, help="prepare's --tokenizer_sample_chars")
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--unit_mb', type=int, default=64)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=2, help='training runs of each kind per size')
  parser.add_argument('--skip', default='', help='comma-separated phases not to run: tokenizer, prepare, train')
  args = parser.parse_args()
  sizes = [args.gib] if args.gib is not None else [float(s) for s in args.sizes.split(',')]
  skip = set(filter(None, args.skip.split(',')))
  meta = dict(machine=machine(), command=' '.join([sys.executable] + sys.argv))
  train_peaks = {}
  for gib in sizes:
    name = f'{gib:g}gib'
    base = os.path.join(args.dir, name)
    log_dir = os.path.join(base, 'logs')
    os.makedirs(log_dir, exist_ok=True)
    t0 = time.perf_counter()
    source = f'text:{make_corpus(os.path.join(base, "corpus"), gib)}'
    corpus_bytes = sum(os.path.getsize(f) for f in glob.glob(source[len('text:'):]))
    emit(dict(measurement='corpus', files=FILES, bytes=corpus_bytes, seconds=round(time.perf_counter() - t0, 1),
              path=source), meta, gib)
    tok_path = os.path.join(base, 'tokenizer.model')
    if 'tokenizer' not in skip or not os.path.exists(tok_path):
      emit(train_tokenizer(source, tok_path, args, log_dir), meta, gib)
    out = os.path.join(base, 'prepared')
    if 'prepare' not in skip or not os.path.exists(os.path.join(out, 'manifest.json')):
      emit(prepare(source, out, tok_path, args, log_dir), meta, gib)
    if 'train' in skip:
      continue
    runs = {'prepared': [], 'default': []}
    for _ in range(args.repeats):
      for data in runs:  # alternating, so a slower moment of the machine falls on both kinds alike
        r = train_run(data, out, args, log_dir)
        runs[data].append(r)
        emit(dict(r), meta, gib)
    wall = {k: round(float(np.median([r['wall_s'] for r in v])), 2) for k, v in runs.items()}
    peak = {k: max(r['peak_rss_mb'] for r in v) for k, v in runs.items()}
    anon = {k: max(r['peak_rss_anon_mb'] for r in v) for k, v in runs.items()}
    train_peaks[f'{gib:g}'] = {'rss': peak['prepared'], 'rss_anon': anon['prepared']}
    emit(dict(measurement='train_summary', repeats=args.repeats, median_wall_s=wall, max_peak_rss_mb=peak,
              max_peak_rss_anon_mb=anon,
              wall_ratio_prepared_to_default=round(wall['prepared'] / wall['default'], 3), target_wall_ratio=1.5,
              target_peak_rss_mb=2000), meta, gib)
  if len(train_peaks) > 1:
    first = f'{sizes[0]:g}'
    emit(dict(measurement='train_memory_by_size',
              peak_rss_mb={g: p['rss'] for g, p in train_peaks.items()},
              ratio_to_first={g: round(p['rss'] / train_peaks[first]['rss'], 3) for g, p in train_peaks.items()},
              peak_rss_anon_mb={g: p['rss_anon'] for g, p in train_peaks.items()},
              anon_ratio_to_first={g: round(p['rss_anon'] / train_peaks[first]['rss_anon'], 3)
                                   for g, p in train_peaks.items()}, target_ratio=1.1), meta)


if __name__ == '__main__':
  main()

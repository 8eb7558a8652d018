"""kill -9 at random moments of a train.py run, then the same command again until it finishes: are the losses
those of an uninterrupted run at every step? Prints one JSON object.

  python benchmarks/kill_resume.py [--kills=20] [--steps=40] [--seed=0]

A checkpoint is saved every step (asynchronously); the first kill waits for one being written, and the others
land at random moments, most of them during a write too. Each rerun
resumes from the newest complete checkpoint; an interrupted write is never taken for one. The test suite runs
the same with 3 kills (tests/test_reliability.py).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def command(workdir, steps: int, tokenizer: str = 'train', extra=()) -> list[str]:
  """A small GPT run on 2 simulated CPU devices that logs and checkpoints every step."""
  return [sys.executable, str(ROOT / 'train.py'), f'--config={ROOT}/configs/gpt.py:tiny', f'--workdir={workdir}',
          f'--config.data.tokenizer={tokenizer}', '--config.data.vocab_size=1000', '--config.train.seq_len=32',
          '--config.train.batch_size=8', f'--config.train.steps={steps}', '--config.log.every=1',
          '--config.checkpoint.every=1', '--config.checkpoint.keep=2', '--config.log.tensorboard=False',
          '--config.train.eval_batches=1', '--config.model.dropout_rate=0.0', *extra]


def environment() -> dict:
  """2 simulated CPU devices, tiny-model compile settings, and the XLA flags already set here (the tests' own)."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', os.environ.get('XLA_FLAGS', ''))
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {flags}'.strip(), JAX_PLATFORMS='cpu',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1', JAX_DEFAULT_MATMUL_PRECISION='highest')


def losses(workdir) -> dict[int, float]:
  """{step: loss} from metrics.jsonl, the last row of each step (a resumed run logs its steps again)."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl')) if line.strip()]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def _logged_steps(workdir) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def _writing(workdir) -> bool:
  """Whether a checkpoint is being written (Orbax writes to a temporary directory, renamed when complete)."""
  checkpoints = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(checkpoints) and any('tmp' in d for d in os.listdir(checkpoints))


def killed_run(workdir, steps: int, kills: int, rng: random.Random, tokenizer: str = 'train', extra=()) -> dict:
  """Run, kill -9 `kills` times at random moments after the first logged step, rerun until finished (extra: more
  train.py flags)."""
  env, done, interrupted_writes, runs = environment(), 0, 0, 0
  while True:
    runs += 1
    before = _logged_steps(workdir)
    proc = subprocess.Popen(command(workdir, steps, tokenizer, extra), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if done < kills:
      wait_for = before + rng.randint(1, 4)  # a few steps into this attempt
      deadline = time.time() + 300
      while proc.poll() is None and _logged_steps(workdir) < wait_for and time.time() < deadline:
        time.sleep(0.02)
      if done == 0:  # the first kill lands while a checkpoint is being written
        while proc.poll() is None and not _writing(workdir) and time.time() < deadline:
          time.sleep(0.002)
      else:
        time.sleep(rng.uniform(0.0, 0.3))
      if proc.poll() is None:
        proc.kill()  # SIGKILL: no handler runs, nothing is flushed
        done += 1
      out, _ = proc.communicate(timeout=300)
      if _writing(workdir):
        interrupted_writes += 1  # killed while a checkpoint was being written
      if proc.returncode == 0:
        break
    else:
      out, _ = proc.communicate(timeout=600)
      if proc.returncode != 0:
        raise RuntimeError(f'the last rerun failed:\n{out}')
      break
  return {'kills': done, 'runs': runs, 'kills_during_a_checkpoint_write': interrupted_writes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.time()
    reference = os.path.join(tmp, 'once')
    out = subprocess.run(command(reference, args.steps), env=environment(), capture_output=True, text=True)
    if out.returncode:
      raise SystemExit(out.stdout + out.stderr)
    tokenizer = os.path.join(reference, 'tokenizer.model')  # the same tokenizer, not trained again per run
    killed = os.path.join(tmp, 'killed')
    result = killed_run(killed, args.steps, args.kills, random.Random(args.seed), tokenizer)
    once, resumed = losses(reference), losses(killed)
    same = [s for s in range(1, args.steps + 1) if once.get(s) == resumed.get(s)]
    result.update(steps=args.steps, steps_with_equal_loss=len(same), all_equal=len(same) == args.steps,
                  seconds=round(time.time() - t0, 1))
  print(json.dumps(result))


if __name__ == '__main__':
  main()

"""What a run reports: metrics.jsonl and TensorBoard rows, the progress line, and the FLOPs and peak that MFU
is computed from."""
from __future__ import annotations

import json
import os

import jax

# Dense bf16 peak FLOP/s per device, by jax device_kind (prefix match). CPUs: per process, measured on a
# 2-core x86 development machine (JAX_NOTES): float32 260 GFLOP/s, bfloat16 with AMX 1.1 TFLOP/s.
PEAK_FLOPS = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v5': 459e12,
              'TPU v6 lite': 918e12, 'TPU v6e': 918e12, 'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12,
              'NVIDIA A100': 312e12, 'NVIDIA L4': 121e12}
CPU_PEAK = {'float32': 260e9, 'bfloat16': 1.1e12, 'float16': 260e9}


def peak_flops(config, devices) -> float:
  """The run's peak FLOP/s over its devices: log.peak_flops per device if set, else by device kind (0: unknown)."""
  if config.log.peak_flops > 0:
    return config.log.peak_flops * len(devices)
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    return CPU_PEAK[config.model.dtype] * jax.process_count()  # simulated CPU devices share the cores
  for prefix, flops in PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return flops * len(devices)
  return 0.0


def flops_per_token(model, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6 N for the matmuls (forward and backward) plus 12 L T D for attention."""
  layers = getattr(model, 'num_layers', 0) or (getattr(model, 'num_encoder_layers', 0) +
                                               getattr(model, 'num_decoder_layers', 0))
  attention = 12 * layers * seq_len * getattr(model, 'embed_dim', 0) if hasattr(model, 'num_heads') else 0
  return 6.0 * n_params + attention


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard event files (tensorboardX: no TensorFlow)."""

  def __init__(self, workdir: str, tensorboard: bool):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict, prefix: str = '') -> None:
    if not self.active:
      return
    row = {'step': step, **{f'{prefix}{k}': v for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self.tb:
      for k, v in row.items():
        if k != 'step' and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)
      self.tb.flush()

  def close(self):
    if self.tb:
      self.tb.close()


def fmt_time(seconds: float) -> str:
  """'m:ss', or 'h:mm:ss' from an hour.

  >>> fmt_time(75), fmt_time(3725)
  ('1:15', '1:02:05')
  """
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}' if seconds >= 3600 else \
      f'{seconds // 60}:{seconds % 60:02d}'


def say(msg: str) -> None:
  """Print on process 0 only."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def progress_line(step: int, total: int, m: dict, eta: str) -> str:
  """'step  10/300 | loss 6.1234 | acc 0.123 | 12.3k tok/s | MFU 4.5% | ETA 1:02'."""
  speed = f" | {m['tokens_per_s'] / 1000:.1f}k tok/s | MFU {100 * m['mfu']:.1f}%" if 'mfu' in m else ''
  acc = next((v for k, v in m.items() if k.endswith('_accuracy')), None)
  return (f'step {step:>{len(str(total))}}/{total} | loss {m["loss"]:.4f}'
          + (f' | acc {acc:.3f}' if acc is not None else '') + speed + f' | ETA {eta}')

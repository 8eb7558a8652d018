"""What a run reports: metrics.jsonl and TensorBoard rows, the progress line, and the FLOPs and peak that MFU
is computed from."""
from __future__ import annotations

import functools
import io
import json
import math

import jax

from zoo import paths
from zoo.layers import kernels

# Dense bf16 peak FLOP/s per device, by jax device_kind (prefix match).
PEAK_FLOPS = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v5': 459e12,
              'TPU v6 lite': 918e12, 'TPU v6e': 918e12, 'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12,
              'NVIDIA A100': 312e12, 'NVIDIA L4': 121e12}


def peak_flops(config, devices) -> float:
  """The run's peak FLOP/s over its devices: log.peak_flops per device if set, else by device kind; on a CPU the
  measured rate of a large matmul in the model's dtype (`cpu_peak`; simulated devices share the cores). 0: unknown.
  """
  if config.log.peak_flops > 0:
    return config.log.peak_flops * len(devices)
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    return cpu_peak(config.model.dtype) * jax.process_count()
  for prefix, flops in PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return flops * len(devices)
  return 0.0


@functools.lru_cache(maxsize=None)
def cpu_peak(dtype: str, n: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of this process's CPU on an n x n x n matmul in `dtype` under zoo's dtype policy (float32
  accumulation), the best of `repeats`: the ceiling MFU is measured against (a 2-core x86 machine with AMX:
  about 260 GFLOP/s in float32, 1.1 TFLOP/s in bfloat16)."""
  import time

  import jax.numpy as jnp
  from zoo.layers import common
  dt = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[dtype]
  x = jnp.ones((n, n), dt)
  mm = jax.jit(lambda a, b: common.dot_general(a, b, (((1,), (0,)), ((), ()))))
  mm(x, x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(x, x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def flops_per_token(model, params, seq_len: int, objective=None, fused_attention: bool = False) -> float:
  """Training FLOPs per token that the step executes: forward and backward, a multiply-add counted as 2 FLOPs,
  the backward pass as twice the forward (so 6 per weight a token meets).

  - Matmuls: 6 x every weight matrix a token passes through. Lookups (embedding tables, relative-position
    buckets) cost nothing; a tied output projection counts its V x D.
  - ALBERT's shared layers count once per application (num_layers times), not once.
  - BERT's MLM head (transform and output projection) runs on the masked positions only:
    `objective.max_predictions(T) / T` of the tokens; so does SpanBERT's span boundary head (sbo: its two layers and
    a second pass through the output projection). The pooler, NSP and classification heads run once per row.
  - Attention: 12 x T x width per layer (QK^T and AV, forward and backward), halved for a causal mask when a fused
    kernel runs it (it skips the masked blocks), (n + 1) / 2n of it on the xla path when that splits a causal
    self-attention into n query blocks (`zoo.layers.kernels.causal_blocks`: no attention dropout, T >= 128; GLM's
    prefix: the whole square); cross-attention 12 x S x width.
  Norms, biases, softmax and the optimizer are not counted (they are memory-bound). params: the unboxed parameter
  tree (or its shapes).
  """
  from flax import traverse_util
  if hasattr(model, 'parts'):  # several networks (ELECTRA: the generator and the discriminator): their sum
    return sum(flops_per_token(m, p, seq_len, objective, fused_attention) for m, p in model.parts(params))
  shared = getattr(model, 'share_layers', False)
  layers = getattr(model, 'num_layers', 0)
  mlm = getattr(model, 'head', None) == 'pretraining'
  frac = objective.max_predictions(seq_len) / seq_len if mlm and hasattr(objective, 'max_predictions') else 1.0
  weights = 0.0
  for path, leaf in traverse_util.flatten_dict(params).items():
    if path[-1] != 'kernel' or len(leaf.shape) < 2:
      continue
    n = float(math.prod(leaf.shape))
    if path[0] in ('pooler', 'nsp', 'classifier'):
      n /= seq_len
    elif path[0].startswith('mlm') or path[0] == 'sbo':
      n *= frac
    elif shared and path[0] == 'layers':
      n *= layers
    weights += n
  if getattr(model, 'tie_embeddings', False) or mlm:
    table = params.get('token_embed', {}).get('embedding')
    uses = frac * (2 if getattr(model, 'sbo', False) else 1) if mlm else 1.0  # SBO: the projection again
    weights += float(math.prod(table.shape)) * uses if table is not None else 0.0
  flops = 6.0 * weights
  heads = getattr(model, 'num_heads', 0)
  if heads and hasattr(model, 'embed_dim'):
    width = heads * (getattr(model, 'head_dim', 0) or model.embed_dim // heads)
    if fused_attention:
      causal = 0.5
    else:  # the xla path runs a causal self-attention in n query blocks: (n + 1) / 2n of the square
      n = kernels.causal_blocks(seq_len, seq_len, kernels.Mask(causal=True), getattr(model, 'dropout_rate', 0.0) > 0)
      causal = (n + 1) / (2 * n)
    if hasattr(model, 'num_encoder_layers'):  # encoder (bidirectional), decoder (causal) and cross-attention
      flops += 12 * seq_len * width * (model.num_encoder_layers + model.num_decoder_layers * (causal + 1))
    else:
      kind = type(model).__name__  # GLM's prefix keeps the whole square on the xla path
      causal = causal if kind == 'Gpt' or (kind == 'Glm' and fused_attention) else 1.0
      flops += 12 * seq_len * width * layers * causal
  return flops


class _EpathEventFile:
  """A TensorBoard event file on a non-local filesystem (gs://...), written through epath: object stores cannot
  append, so the records are kept and the whole file is rewritten at each flush (as tensorboardX's own GCS writer
  does; a run's scalars are small)."""

  def __init__(self, path: str):
    self.path, self.buffer = paths.path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathEventFiles:
  """tensorboardX's writer factory for a URI scheme: its event files go through epath."""

  def open(self, path: str) -> _EpathEventFile:
    return _EpathEventFile(path)

  def directory_check(self, path: str) -> None:
    paths.path(path).mkdir(parents=True, exist_ok=True)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch whenever it is installed (as
  on Colab) only to accept torch tensors, which zoo never passes: that import took 2-3 s of a run's start (and
  torch's memory). A process that has imported torch already keeps it.

  >>> import sys
  >>> _summary_writer_class().__name__, 'torch' in sys.modules and sys.modules['torch'] is None
  ('SummaryWriter', False)
  """
  import sys
  block = 'torch' not in sys.modules
  if block:  # `import torch` raises ImportError, which tensorboardX expects when torch is absent
    sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block:
      sys.modules.pop('torch', None)
  return SummaryWriter


class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard event files (tensorboardX: no TensorFlow).

  In a non-local workdir (gs://...) both are written through epath: metrics.jsonl is rewritten whole at each
  row (object stores cannot append), and tensorboardX's event files go through `_EpathEventFiles`."""

  def __init__(self, workdir: str, tensorboard: bool):
    self.active = jax.process_index() == 0
    self.path = paths.join(workdir, 'metrics.jsonl')
    self.local = paths.is_local(workdir)
    self._rows = None  # a non-local metrics.jsonl's text, rewritten whole
    if self.active and not self.local:
      self._rows = paths.path(self.path).read_text() if paths.path(self.path).exists() else ''
    self.tb = None
    if self.active and tensorboard:
      SummaryWriter = _summary_writer_class()
      if not self.local:
        from tensorboardX import record_writer
        record_writer.register_writer_factory(str(workdir).split(':', 1)[0], _EpathEventFiles())
      self.tb = SummaryWriter(paths.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict, prefix: str = '') -> None:
    if not self.active:
      return
    row = {'step': step, **{f'{prefix}{k}': v for k, v in metrics.items()}}
    if self.local:
      with paths.path(self.path).open('a') as f:
        f.write(json.dumps(row) + '\n')
    else:
      self._rows += json.dumps(row) + '\n'
      paths.path(self.path).write_text(self._rows)
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

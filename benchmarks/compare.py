"""zoo against HF transformers on PyTorch: training throughput at the same shapes, side by side, as JSON lines.

  python benchmarks/compare.py --preset=cpu                  # this 2-core CPU, bf16: BERT-small MLM, small GPT
  python benchmarks/compare.py --preset=gpu                  # one GPU, bf16: GPT-2 small 16x1024, BERT-base 128x128
  python benchmarks/compare.py --preset=cpu --dtype=float32 --steps=10 --warmup=2
  python benchmarks/compare.py --preset=cpu --models=gpt --frameworks=torch --torch_compile=on

Presets (both sides: the same layers, width, heads, MLP, vocabulary, batch and sequence length, dropout 0,
AdamW with the zoo recipe's betas, eps and weight decay (not on biases and norms), gradient clipping at norm 1,
random tokens; the MLM masks ceil(15%) of the positions of each row):
  cpu  bert: 4 layers, width 512, 8 heads, MLP 2048, vocab 8192, 32 x 128 (configs/bert.py:small)
       gpt:  4 layers, width 512, 8 heads, MLP 2048, vocab 8192, 16 x 256, 256 positions (configs/gpt.py)
  gpu  gpt:  GPT-2 small, vocab 50304, 16 x 1024; bert: BERT-base, vocab 30522, 128 x 128
zoo runs `benchmarks/train_step.py`'s `measure()` with model.dtype set to --dtype. PyTorch runs
GPT2LMHeadModel / BertForMaskedLM with SDPA attention, bf16 autocast (none for float32), torch.compile on a GPU
and eager on a CPU (--torch_compile=on|off overrides), fused AdamW on a GPU. The stock BertForMaskedLM scores
every position and takes its loss where labels != -100; zoo's MLM head scores only the masked positions
(--torch_mlm_head=masked gathers them on the PyTorch side too).

Each framework runs in its own subprocess (`--worker=zoo|torch|pipeline`), one after the other, so neither sees
the other's threads or memory. A third worker measures zoo's input pipeline (zoo.data.pipeline, concat packing,
--pipeline_workers processes, by default the host's cores) at the same batch and sequence length, and the time
the objective's host-side `example()` (MLM masking) takes per batch: a pipeline should deliver >= 2x the step's
tokens/s to keep up.

Output on stdout, one JSON object a line: per model one line per framework (tokens_per_s, step_ms, peak memory:
GPU `peak_mem_mib` from torch.cuda.max_memory_allocated / jax memory_stats peak_bytes_in_use, zoo's compiled
`peak_memory_mib_per_device`, the host process's `peak_rss_mib`; params; mfu by the FLOPs zoo's step executes
zoo's peak for the device and dtype), then a ratio line (zoo / pytorch tokens/s, pipeline / zoo step tokens/s).
Logs go to stderr.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Optimizer fields from configs/bert.py and configs/gpt.py (non-tiny), given to both sides.
BERT_OPT = dict(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, clip_norm=1.0)
GPT_OPT = dict(learning_rate=6e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
SMALL = dict(num_layers=4, embed_dim=512, num_heads=8, mlp_dim=2048)
PRESETS = {
    'cpu': {
        'bert': dict(recipe='bert', size='small', **SMALL, max_len=512, vocab=8192, batch=32, seq=128, opt=BERT_OPT),
        'gpt': dict(recipe='gpt', size='small', **SMALL, max_len=256, vocab=8192, batch=16, seq=256, opt=GPT_OPT),
    },
    'gpu': {
        'gpt': dict(recipe='gpt', size='small', num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072,
                    max_len=1024, vocab=50304, batch=16, seq=1024, opt=GPT_OPT),
        'bert': dict(recipe='bert', size='base', num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072,
                     max_len=512, vocab=30522, batch=128, seq=128, opt=BERT_OPT),
    },
}
DIMS = ('num_layers', 'embed_dim', 'num_heads', 'mlp_dim')


def log(msg: str) -> None:
  print(f'[compare] {msg}', file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def mlm_predictions(seq: int) -> int:
  return max(1, math.ceil(0.15 * seq))  # zoo's Mlm.max_predictions at mask_rate 0.15, token masking


# ---------------------------------------------------------------------------------------------------- zoo worker


def tokenizer_path(workdir: str, vocab: int) -> str:
  """A SentencePiece model trained once on the default corpus and shared by the zoo and pipeline workers."""
  from zoo.data import sources
  from zoo.data import tokenizer as tk
  path = os.path.join(workdir, f'spm{vocab}.model')
  if not os.path.exists(path):
    docs, _ = sources.read_documents('default')
    tk.train_tokenizer(docs, vocab, num_sentinels=100, path=path)
  return path


def zoo_config(spec: dict, args):
  """The recipe's config at the spec's shapes. A size the recipe lacks is added to the family's size table in
  this process (zoo refuses most fields overridden away from the named size)."""
  import importlib

  from zoo import config as config_lib
  from zoo import models
  sizes = models.get_family(spec['recipe']).sizes
  size = spec['size']
  wanted = {k: spec[k] for k in DIMS}
  if any(sizes[size].get(k) != v for k, v in wanted.items()):
    size = 'compare'
    sizes[size] = dict(wanted, max_len=spec['max_len'])
  config = importlib.import_module(f'configs.{spec["recipe"]}').get_config(size)
  tok_vocab = min(args.tokenizer_vocab, spec['vocab'])
  overrides = {'model.vocab_size': spec['vocab'], 'model.dtype': args.dtype, 'model.dropout_rate': 0.0,
               'train.batch_size': spec['batch'], 'train.seq_len': spec['seq'],
               'data.tokenizer': tokenizer_path(args.workdir, tok_vocab), 'data.vocab_size': tok_vocab,
               **{f'optimizer.{k}': v for k, v in spec['opt'].items()}}
  if 'max_len' in config.model and config.model.max_len != spec['max_len']:
    overrides['model.max_len'] = spec['max_len']
  return config_lib.override(config, overrides)


def zoo_worker(spec: dict, args) -> dict:
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import jax
  import train_step

  from zoo.train import metrics
  config = zoo_config(spec, args)
  workdir = tempfile.mkdtemp(dir=args.workdir)
  t0 = time.perf_counter()
  out = train_step.measure(config, workdir, args.steps)  # compiles, 1 warm-up step, then `steps` timed
  total_s = time.perf_counter() - t0
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  return dict(out, impl='zoo', device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
              warmup_steps=1, total_s=round(total_s, 1),
              peak_mem_mib=round(stats['peak_bytes_in_use'] / 2**20, 1) if stats and 'peak_bytes_in_use' in stats
              else None, peak_rss_mib=peak_rss_mib(),
              peak_flops=metrics.peak_flops(config, jax.devices()))


# -------------------------------------------------------------------------------------------------- torch worker


def torch_worker(spec: dict, args) -> dict:
  import torch
  import transformers as tf
  cuda = args.preset == 'gpu'
  if cuda and not torch.cuda.is_available():
    raise RuntimeError('--preset=gpu: torch sees no CUDA device')
  dev = 'cuda' if cuda else 'cpu'
  compile_ = {'on': True, 'off': False, 'auto': cuda}[args.torch_compile]
  bf16 = args.dtype == 'bfloat16'
  torch.manual_seed(0)
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
  common = dict(vocab_size=spec['vocab'], attn_implementation='sdpa')
  if spec['recipe'] == 'gpt':
    cfg = tf.GPT2Config(n_positions=spec['max_len'], n_embd=spec['embed_dim'], n_layer=spec['num_layers'],
                        n_head=spec['num_heads'], n_inner=spec['mlp_dim'], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=spec['vocab'] - 1, eos_token_id=spec['vocab'] - 1, **common)
    model = tf.GPT2LMHeadModel(cfg)
  else:
    cfg = tf.BertConfig(hidden_size=spec['embed_dim'], num_hidden_layers=spec['num_layers'],
                        num_attention_heads=spec['num_heads'], intermediate_size=spec['mlp_dim'],
                        max_position_embeddings=spec['max_len'], hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, **common)
    model = tf.BertForMaskedLM(cfg)
  model = model.to(dev).train()
  n_params = sum(p.numel() for p in model.parameters())
  o = spec['opt']
  decay = [p for p in model.parameters() if p.ndim >= 2]  # as zoo: no decay on biases and norm scales
  rest = [p for p in model.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': o['weight_decay']}, {'params': rest, 'weight_decay': 0.0}],
                          lr=o['learning_rate'], betas=(o['b1'], o['b2']), eps=o['eps'], fused=cuda)
  b, t, v = spec['batch'], spec['seq'], spec['vocab']
  x = torch.randint(0, v, (b, t), device=dev)
  if spec['recipe'] == 'bert':
    pos = torch.rand(b, t, device=dev).argsort(-1)[:, :mlm_predictions(t)].sort(-1).values
    targets = x.gather(1, pos)
    labels = torch.full_like(x, -100).scatter_(1, pos, targets)
    inputs = x.clone().scatter_(1, pos, 4)  # a [MASK]-like id

  def loss_fn():
    if spec['recipe'] == 'gpt':
      return model(input_ids=x, labels=x).loss
    if args.torch_mlm_head == 'all':
      return model(input_ids=inputs, labels=labels).loss
    hidden = model.bert(input_ids=inputs).last_hidden_state
    picked = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = model.cls(picked).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))

  def step():
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
      loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o['clip_norm'])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  fn = torch.compile(step) if compile_ else step
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(max(1, args.warmup)):
    loss = fn()
  sync()
  warm = time.perf_counter() - t0
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    loss = fn()
  sync()
  dt = (time.perf_counter() - t0) / args.steps
  return dict(impl='torch-' + ('compile' if compile_ else 'eager'), torch_compile=compile_,
              autocast='bfloat16' if bf16 else None, attention='sdpa', optimizer='adamw-fused' if cuda else 'adamw',
              mlm_head=args.torch_mlm_head if spec['recipe'] == 'bert' else None,
              device=torch.cuda.get_device_name() if cuda else 'cpu', torch=torch.__version__,
              transformers=tf.__version__, threads=torch.get_num_threads(), step_ms=round(dt * 1e3, 2),
              tokens_per_s=round(b * t / dt), params=n_params, warmup_steps=max(1, args.warmup),
              warmup_s=round(warm, 1), loss=round(float(loss.detach()), 3),
              peak_mem_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
              peak_rss_mib=peak_rss_mib())


# ----------------------------------------------------------------------------------------------- pipeline worker


def pipeline_worker(spec: dict, args) -> dict:
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import importlib

  import input_pipeline
  import numpy as np

  from zoo.data import pipeline, sources
  from zoo.data import tokenizer as tk
  docs, _ = sources.read_documents('default')
  tok = tk.Tokenizer.load(tokenizer_path(args.workdir, min(args.tokenizer_vocab, spec['vocab'])))
  ns = argparse.Namespace(seq_len=spec['seq'], batch_size=spec['batch'], batches=args.pipeline_batches)
  rows = [input_pipeline.measure(docs, tok, 'concat', int(w), ns) for w in args.pipeline_workers.split(',')]
  best = max(rows, key=lambda r: r['tokens_per_s'])
  # The objective's host-side example() (MLM masking; the loop runs it in the main thread before each step).
  build = importlib.import_module('zoo.train.build')  # the module (zoo.train.build is also a function's name)
  objective = build.make_objective(zoo_config(spec, args), tok)
  ds = pipeline.make_dataset(docs, tok, seq_len=spec['seq'], batch_size=spec['batch'], packing='concat')
  it = iter(ds)
  batches = [next(it) for _ in range(4)]
  if hasattr(it, 'close'):
    it.close()
  rng = np.random.default_rng(0)
  reps = 20
  t0 = time.perf_counter()
  for i in range(reps):
    objective.example(batches[i % len(batches)], rng)
  ex = (time.perf_counter() - t0) / reps
  return dict(packing='concat', workers=best['workers'], tokens_per_s=best['tokens_per_s'],
              real_tokens_per_s=best['real_tokens_per_s'], fill_rate=best['fill_rate'], startup_s=best['startup_s'],
              cpus=os.cpu_count(), objective=objective.name, objective_example_ms=round(ex * 1e3, 3),
              objective_tokens_per_s=round(spec['batch'] * spec['seq'] / ex),
              runs=rows if len(rows) > 1 else None)


# -------------------------------------------------------------------------------------------------- orchestrator


def run_worker(kind: str, model: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f'--worker={kind}', f'--model={model}', f'--preset={args.preset}',
         f'--dtype={args.dtype}', f'--steps={args.steps}', f'--warmup={args.warmup}', f'--workdir={args.workdir}',
         f'--torch_compile={args.torch_compile}', f'--torch_mlm_head={args.torch_mlm_head}',
         f'--tokenizer_vocab={args.tokenizer_vocab}', f'--pipeline_workers={args.pipeline_workers}',
         f'--pipeline_batches={args.pipeline_batches}']
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  if args.preset == 'cpu':
    env.setdefault('JAX_PLATFORMS', 'cpu')  # not libtpu's probing where it is installed
  log(f'{model} / {kind} ...')
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=ROOT,
                          timeout=args.timeout, check=False)
  except subprocess.TimeoutExpired:
    return {'error': f'timed out after {args.timeout} s'}
  wall = round(time.perf_counter() - t0, 1)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
  if proc.returncode or not lines:
    return {'error': f'worker exited with {proc.returncode} (its stderr is above)', 'wall_s': wall}
  log(f'{model} / {kind}: {wall} s')
  return dict(json.loads(lines[-1]), wall_s=wall)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
  parser.add_argument('--models', default='', help='comma-separated, of the preset\'s (default: all of them)')
  parser.add_argument('--frameworks', default='zoo,torch,pipeline', help='which of zoo, torch, pipeline to run')
  parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
  parser.add_argument('--steps', type=int, default=10, help='timed steps, after the warm-up')
  parser.add_argument('--warmup', type=int, default=2, help='untimed PyTorch steps first (zoo: compile + 1 step)')
  parser.add_argument('--torch_compile', default='auto', choices=['auto', 'on', 'off'], help='auto: on a GPU only')
  parser.add_argument('--torch_mlm_head', default='all', choices=['all', 'masked'],
                      help='all: stock BertForMaskedLM (every position scored); masked: only the masked ones')
  parser.add_argument('--tokenizer_vocab', type=int, default=8000, help='zoo: SentencePiece vocabulary trained')
  parser.add_argument('--pipeline_workers', default=str(os.cpu_count()), help='comma-separated; the best is used')
  parser.add_argument('--pipeline_batches', type=int, default=100)
  parser.add_argument('--timeout', type=int, default=3600, help='seconds per worker')
  parser.add_argument('--workdir', default='', help='tokenizer and scratch (default: a temporary folder)')
  parser.add_argument('--worker', default='', choices=['', 'zoo', 'torch', 'pipeline'], help=argparse.SUPPRESS)
  parser.add_argument('--model', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    spec = PRESETS[args.preset][args.model]
    out = {'zoo': zoo_worker, 'torch': torch_worker, 'pipeline': pipeline_worker}[args.worker](spec, args)
    print(json.dumps(out), flush=True)
    return
  args.workdir = args.workdir or tempfile.mkdtemp(prefix='zoo_compare_')
  models = [m for m in (args.models.split(',') if args.models else PRESETS[args.preset]) if m]
  frameworks = [f for f in args.frameworks.split(',') if f]
  for model in models:
    spec = PRESETS[args.preset][model]
    shape = dict(model=model, preset=args.preset, dtype=args.dtype, batch=spec['batch'], seq=spec['seq'],
                 vocab=spec['vocab'], layers=spec['num_layers'], width=spec['embed_dim'], steps=args.steps)
    res = {kind: run_worker(kind, model, args) for kind in frameworks}
    zoo, torch_, pipe = res.get('zoo', {}), res.get('torch', {}), res.get('pipeline', {})
    peak = zoo.get('peak_flops')
    if 'tokens_per_s' in torch_ and 'flops_per_token' in zoo:  # the same work: zoo's FLOPs count and peak
      torch_['mfu'] = round(torch_['tokens_per_s'] * zoo['flops_per_token'] / peak, 4) if peak else None
    for kind, framework in (('zoo', 'zoo'), ('torch', 'pytorch')):
      if kind in res:
        print(json.dumps({**shape, 'framework': framework, **res[kind]}), flush=True)
    ratio = dict(model=model, preset=args.preset, dtype=args.dtype, ratio='zoo/pytorch tokens_per_s')
    if 'tokens_per_s' in zoo and 'tokens_per_s' in torch_:
      ratio['zoo_over_pytorch'] = round(zoo['tokens_per_s'] / torch_['tokens_per_s'], 3)
    if 'tokens_per_s' in pipe:
      ratio.update(pipeline_tokens_per_s=pipe['tokens_per_s'], pipeline_workers=pipe['workers'],
                   pipeline_fill_rate=pipe['fill_rate'], objective_example_ms=pipe['objective_example_ms'],
                   objective_tokens_per_s=pipe['objective_tokens_per_s'])
      if 'tokens_per_s' in zoo:
        ratio['pipeline_over_zoo_step'] = round(pipe['tokens_per_s'] / zoo['tokens_per_s'], 2)
        ratio['objective_over_zoo_step'] = round(pipe['objective_tokens_per_s'] / zoo['tokens_per_s'], 2)
        ratio['pipeline_keeps_up'] = ratio['pipeline_over_zoo_step'] >= 2.0
    elif 'error' in pipe:
      ratio['pipeline_error'] = pipe['error']
    print(json.dumps(ratio), flush=True)


if __name__ == '__main__':
  main()

"""GPT causal language modelling on the default corpus.

  python train.py --config=configs/gpt.py:tiny --workdir=workdir/gpt
  python train.py --config=configs/gpt.py:small --workdir=/mnt/disks/persist/gpt --config.model.dtype=bfloat16

The argument picks the model size (zoo/models/gpt.py: tiny, small, medium, large, xl).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  set_model(c, 'gpt', size or 'tiny')  # family and size; every size field can be overridden
  c.model.scan_layers = False  # True: one compiled layer, compile time flat in depth (TPU, deep models)
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.objective.name = 'causal_lm'
  c.data.vocab_size = 2000 if c.model.size == 'tiny' else 32000
  c.train.steps = 300 if c.model.size == 'tiny' else 100_000
  c.train.batch_size = 16 if c.model.size == 'tiny' else 256
  c.train.seq_len = 128 if c.model.size == 'tiny' else 1024
  c.optimizer.learning_rate = 3e-3 if c.model.size == 'tiny' else 6e-4
  c.optimizer.warmup_steps = 30 if c.model.size == 'tiny' else 2000
  c.optimizer.weight_decay = 0.1
  # Beyond tiny, no dropout (as llm.c and nanoGPT reproduce GPT-2 on a large corpus): attention then runs in a
  # fused kernel (cudnn, splash), which does not drop attention weights.
  c.model.dropout_rate = 0.1 if c.model.size == 'tiny' else 0.0
  c.optimizer.b2 = 0.95
  return c

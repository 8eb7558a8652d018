"""T5 span corruption (noise density 0.15, mean span length 3, sentinels) on the default corpus.

  python train.py --config=configs/t5.py:tiny --workdir=workdir/t5
  python train.py --config=configs/t5.py:small --workdir=DIR --config.model.dtype=bfloat16

The argument picks the model size (zoo/models/encdec.py T5_SIZES: tiny, small, base, large).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  tiny = (size or 'tiny') == 'tiny'
  set_model(c, 't5', size or 'tiny')  # family and size; every size field can be overridden
  c.model.scan_layers = False  # True: one compiled layer per stack, compile time flat in depth
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.objective.name = 'span_corruption'
  c.objective.noise_density = 0.15  # fraction of tokens corrupted
  c.objective.mean_span_length = 3.0  # mean length of a corrupted span
  c.data.vocab_size = 2000 if tiny else 32000
  c.data.num_sentinels = 100
  c.train.steps = 300 if tiny else 524_288
  c.train.batch_size = 16 if tiny else 128
  c.train.seq_len = 128 if tiny else 512
  c.optimizer.learning_rate = 3e-3 if tiny else 1e-2
  c.optimizer.warmup_steps = 30 if tiny else 10_000
  c.optimizer.weight_decay = 0.0
  if not tiny:  # T5's: Adafactor at 1e-2 held for 10k steps, then 1/sqrt(step); no gradient clipping
    c.optimizer.name = 'adafactor'
    c.optimizer.decay = 'rsqrt_hold'
    c.optimizer.clip_norm = 0.0
  return c

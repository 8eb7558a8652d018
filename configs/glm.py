"""GLM autoregressive blank infilling: spans (Poisson(3) lengths, 15% of the tokens) become [MASK] in part A
and are generated, in random order, in part B, with 2-D positions; A is read bidirectionally, B causally.

  python train.py --config=configs/glm.py:tiny --workdir=workdir/glm
  python train.py --config=configs/glm.py:large --workdir=DIR --config.model.dtype=bfloat16

The argument picks the size (zoo/models/glm.py: tiny, base, large).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  tiny = (size or 'tiny') == 'tiny'
  set_model(c, 'glm', size or 'tiny')  # family and size; every size field can be overridden
  c.model.scan_layers = False  # True: one compiled layer, compile time flat in depth
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.objective.name = 'blank_infilling'
  c.objective.mask_ratio = 0.15  # fraction of tokens in spans
  c.objective.poisson_lambda = 3.0  # span lengths ~ Poisson(lambda), at least 1
  c.data.vocab_size = 2000 if tiny else 30592
  c.train.steps = 300 if tiny else 200_000
  c.train.batch_size = 16 if tiny else 1024
  c.train.seq_len = 128 if tiny else 512
  c.optimizer.learning_rate = 2e-3 if tiny else 4e-4
  c.optimizer.warmup_steps = 30 if tiny else 6000
  c.optimizer.weight_decay = 0.1
  return c

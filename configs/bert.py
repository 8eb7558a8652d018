"""BERT masked language modelling (15% of tokens; 80% [MASK], 10% random, 10% kept) on the default corpus.

  python train.py --config=configs/bert.py:tiny --workdir=workdir/bert
  python train.py --config=configs/bert.py:base --workdir=DIR --config.model.dtype=bfloat16 --config.mesh.fsdp=4

The argument picks the model size (zoo/models/bert.py: tiny, mini, small, medium, base, large).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  tiny = (size or 'tiny') == 'tiny'
  set_model(c, 'bert', size or 'tiny')  # family and size; every size field can be overridden
  c.model.scan_layers = False  # True: one compiled layer, compile time flat in depth
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.objective.name = 'mlm'
  c.objective.mask_rate = 0.15  # of the maskable tokens, chosen for prediction
  c.objective.mask_token_rate = 0.8  # of the chosen: [MASK]
  c.objective.random_token_rate = 0.1  # of the chosen: a random token (the rest stay unchanged)
  c.objective.masking = 'token'  # token, whole_word (BERT-wwm) or span (SpanBERT)
  c.objective.span_p = 0.2  # span masking: geometric parameter of span lengths, in words
  c.objective.span_max = 10  # span masking: longest span, in words
  c.objective.sbo = False  # SpanBERT's span boundary objective (needs masking='span'; configs/spanbert.py sets it)
  c.objective.dynamic = True  # a new mask each time a batch is drawn; False: one fixed mask per example
  c.data.vocab_size = 2000 if tiny else 30522
  c.train.steps = 300 if tiny else 1_000_000
  c.train.batch_size = 16 if tiny else 256
  c.train.seq_len = 128 if tiny else 512
  c.optimizer.learning_rate = 2e-3 if tiny else 1e-4
  c.optimizer.warmup_steps = 30 if tiny else 10_000
  c.optimizer.decay = 'linear'
  c.optimizer.end_lr_fraction = 0.0
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  return c

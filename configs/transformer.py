"""The Transformer of "Attention Is All You Need" (Vaswani et al. 2017), pretrained as a denoising autoencoder (the
objective of configs/bart.py: text infilling with sentence permutation) with the paper's training details: Adam
b1 0.9, b2 0.98, eps 1e-9, no weight decay or clipping, label smoothing 0.1 (the reported loss is the smoothed
one), dropout 0.1, and its schedule: linear warm-up to d_model^-0.5 * warmup^-0.5 at 4,000 steps (7.0e-4 at base,
4.9e-4 at big), then 1/sqrt(step) for ever. Fine-tune it on parallel text with configs/finetune.py:translation.

  python train.py --config=configs/transformer.py:tiny --workdir=workdir/transformer
  python train.py --config=configs/transformer.py:base --workdir=DIR --config.model.dtype=bfloat16

The argument picks the size (zoo/models/encdec.py TRANSFORMER_SIZES: tiny, base, big).
"""
from zoo import models
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  size = size or 'tiny'
  tiny = size == 'tiny'
  set_model(c, 'transformer', size)  # family and size; every size field can be overridden
  c.model.scan_layers = False  # True: one compiled layer per stack, compile time flat in depth
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.model.dropout_rate = 0.1  # residual dropout (zoo also drops attention probabilities and the ReLU's output)
  c.objective.name = 'denoising'
  c.objective.infill_rate = 0.3  # fraction of the words removed in spans, each span replaced by one [MASK]
  c.objective.poisson_lambda = 3.0  # mean span length of text infilling, in words
  c.objective.mask_random = 0.1  # of the masked spans: a random token instead of [MASK]
  c.objective.permute_rate = 1.0  # fraction of documents whose sentences are shuffled
  c.objective.label_smoothing = 0.1
  c.data.vocab_size = 2000 if tiny else 37000  # the paper's shared source / target byte-pair vocabulary
  c.train.steps = {'base': 100_000, 'big': 300_000}.get(size, 300)  # the paper's: 100k base, 300k big
  c.train.batch_size = 16 if tiny else 96  # x 256: ~25k source and ~25k target tokens a step, as the paper's
  c.train.seq_len = 128 if tiny else 256
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-9
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 0.0
  c.optimizer.decay = 'rsqrt'  # lr = peak * min(step / warmup, sqrt(warmup / step))
  c.optimizer.warmup_steps = 30 if tiny else 4000
  d_model = models.FAMILIES['transformer'].sizes[size]['embed_dim']
  # the paper's d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) tops out at d_model^-0.5 * warmup^-0.5; the tiny
  # size's (64^-0.5 * 30^-0.5 = 0.023) is too hot for its 300 steps
  c.optimizer.learning_rate = 2e-3 if tiny else d_model ** -0.5 * c.optimizer.warmup_steps ** -0.5
  return c

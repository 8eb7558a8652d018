"""BART denoising: the encoder reads a corrupted document, the decoder reconstructs it. Defaults are the
paper's best, as fairseq's BART recipe: text infilling (30% of the words, Poisson(3) spans of whole words, each
span one [MASK], 10% of them a random token instead) with sentence permutation; token masking, deletion, insertion
and document rotation have their own rates. Noise is applied in fairseq's order: permutation, masking, insertion,
rotation.

  python train.py --config=configs/bart.py:tiny --workdir=workdir/bart
  python train.py --config=configs/bart.py:base --workdir=DIR --config.model.dtype=bfloat16

The argument picks the size (zoo/models/encdec.py BART_SIZES: tiny, base, large).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  tiny = (size or 'tiny') == 'tiny'
  set_model(c, 'bart', size or 'tiny')  # family and size; every size field can be overridden
  c.model.scan_layers = False  # True: one compiled layer per stack, compile time flat in depth
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.objective.name = 'denoising'
  c.objective.infill_rate = 0.3  # fraction of the words removed in spans, each span replaced by one [MASK]
  c.objective.poisson_lambda = 3.0  # mean span length of text infilling, in words
  c.objective.mask_random = 0.1  # of the masked spans (and words, insertions): a random token instead of [MASK]
  c.objective.permute_rate = 1.0  # fraction of documents whose sentences are shuffled
  c.objective.rotate_rate = 0.0  # fraction of documents rotated to a random start
  c.objective.mask_rate = 0.0  # fraction of the words whose every piece becomes [MASK]
  c.objective.delete_rate = 0.0  # fraction of the words deleted
  c.objective.insert_rate = 0.0  # [MASK]s inserted, as a fraction of the tokens
  c.data.vocab_size = 2000 if tiny else 50265
  c.train.steps = 300 if tiny else 500_000
  c.train.batch_size = 16 if tiny else 256
  c.train.seq_len = 128 if tiny else 512
  c.optimizer.learning_rate = 2e-3 if tiny else 4e-4
  c.optimizer.warmup_steps = 30 if tiny else 10_000
  c.optimizer.decay = 'linear'
  c.optimizer.end_lr_fraction = 0.0
  return c

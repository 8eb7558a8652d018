"""ALBERT: factorized embeddings and shared layers, trained with MLM + sentence-order prediction (SOP: the
two pieces of a pair in order, or swapped); MLM masks n-grams of up to 3 whole words, p(n) ~ 1/n.

  python train.py --config=configs/albert.py:tiny --workdir=workdir/albert
  python train.py --config=configs/albert.py:base --workdir=DIR --config.model.dtype=bfloat16

The argument picks the size (zoo/models/albert.py: tiny, base, large, xlarge, xxlarge).
"""
from configs import bert
from zoo.config import set_model


def get_config(size: str = 'tiny'):
  c = bert.get_config(size if size in ('tiny', 'base', 'large') else 'large')
  for key in list(c.model.keys()):
    if key not in ('family', 'size', 'vocab_size', 'dtype', 'dropout_rate', 'remat'):
      del c.model[key]
  set_model(c, 'albert', size or 'tiny')  # family and size; every size field can be overridden
  c.model.dropout_rate = 0.0  # ALBERT v2
  c.model.remat = 'none'  # full, or a jax.checkpoint_policies name (dots_saveable): recompute in the backward pass
  c.model.attention = 'auto'  # xla, cudnn (GPU), splash (TPU), pallas (GPU): auto picks the fastest that fits
  c.objective.name = 'sop'
  c.objective.pair_task = 'sop'
  c.objective.positive_rate = 0.5  # pairs in order
  c.objective.masking = 'whole_word'  # n-grams of whole words ...
  c.objective.ngram_max = 3  # ... of n <= 3 words, p(n) ~ 1/n (ALBERT's n-gram masking)
  if (size or 'tiny') == 'tiny':
    c.optimizer.learning_rate = 2e-3
  else:  # the paper's: LAMB at 1.76e-3 (its batch is 4096: set train.batch_size=4096 to match it)
    c.optimizer.name = 'lamb'
    c.optimizer.learning_rate = 1.76e-3
    c.optimizer.weight_decay = 0.01
  return c

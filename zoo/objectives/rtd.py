"""ELECTRA's replaced-token detection (Clark et al. 2020), for the electra family (zoo.models.electra).

The example is MLM's (zoo.objectives.mlm: 15% of the maskable tokens chosen; ELECTRA's recipe makes 85% of
them [MASK] and keeps the rest, configs/electra.py), plus one uint32 seed per row (`sample_seeds`) for the
generator's Gumbel noise, drawn with the step's generator (a resumed run samples the same tokens). The model's
generator fills the masked positions with samples from its softmax and its discriminator tells, for every real
token, whether it was replaced. Loss terms:

  mlm           the generator's MLM cross-entropy over the masked positions (weight 1);
  rtd           the discriminator's binary cross-entropy over every real token (segment_ids > 0, special tokens
                included, as ELECTRA's input_mask), its loss sum scaled by rtd_weight = 50 (ELECTRA's disc_weight):
                `rtd_loss` is 50 x the mean BCE (chance: 50 ln 2 = 34.7); `rtd_accuracy` the discriminator's;
  rtd_baseline  no loss (0): its accuracy is the always-"original" guess's, 1 - the fraction of real tokens
                replaced: the number `rtd_accuracy` must beat.

A position is labelled replaced only where the sample differs from the original token (`labels`); a sample that
equals it counts as original, as in ELECTRA.

>>> labels(np.array([[5, 7, 0]]), np.array([[1, 3, 0]]), np.array([[5, 8, 0]]), np.array([[1., 1., 0.]]), 5)
array([[0, 0, 0, 1, 0]], dtype=int32)
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from zoo.objectives.base import Batch, cross_entropy
from zoo.objectives.mlm import Mlm


def labels(sampled, positions, originals, weights, length: int, xp=np):
  """[B, length] int32: 1 where a masked position's sample differs from its original token, 0 elsewhere.

  sampled, positions, originals, weights: [B, P] per prediction slot (weights 0: an empty slot, ignored). xp: numpy
  or jax.numpy."""
  b = sampled.shape[0]
  replaced = ((sampled != originals) & (weights > 0)).astype(xp.int32)
  where = xp.where(weights > 0, positions, length)  # empty slots point past the row
  if xp is np:
    out = np.zeros((b, length + 1), np.int32)
    np.put_along_axis(out, where, replaced, axis=1)  # real slots are distinct positions
    return out[:, :length]
  return xp.zeros((b, length), xp.int32).at[xp.arange(b)[:, None], where].set(replaced, mode='drop')


@dataclasses.dataclass
class Rtd(Mlm):
  mask_token_rate: float = 0.85  # ELECTRA's pretrain_helpers.mask: 85% [MASK], the rest kept, none random
  random_token_rate: float = 0.0
  rtd_weight: float = 50.0  # the discriminator's loss weight (ELECTRA's disc_weight)

  name = 'rtd'
  families = ('electra',)  # a generator and a discriminator: zoo.models.electra

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    if self.sbo:
      raise ValueError('objective.sbo=True: ELECTRA (objective.name=rtd) has no span boundary objective; set '
                       'objective.sbo=False')
    out = super().example(batch, rng)
    out['sample_seeds'] = rng.integers(0, 2 ** 32, size=batch['tokens'].shape[0], dtype=np.uint32)
    return out

  def inputs(self, example):
    return {'tokens': example['tokens'], 'segment_ids': example['segment_ids'], 'positions': example['positions'],
            'mlm_positions': example['mlm_positions'], 'mlm_weights': example['mlm_weights'],
            'sample_seeds': example['sample_seeds']}

  def terms(self, outputs, example):
    target = labels(outputs['sampled'], example['mlm_positions'], example['mlm_labels'], example['mlm_weights'],
                    example['tokens'].shape[1], xp=jnp)
    real = (example['segment_ids'] > 0).astype(jnp.float32)
    logits = outputs['rtd_logits']
    bce = optax.sigmoid_binary_cross_entropy(logits, target.astype(jnp.float32))
    correct = ((logits > 0).astype(jnp.int32) == target).astype(jnp.float32)
    return {'mlm': cross_entropy(outputs['mlm_logits'], example['mlm_labels'], example['mlm_weights'],
                                 self.label_smoothing),
            'rtd': (self.rtd_weight * jnp.sum(bce * real), jnp.sum(correct * real)),
            'rtd_baseline': (jnp.zeros((), jnp.float32), jnp.sum((1 - target) * real))}

  def counts(self, example):
    real = (example['segment_ids'] > 0).astype(np.float32).sum()
    return {'mlm': example['mlm_weights'].sum(), 'rtd': real, 'rtd_baseline': real}

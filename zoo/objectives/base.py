"""The interface every objective implements, and the cross-entropy they share.

An objective turns a batch from the input pipeline (int32 numpy arrays `tokens`, `segment_ids`,
`positions` [B, T]) into a training example on the host (`example`, seeded per step, so a resumed run
draws the same masks), says which arrays the model takes (`inputs`), and scores the model's output
(`terms`: per loss term, the summed loss and the number of predictions that are correct; `counts`: per term,
how many predictions there are). The trainer divides the sums by the counts of the *global* batch, so the
loss does not depend on how the batch is split over devices or micro-batches.

Label smoothing is an option of every objective and task (`objective.label_smoothing`, or a task's
`task.fields.label_smoothing`; default 0): each `terms` passes its rate to `cross_entropy`. The loss it reports,
train and eval, is then the smoothed one, as t5x's `loss` is.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers import losses

Batch = dict[str, np.ndarray]


def cross_entropy(logits, labels, weights, label_smoothing: float = 0.0):
  """Summed token cross-entropy and number of correct argmax predictions, both weighted.

  logits [..., V] (float32), or a model's `zoo.layers.losses.Features` (hidden states and output projection:
  the loss is then computed chunk by chunk, never holding [B, T, V] float32); labels [...] int, weights [...]
  (0 or 1). Returns (loss_sum, correct_sum). `label_smoothing` smooths the targets as `optax.smooth_labels`
  does, over the V classes of the logits (the model's vocab_size, padding included): see zoo.layers.losses. Not
  for logits masked with -inf (their mean is).
  """
  a = float(label_smoothing)
  if isinstance(logits, losses.Features):
    return logits.cross_entropy(labels, weights, label_smoothing=a)
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if a:
    nll = (1.0 - a) * nll - a * jnp.mean(logp, axis=-1)
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


@dataclasses.dataclass
class Objective:
  """Base class: subclasses fill in example / inputs / terms / counts."""
  vocab_size: int  # the tokenizer's: random replacement tokens are drawn below it
  num_special: int  # ids [0, num_special) are special tokens and sentinels: never masked or corrupted
  label_smoothing: float = 0.0  # every cross-entropy of `terms` smooths its targets by this (0.1: the Transformer)
  specials: Any = None  # zoo.data.specials.Specials of the tokenizer (None: zoo's ids below num_special)

  name = 'objective'
  perplexity = False  # report exp(loss): true for language-model losses
  needs_sentences = False  # the batch must carry sentence_ids (the pipeline's sentences=True)
  kinds = ()  # the kinds of model family this trains (zoo.models.KINDS; empty: any)
  recurrent = True  # whether it trains the recurrent families of those kinds
  families = ()  # the only families it trains (empty: every family of its kinds)
  lean_loss = False  # the model returns Features (logits=False) and `terms` takes them: a chunked loss
  any_tokenizer = False  # trains with a HuggingFace tokenizer's special ids too (else zoo's tokenizer only)
  needs_tokens: tuple = ()  # special tokens it puts into rows (zoo.data.specials names): refused without them

  @property
  def ids(self):
    """The tokenizer's special ids (`zoo.data.specials.Specials`)."""
    if self.specials is None:
      from zoo.data import specials
      self.specials = specials.zoo_specials(self.vocab_size, max(0, self.num_special - len(specials.NAMES)))
    return self.specials

  def example(self, batch: Batch, rng: np.random.Generator) -> Batch:
    raise NotImplementedError

  def inputs(self, example) -> dict[str, Any]:
    """The model's keyword arguments."""
    raise NotImplementedError

  def terms(self, outputs, example) -> dict[str, tuple[jax.Array, jax.Array]]:
    """term name -> (loss sum, correct sum)."""
    raise NotImplementedError

  def counts(self, example) -> dict[str, jax.Array]:
    """term name -> number of predictions (the loss's denominator)."""
    raise NotImplementedError

  def predict(self, outputs, example) -> dict[str, jax.Array]:
    """Per-row predictions that evaluation keeps (a task's metric needs them); none for pretraining."""
    del outputs, example
    return {}

  def input_length(self, seq_len: int) -> int:
    """Tokens of text a row of seq_len may hold: the pipeline packs rows to this and pads them to seq_len. Less
    than seq_len for an objective that adds tokens to the row (GLM's part B), so that none of the text is cut."""
    return seq_len

  def model_fields(self) -> dict[str, Any]:
    """Model fields this objective needs set (a task's head); none for pretraining."""
    return {}

  def dummy_batch(self, batch_size: int, seq_len: int) -> Batch:
    """A well-formed batch of the right shapes, for shape inference and compilation (rows as the pipeline
    delivers them: `input_length(seq_len)` tokens, then padding)."""
    ids = np.full((batch_size, seq_len), self.num_special, np.int32)
    seg = (np.arange(seq_len) < self.input_length(seq_len)).astype(np.int32)[None].repeat(batch_size, 0)
    return {'tokens': ids * seg, 'segment_ids': seg, 'positions': np.arange(seq_len, dtype=np.int32) * seg}


@dataclasses.dataclass
class TargetObjective(Objective):
  """An objective scored by token cross-entropy on example['targets'] where example['weights'] is 1."""
  perplexity = True
  lean_loss = True

  def terms(self, outputs, example):
    return {'lm': cross_entropy(outputs, example['targets'], example['weights'], self.label_smoothing)}

  def counts(self, example):
    return {'lm': example['weights'].sum()}


@dataclasses.dataclass
class Seq2SeqObjective(TargetObjective):
  """An encoder-decoder objective: the encoder reads example['tokens'], the decoder example['decoder_tokens']."""

  def inputs(self, example):
    return {'tokens': example['tokens'], 'decoder_tokens': example['decoder_tokens']}

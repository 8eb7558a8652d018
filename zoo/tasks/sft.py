"""Supervised fine-tuning on (context, target) pairs, with the loss over the target tokens only.

Decoder-only models (GPT, the RNN LMs) read context + target + [EOS] as one sequence and learn the tokens after
the context; GLM reads the context bidirectionally (its part A) and the target causally. Encoder-decoders (T5,
BART) encode the context and decode the target from the start token they were pretrained with.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data import tokenizer as tk
from zoo.objectives.base import cross_entropy
from zoo.tasks.base import Task, column


@dataclasses.dataclass
class Sft(Task):
  """Columns: input_field (the context / prompt) and target_field (what the model learns to continue with)."""
  input_field: str = 'input'
  target_field: str = 'target'
  encoder_decoder: bool = False
  glm: bool = False
  decoder_start: int = tk.BOS  # encoder-decoders: [BOS] (BART's denoising) or [PAD] (T5's span corruption)

  name = 'sft'
  perplexity = True
  kinds = ('decoder', 'encoder_decoder', 'blank_infilling')
  term_names = ('lm',)

  def featurize(self, records, tokenizer, where):
    n, t = len(records), self.seq_len
    keys = ['tokens', 'targets', 'weights', 'segment_ids']
    keys += ['decoder_tokens'] if self.encoder_decoder else (['context_length'] if self.glm else [])
    arrays = {k: np.zeros((n, t), np.float32 if k == 'weights' else np.int32) for k in keys}
    if self.glm:
      arrays['context_length'] = np.zeros((n,), np.int32)
    host = []
    for row, r in enumerate(records):
      context = tokenizer.encode(str(column(r, self.input_field, 'task.input_field', where)))
      target = tokenizer.encode(str(column(r, self.target_field, 'task.target_field', where))) + [tk.EOS]
      host.append(target)
      if self.encoder_decoder:
        src, tgt = context[:t], target[:t]
        arrays['tokens'][row, :len(src)] = src
        arrays['segment_ids'][row, :len(src)] = 1
        arrays['decoder_tokens'][row, :len(tgt)] = [self.decoder_start] + tgt[:-1]
        arrays['targets'][row, :len(tgt)] = tgt
        arrays['weights'][row, :len(tgt)] = 1.0
        continue
      target = target[:t - 1]
      context = context[max(0, len(context) - (t - len(target))):]  # keep the context's end
      ids = context + target
      arrays['tokens'][row, :len(ids)] = ids
      arrays['segment_ids'][row, :len(ids)] = 1
      arrays['targets'][row, :len(ids) - 1] = ids[1:]
      arrays['weights'][row, max(len(context) - 1, 0):len(ids) - 1] = 1.0  # positions that predict the target
      if self.glm:
        arrays['context_length'][row] = len(context)
    return arrays, host

  def inputs(self, example):
    if self.encoder_decoder:
      return {'tokens': example['tokens'], 'decoder_tokens': example['decoder_tokens']}
    if self.glm:
      return {'tokens': example['tokens'], 'segment_ids': example['segment_ids'],
              'context_length': example['context_length']}
    return {'tokens': example['tokens'], 'segment_ids': example['segment_ids']}

  def terms(self, outputs, example):
    return {'lm': cross_entropy(outputs, example['targets'], example['weights'], self.label_smoothing)}

  def predict(self, outputs, example):
    return {'next': outputs.argmax(-1)}

  def score(self, predictions, arrays, host):
    """Teacher-forced: the share of target tokens predicted right, and of targets predicted entirely right."""
    w = arrays['weights'] > 0
    right = (predictions['next'] == arrays['targets']) | ~w
    return {'token_accuracy': float((right & w).sum() / max(w.sum(), 1)),
            'sequence_accuracy': float(right.all(-1).mean()) if len(w) else 0.0, 'examples': len(host)}

"""Supervised fine-tuning on (context, target) pairs, with the loss over the target tokens only, laid out as the
family's train/inference contract says (`zoo.contract`): what generation, few-shot scoring and evaluation ask of
the model is what it is trained on here.

Decoder-only models (GPT, the RNN LMs) read context + target + [EOS] as one sequence and learn the tokens after
the context; encoder-decoders (T5, BART, the RNN encoder-decoder, the Transformer) encode context + [EOS] and
decode the target from the start token they were pretrained with; GLM reads context + [MASK] bidirectionally
(its part A) and fills the blank after [sop], ending with [eop], as in its pretraining.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from zoo import contract as contract_lib
from zoo.objectives.base import cross_entropy
from zoo.tasks.base import Task, column

_GLM_KEYS = ('positions', 'block_positions')


@dataclasses.dataclass
class Sft(Task):
  """Columns: input_field (the context / prompt) and target_field (what the model learns to answer with).
  `contract` is the family's (set by the trainer from model.family and the pretraining objective)."""
  input_field: str = 'input'
  target_field: str = 'target'
  contract: contract_lib.Contract = contract_lib.of('gpt')

  name = 'sft'
  perplexity = True
  any_tokenizer = True
  kinds = ('decoder', 'encoder_decoder', 'blank_infilling')
  term_names = ('lm',)

  def featurize(self, records, tokenizer, where):
    n, t, c = len(records), self.seq_len, self.contract
    keys = ['tokens', 'targets', 'weights', 'segment_ids']
    keys += ['decoder_tokens'] if c.encoder_decoder else (list(_GLM_KEYS) if c.blank_infilling else [])
    arrays = {k: np.zeros((n, t), np.float32 if k == 'weights' else np.int32) for k in keys}
    if c.blank_infilling:
      arrays['context_length'] = np.zeros((n,), np.int32)
    host = []
    hf = hasattr(tokenizer, 'all_special_ids')  # a HuggingFace tokenizer: its texts framed as transformers frames them
    for row, r in enumerate(records):
      context = str(column(r, self.input_field, 'task.input_field', where))
      target = str(column(r, self.target_field, 'task.target_field', where))
      if hf:  # the context as zoo.generate encodes a prompt; the target without its end (the contract closes it)
        context = tokenizer.encode(context, add_special_tokens=True)
        target = tokenizer.encode(target, add_special_tokens=c.encoder_decoder)
        target = target[:-1] if target and target[-1] == c.stop_id else target
      else:
        context, target = tokenizer.encode(context), tokenizer.encode(target)
      p = contract_lib.pair(c, context, target, t)
      host.append(target + [c.stop_id])
      arrays['tokens'][row, :len(p['tokens'])] = p['tokens']
      arrays['segment_ids'][row, :len(p['tokens'])] = 1
      lengths = len(p['targets'])
      arrays['targets'][row, :lengths] = p['targets']
      arrays['weights'][row, :lengths] = p['weights']
      if c.encoder_decoder:
        arrays['decoder_tokens'][row, :lengths] = p['decoder_tokens']
      if c.blank_infilling:
        for k in _GLM_KEYS:
          arrays[k][row, :lengths] = p[k]
        arrays['context_length'][row] = p['context_length']
    return arrays, host

  def inputs(self, example):
    if self.contract.encoder_decoder:
      return {'tokens': example['tokens'], 'decoder_tokens': example['decoder_tokens']}
    keys = ('tokens', 'segment_ids') + ((*_GLM_KEYS, 'context_length') if self.contract.blank_infilling else ())
    return {k: example[k] for k in keys}

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

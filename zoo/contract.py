"""The train/inference contract of the families that generate: how a (context, target) pair is laid out for
fine-tuning, and how a prompt is laid out for decoding and scoring. Supervised fine-tuning (`zoo.tasks.sft`),
evaluation, few-shot scoring (`zoo.fewshot`) and generation (`zoo.generate`) all read it here, so a model is asked
at inference exactly what it was trained on.

  decoder (GPT, the RNN LMs)      tokens   context target [EOS]                 loss on target [EOS]
                                  decoding continues the context until [EOS]
  encoder-decoder (T5, BART,      source   context [EOS]
  the RNN encoder-decoder,        decoder  [start] target                       loss on target [EOS]
  the Transformer)                decoding starts at [start], stops at [EOS]; [start] is [PAD] after T5's span
                                  corruption (as T5 does), else [BOS] (BART's denoising)
  blank infilling (GLM)           part A   context [MASK]                       positions 0 .. len(A)-1, block 0
                                  part B   [sop] target                         at the [MASK]'s position, block 1 2 ..
                                  loss on target [eop]; decoding fills the [MASK] after [sop] until [eop]

>>> c = of('glm')
>>> p = pair(c, [11, 12], [13, 14], seq_len=8)
>>> p['tokens'], p['targets'], p['positions'], p['block_positions'], p['context_length']
([11, 12, 6, 7, 13, 14], [0, 0, 0, 13, 14, 8], [0, 1, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3], 3)
>>> pair(of('gpt'), [11, 12], [13], seq_len=8)['weights']  # 12 predicts 13, 13 predicts [EOS]
[0.0, 1.0, 1.0, 0.0]
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from zoo import models
from zoo.data import tokenizer as tk


@dataclasses.dataclass(frozen=True)
class Contract:
  """kind: the family's kind (zoo.models.KINDS); start_id: the decoder's first token (encoder-decoders) or the
  token that opens a span (GLM's [sop]); stop_id: where generation ends and what a target is closed by."""
  kind: str
  start_id: int
  stop_id: int

  @property
  def encoder_decoder(self) -> bool:
    return self.kind == models.ENCODER_DECODER

  @property
  def blank_infilling(self) -> bool:
    return self.kind == models.BLANK_INFILLING


def of(family: str, pretrained_objective: str = '', ids=None) -> Contract:
  """The contract of a family, for a model pretrained with `pretrained_objective` (T5's span corruption starts
  the decoder at [PAD]); with `ids` (zoo.data.specials.Specials) of a HuggingFace tokenizer, its own start and
  stop (its decoder_start_token_id and eos, as transformers generates).

  >>> of('t5', 'span_corruption').start_id == tk.PAD, of('bart', 'denoising').start_id == tk.BOS
  (True, True)
  """
  kind = models.kind(family)
  if ids is not None and ids.source != 'zoo':
    if kind == models.BLANK_INFILLING:
      raise ValueError(f"model.family={family!r}: GLM's blank infilling has zoo's own [sop] / [eop]; it trains "
                       f"with zoo's tokenizer only")
    stop = ids.need('eos', f'fine-tuning model.family={family!r} (what ends a target)')
    return Contract(kind, ids.decoder_start if kind == models.ENCODER_DECODER else stop, stop)
  if kind == models.BLANK_INFILLING:
    return Contract(kind, tk.SOP, tk.EOP)
  if kind == models.ENCODER_DECODER:
    return Contract(kind, tk.PAD if pretrained_objective == 'span_corruption' else tk.BOS, tk.EOS)
  return Contract(kind, tk.BOS, tk.EOS)


def for_config(config, ids=None) -> Contract:
  """The contract of a run's config: its model family, and the objective it was pretrained with (the task's
  `pretrained_objective` when fine-tuning, else its own); `ids`: the special ids of its tokenizer."""
  task = config.get('task', {}) or {}
  if task.get('name', ''):  # fine-tuned: what the task was trained with (zoo.finetune.make_task)
    return of(config.model.family, task.get('pretrained_objective', ''), ids)
  return of(config.model.family, (config.get('objective', {}) or {}).get('name', ''), ids)


def source(context: Sequence[int], seq_len: int | None = None, eos: int = tk.EOS) -> list[int]:
  """An encoder-decoder's source: the context (its start, when longer than seq_len - 1) closed by [EOS] (`eos`:
  the tokenizer's)."""
  context = list(context)
  if context and context[-1] == eos and eos != tk.EOS:  # a HuggingFace tokenizer closed it already (T5, BART)
    context = context[:-1]
  if seq_len is not None:
    context = context[:seq_len - 1]
  return context + [eos]


def glm_prompt(before: Sequence[int], after: Sequence[int] = ()) -> tuple[list[int], int]:
  """GLM's part A for a blank between two texts: (ids, index of the [MASK])."""
  return [*before, tk.MASK, *after], len(before)


def pair(contract: Contract, context: Sequence[int], target: Sequence[int], seq_len: int,
         close: bool = True) -> dict:
  """One (context, target) pair laid out for training or scoring, as lists no longer than seq_len: tokens,
  targets and weights (1 where the target is predicted), and per kind decoder_tokens (encoder-decoders),
  positions, block_positions and context_length (GLM). close=False leaves out the stop token (scoring a choice).

  A long pair keeps its target (up to seq_len - 2 tokens) and the end of its context (the start of an
  encoder-decoder's source, which has its own seq_len).
  """
  context, target = list(context), list(target) + ([contract.stop_id] if close else [])
  if contract.encoder_decoder:
    tgt = target[:seq_len]
    return {'tokens': source(context, seq_len, contract.stop_id), 'decoder_tokens': [contract.start_id] + tgt[:-1],
            'targets': tgt, 'weights': [1.0] * len(tgt)}
  if contract.blank_infilling:  # A = context [MASK] (n_a), B = [sop] target[:-1] (predicting target)
    tgt = target[:max(seq_len - 2, 1)]
    context = context[max(0, len(context) - (seq_len - 1 - len(tgt))):]
    a, mask_at = glm_prompt(context)
    n_a = len(a)
    return {'tokens': a + [contract.start_id] + tgt[:-1], 'targets': [0] * n_a + tgt,
            'weights': [0.0] * n_a + [1.0] * len(tgt), 'positions': list(range(n_a)) + [mask_at] * len(tgt),
            'block_positions': [0] * n_a + list(range(1, len(tgt) + 1)), 'context_length': n_a}
  tgt = target[:seq_len - 1]
  context = context[max(0, len(context) - (seq_len - len(tgt))):]  # keep the context's end
  ids = context + tgt
  first = max(len(context) - 1, 0)  # the position that predicts the target's first token
  return {'tokens': ids, 'targets': ids[1:] + [0],
          'weights': [0.0] * first + [1.0] * (len(ids) - 1 - first) + [0.0]}

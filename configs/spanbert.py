"""SpanBERT (Joshi et al. 2020): configs/bert.py with span masking and the span boundary objective (SBO).

Span masking: contiguous spans of whole words whose lengths follow a geometric distribution (p = 0.2) truncated at
10 words by resampling (mean 3.8 words), until 15% of the tokens are chosen; each span is all [MASK], all random
tokens or all kept (80/10/10 per span). SBO: each token of a masked span is also predicted from the encoder outputs
of the two tokens just outside the span and a relative position embedding (a 2-layer GeLU + LayerNorm head, scored
by the MLM head's tied output projection); the loss is MLM + SBO (metrics mlm_* and sbo_*). Like SpanBERT, no NSP.

  python train.py --config=configs/spanbert.py:tiny --workdir=workdir/spanbert
"""
from configs import bert


def get_config(size: str = 'tiny'):
  c = bert.get_config(size)
  c.objective.masking = 'span'
  c.objective.span_p = 0.2  # geometric parameter of span lengths, in words
  c.objective.span_max = 10  # longest span, in words: a longer draw is drawn again
  c.objective.sbo = True  # span boundary objective: a second loss term, 'sbo'
  return c

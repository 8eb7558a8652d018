"""SpanBERT's span masking (Joshi et al. 2020): configs/bert.py, masking contiguous spans of whole words whose
lengths follow a geometric distribution (p = 0.2) truncated at 10 words by resampling (mean 3.8 words), until 15%
of the tokens are chosen; each span is all [MASK], all random tokens or all kept (80/10/10 per span). Without
SpanBERT's span boundary objective (SBO).

  python train.py --config=configs/spanbert.py:tiny --workdir=workdir/spanbert
"""
from configs import bert


def get_config(size: str = 'tiny'):
  c = bert.get_config(size)
  c.objective.masking = 'span'
  c.objective.span_p = 0.2  # geometric parameter of span lengths, in words
  c.objective.span_max = 10  # longest span, in words: a longer draw is drawn again
  return c

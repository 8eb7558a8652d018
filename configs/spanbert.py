"""SpanBERT-style span masking: configs/bert.py, masking contiguous spans of whole words whose lengths follow a
geometric distribution (p = 0.2) clipped at 10 words, until 15% of the tokens are chosen.

  python train.py --config=configs/spanbert.py:tiny --workdir=workdir/spanbert
"""
from configs import bert


def get_config(size: str = 'tiny'):
  c = bert.get_config(size)
  c.objective.masking = 'span'
  return c

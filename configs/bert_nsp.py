"""BERT pretraining as published: MLM + next-sentence prediction on "[CLS] A [SEP] B [SEP]" pairs cut at
sentence boundaries; B follows A half of the time and comes from another document (by document id, even when a
document spans packed rows) otherwise.

  python train.py --config=configs/bert_nsp.py:tiny --workdir=workdir/bert_nsp
"""
from configs import bert


def get_config(size: str = 'tiny'):
  c = bert.get_config(size)
  c.objective.name = 'nsp'
  c.objective.pair_task = 'nsp'  # nsp: B from another document; sop: A and B swapped
  c.objective.positive_rate = 0.5  # pairs in order
  c.objective.earlier = 64  # document pieces kept from earlier batches, for a batch that holds one document
  return c

"""BERT with whole-word masking (BERT-wwm): configs/bert.py, masking every piece of a chosen word.

  python train.py --config=configs/bert_wwm.py:tiny --workdir=workdir/bert_wwm

Words are a '▁'-initial SentencePiece piece and the pieces that follow it. (Chinese text has no spaces: for
Chinese BERT-wwm, segment words upstream so that they carry word boundaries.)
"""
from configs import bert


def get_config(size: str = 'tiny'):
  c = bert.get_config(size)
  c.objective.masking = 'whole_word'
  return c

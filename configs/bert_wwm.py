"""BERT with whole-word masking (BERT-wwm): configs/bert.py, masking every piece of a chosen word.

  python train.py --config=configs/bert_wwm.py:tiny --workdir=workdir/bert_wwm

Words are a '▁'-initial SentencePiece piece and the pieces that follow it. Chinese has no spaces between
words: as Chinese BERT-wwm does, a word segmenter gives the words (pip install -e '.[zh]'):

  python train.py --config=configs/bert_wwm.py:tiny --workdir=DIR --config.data.source='text:zh/*.txt' \
      --config.data.word_segmenter=jieba
"""
from configs import bert


def get_config(size: str = 'tiny'):
  c = bert.get_config(size)
  c.objective.masking = 'whole_word'
  c.data.word_segmenter = ''  # 'jieba' for Chinese text
  return c

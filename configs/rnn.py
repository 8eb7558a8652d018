"""Elman RNN language model (causal LM) on the default corpus: configs/lstm.py with cell='rnn'.

  python train.py --config=configs/rnn.py:tiny --workdir=workdir/rnn

The argument picks the size (zoo/models/rnn.py LM_SIZES: tiny, small, medium, large).
"""
from configs import lstm


def get_config(size: str = 'tiny'):
  return lstm.get_config(size, cell='rnn')

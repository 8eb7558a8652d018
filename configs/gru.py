"""GRU (full form, with a reset gate) language model (causal LM) on the default corpus: configs/lstm.py with cell='gru'.

  python train.py --config=configs/gru.py:tiny --workdir=workdir/gru

The argument picks the size (zoo/models/rnn.py LM_SIZES: tiny, small, medium, large).
"""
from configs import lstm


def get_config(size: str = 'tiny'):
  return lstm.get_config(size, cell='gru')

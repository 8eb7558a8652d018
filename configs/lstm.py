"""LSTM language model (causal LM) on the default corpus: the packed rows are read as one stream.
configs/gru.py and configs/rnn.py are this recipe with another cell.

  python train.py --config=configs/lstm.py:tiny --workdir=workdir/lstm
  python train.py --config=configs/lstm.py:medium --workdir=DIR  # Zaremba et al.'s 2 x 650

The argument picks the size (zoo/models/rnn.py LM_SIZES: tiny, small, medium, large).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny', cell: str = 'lstm'):
  c = base_config()
  tiny = (size or 'tiny') == 'tiny'
  set_model(c, 'rnn_lm', size or 'tiny')  # family and size; every size field can be overridden
  c.model.cell = cell  # rnn (Elman), gru (full form, with a reset gate) or lstm
  c.model.dropout_rate = 0.0 if tiny else 0.5
  c.objective.name = 'causal_lm'
  c.data.vocab_size = 2000 if tiny else 10000
  c.train.steps = 300 if tiny else 40_000
  c.train.batch_size = 16 if tiny else 20
  c.train.seq_len = 64 if tiny else 35
  c.optimizer.learning_rate = 1e-2 if tiny else 1e-3
  c.optimizer.warmup_steps = 20 if tiny else 500
  c.optimizer.clip_norm = 5.0  # RNNs need their gradients clipped
  c.optimizer.weight_decay = 0.0
  return c

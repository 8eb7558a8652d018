"""An RNN encoder-decoder with attention, trained with teacher forcing to reconstruct text from a corrupted
copy (tokens masked, deleted and sentences shuffled: the denoising objective at gentler rates).

  python train.py --config=configs/rnn_seq2seq.py:tiny --workdir=workdir/rnn_seq2seq
  python train.py --config=configs/rnn_seq2seq.py:tiny --workdir=DIR --config.model.attention=additive

The argument picks the size (zoo/models/rnn.py SEQ2SEQ_SIZES: tiny, small, base, large).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  c = base_config()
  tiny = (size or 'tiny') == 'tiny'
  set_model(c, 'rnn_seq2seq', size or 'tiny')  # family and size; every size field can be overridden
  c.model.cell = 'lstm'  # rnn, gru or lstm
  c.model.attention = 'dot'  # dot (Luong) or additive (Bahdanau)
  c.model.bidirectional = True  # a bidirectional encoder
  c.model.dropout_rate = 0.0 if tiny else 0.2
  c.objective.name = 'denoising'
  c.objective.mask_rate = 0.1  # fraction of the words whose every piece becomes [MASK]
  c.objective.delete_rate = 0.1  # fraction of the words deleted
  c.objective.infill_rate = 0.0  # text infilling off
  c.objective.poisson_lambda = 3.0
  c.objective.permute_rate = 0.0  # sentence permutation off
  c.objective.rotate_rate = 0.0
  c.data.vocab_size = 2000 if tiny else 16000
  c.data.packing = 'pad'  # one document piece per example
  c.train.steps = 300 if tiny else 50_000
  c.train.batch_size = 16 if tiny else 64
  c.train.seq_len = 32 if tiny else 64
  c.optimizer.learning_rate = 5e-3 if tiny else 1e-3
  c.optimizer.warmup_steps = 20 if tiny else 1000
  c.optimizer.clip_norm = 5.0
  c.optimizer.weight_decay = 0.0
  return c

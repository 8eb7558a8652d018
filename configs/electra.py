"""ELECTRA (Clark et al. 2020): a small MLM generator and a discriminator pretrained jointly on replaced-token
detection; loss = MLM (generator) + 50 x RTD (discriminator, binary, over every real token). Metrics: mlm_loss /
mlm_accuracy (generator), rtd_loss (50 x the BCE) / rtd_accuracy (discriminator), rtd_baseline_accuracy (the
always-"original" guess: rtd_accuracy must beat it).

  python train.py --config=configs/electra.py:tiny --workdir=workdir/electra
  python train.py --config=configs/electra.py:small --workdir=DIR --config.model.dtype=bfloat16

Sizes (zoo/models/electra.py): tiny, small (discriminator 14M, generator 1/4 wide), base (110M, generator 1/3).
Fine-tune the discriminator with configs/finetune.py (task.init_from=DIR): the task heads sit on it.
Hyperparameters: ELECTRA's configure_pretraining.py (mask_prob 0.15, 85% [MASK] and 15% kept, disc_weight 50,
lr 5e-4 small / 2e-4 base, batch 128 small / 256 base, warm-up 10k, linear decay, weight decay 0.01).
"""
from zoo.config import base_config, set_model


def get_config(size: str = 'tiny'):
  size = size or 'tiny'
  tiny = size == 'tiny'
  c = base_config()
  set_model(c, 'electra', size)  # discriminator and generator sizes; every field can be overridden
  c.model.scan_layers = False  # True: one compiled layer per network, compile time flat in depth
  c.model.remat = 'none'
  c.model.attention = 'auto'
  c.objective.name = 'rtd'
  c.objective.mask_rate = 0.15  # of the maskable tokens, given to the generator to fill
  c.objective.mask_token_rate = 0.85  # of those: [MASK] (ELECTRA: the rest stay, none random)
  c.objective.random_token_rate = 0.0
  c.objective.masking = 'token'  # token or whole_word
  c.objective.dynamic = True
  c.objective.rtd_weight = 50.0  # the discriminator's loss weight
  # The generator samples from softmax(logits / temperature): ELECTRA's 1.0. tiny uses 2.0: in 300 steps a tiny
  # generator is about as good as a tiny discriminator can get, and at 1.0 the discriminator stays at the always-
  # "original" guess (rtd_accuracy = rtd_baseline_accuracy); hotter samples are easier to detect.
  c.model.temperature = 2.0 if tiny else 1.0
  c.data.vocab_size = 2000 if tiny else 30522
  c.train.steps = 300 if tiny else 1_000_000
  c.train.batch_size = 16 if tiny else (128 if size == 'small' else 256)
  c.train.seq_len = 128 if tiny else 512
  c.optimizer.learning_rate = 2e-3 if tiny else (5e-4 if size == 'small' else 2e-4)
  c.optimizer.warmup_steps = 30 if tiny else 10_000
  c.optimizer.decay = 'linear'
  c.optimizer.end_lr_fraction = 0.0
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  return c

"""Pretrain (or evaluate) any zoo recipe.

  python train.py --config=configs/gpt.py:tiny --workdir=workdir/gpt [--config.train.steps=500 ...]
  python train.py --config=configs/gpt.py:tiny --workdir=workdir/gpt --mode=eval

Rerunning a command with the same workdir resumes from its newest checkpoint. --mode=eval restores it onto
the devices present (another mesh shape, or one CPU) and writes workdir/eval.json.
"""
import logging

from absl import app, flags
from ml_collections import config_flags

from zoo.train import train_and_evaluate

config_flags.DEFINE_config_file('config', None, 'a recipe: configs/<name>.py[:<size>]', lock_config=True)
flags.DEFINE_string('workdir', None, 'directory for checkpoints, logs, the tokenizer and eval.json')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (then evaluate) or evaluate the newest checkpoint')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger('zoo').setLevel(logging.INFO)
  train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.mode)


if __name__ == '__main__':
  app.run(main)

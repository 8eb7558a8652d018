"""Pretrain (or evaluate) any zoo recipe.

  python train.py --config=configs/gpt.py:tiny --workdir=workdir/gpt [--config.train.steps=500 ...]
  python train.py --workdir=workdir/gpt --mode=eval

Rerunning a command with the same workdir resumes from its newest checkpoint. --mode=eval restores it onto
the devices present (another mesh shape, or one CPU) and writes workdir/eval.json; without --config it evaluates
with the workdir's config.json, and a --config whose data or model differs from it is refused. A mistake in a flag, a value or
a file is one `error:` line (exit status 2); --verbosity=info shows the libraries' logs, --verbosity=debug also
tracebacks.

Will it fit? --aot=TOPOLOGY compiles the real training step for a TPU topology on this (CPU) host, no TPU attached
(libtpu: pip install -e '.[tpu]'), prints the plan and writes workdir/aot.json; the exit status is 3 when the
step does not fit in a chip's memory:

  python train.py --config=configs/gpt.py:medium --workdir=DIR --aot=v5e:2x4 --config.mesh.fsdp=8
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from zoo import cli

config_flags.DEFINE_config_file('config', None, 'a recipe: configs/<name>.py[:<size>]', lock_config=True)
flags.DEFINE_string('workdir', None, 'directory for checkpoints, logs, the tokenizer and eval.json')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (then evaluate) or evaluate the newest checkpoint')
flags.DEFINE_string('aot', None, 'compile for a TPU topology ahead of time (v5e:2x4, v4:2x2x2, v5p:4x4x4) and '
                    'report memory and predicted step time instead of training')
flags.mark_flags_as_required(['workdir'])  # --config too, except for --mode=eval (the workdir's config.json)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs(flags.FLAGS.verbosity)
  if flags.FLAGS.config is None and (flags.FLAGS.aot or flags.FLAGS.mode != 'eval'):
    cli.fail('give --config=configs/<recipe>.py[:<size>] (only --mode=eval reads the workdir\'s config.json)')
  if flags.FLAGS.aot:
    from zoo import aot
    plan = cli.guard(aot.plan, flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.aot)
    print(aot.report(plan))
    sys.exit(0 if plan['fits'] else aot.EXIT_DOES_NOT_FIT)
  from zoo.train import loop
  config = flags.FLAGS.config
  if config is None:  # --mode=eval: what the workdir was trained with
    config = cli.guard(loop.saved_config, flags.FLAGS.workdir)
  cli.guard(loop.train_and_evaluate, config, flags.FLAGS.workdir, flags.FLAGS.mode)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)

"""python -m zoo.sample --workdir=DIR --prompt="..." [--prompt=...]: sample from a trained checkpoint.

The command line of `zoo.generate` (zoo.api.generate), the text-to-text function; the decoding library under it
(sampling, beam search, GLM blank filling) is `zoo.decoding`. No module is named zoo.generate, so that name is
always the function.

Each prompt is printed with what `zoo.generate` returned for it, by `zoo.api.full_text`: a decoder's prompt +
continuation (so `prompt + zoo.generate(...)[i]` is exactly the line printed), GLM's prompt with its blank
filled, an encoder-decoder's 'prompt -> answer'.
"""
from __future__ import annotations

import argparse
import os

from zoo import api, cli


def main(argv=None) -> None:
  """Sample from a trained checkpoint and print each prompt with its continuation (or answer): `api.full_text`."""
  parser = argparse.ArgumentParser(prog='python -m zoo.sample', description='Sample from a trained zoo checkpoint.')
  parser.add_argument('--workdir', required=True, help='a workdir train.py wrote (or one of its checkpoints/<step>)')
  parser.add_argument('--prompt', action='append', required=True, help='repeat for several prompts')
  # None: the model's generation config (an imported HF model's generation_config.json), else zoo's defaults
  parser.add_argument('--max_new', type=int, default=None, help='tokens to generate (default 50)')
  parser.add_argument('--temperature', type=float, default=None, help='0: greedy (the default)')
  parser.add_argument('--top_k', type=int, default=None, help='sample among the k likeliest (0: all)')
  parser.add_argument('--top_p', type=float, default=None, help='sample in the nucleus of this mass (1: all)')
  parser.add_argument('--repetition_penalty', type=float, default=None,
                      help='> 1 discourages tokens already in the text (CTRL, as transformers; 1: off)')
  parser.add_argument('--num_beams', type=int, default=None, help='> 1: beam search (encoder-decoders)')
  parser.add_argument('--alpha', type=float, default=None, help='beam search length penalty exponent (0.6)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  parser.add_argument('--devices', type=int, default=-1, help='use the first N devices (-1: all)')
  parser.add_argument('--verbosity', choices=list(cli.LEVELS), default='warning',
                      help="libraries' logs from 'info'; 'debug' also shows tracebacks")
  args = parser.parse_args(argv)
  cli.quiet_logs(cli.LEVELS[args.verbosity])
  if args.verbosity == 'debug':
    os.environ['ZOO_DEBUG'] = '1'
  loaded = cli.guard(api.load, args.workdir, step=args.step, devices=args.devices)
  texts = cli.guard(api.generate, loaded, args.prompt, max_new=args.max_new, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                    num_beams=args.num_beams, alpha=args.alpha, seed=args.seed)
  for prompt, text in zip(args.prompt, texts):
    print(api.full_text(loaded, prompt, text), flush=True)


if __name__ == '__main__':
  main()

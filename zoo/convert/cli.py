"""HuggingFace checkpoints in and out of zoo: BERT, ALBERT, GPT-2, T5 and BART.

The command line of zoo.convert:

  python -m zoo.convert import --hf_dir=DIR --out=OUT      # HF directory -> zoo model directory
  python -m zoo.convert export --params=OUT --out=HF_DIR   # zoo model directory -> HF directory
  python -m zoo.convert export --workdir=WORKDIR --out=HF_DIR [--step=N]   # a train.py run -> HF

A train.py workdir is read with the notebook API (`zoo.api.load`), the one module of zoo.convert that uses it.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from zoo import cli as zoo_cli
from zoo import errors, paths
from zoo.convert import common
from zoo.convert import format as fmt
from zoo.convert.common import ConversionError
from zoo.convert.hf import export_hf, import_hf
from zoo.convert.registry import FAMILIES, converter, zoo_to_hf_config


def load_workdir(workdir: str, step: int | None = None) -> tuple[Any, dict, str, dict]:
  """Restore the params of a train.py workdir (config.json + checkpoints/<step>/state) onto one device:
  (model, params as numpy, family, fields). The model is built as train.py builds it (`zoo.api.load`)."""
  from zoo import api
  path = paths.path(workdir) / 'config.json'  # the workdir may be local or gs://...
  if not path.exists():
    raise ConversionError(f'{workdir} has no config.json: give the --workdir of a train.py run')
  config = json.loads(path.read_text())
  if (config.get('data', {}).get('tokenizer') == 'train'
      and not (paths.path(workdir) / 'tokenizer.model').exists()):
    raise ConversionError(f'{workdir} has no tokenizer.model (data.tokenizer=train): not a finished run')
  loaded = api.load(workdir, step=step, devices=1)
  return loaded.model, common.plain_params(loaded.params), loaded.family, common.model_fields(loaded.model)


def _print_import(summary: dict, out: str) -> None:
  print(f"wrote {summary['out']}: zoo {summary['family']} with {summary['params']:,} parameters "
        f"({json.dumps(summary['fields'])})")
  if summary['fresh_params']:
    print(f"  not in the checkpoint, initialised at random: {summary['fresh_params']}")
  tok = summary['tokenizer']
  if tok.get('files'):
    print(f"  vocabulary copied to {os.path.join(out, fmt.HF_TOKENIZER_DIR)}: {tok['files']}"
          + (f" (read as an HFTokenizer from {tok['hf_tokenizer']})" if tok.get('hf_tokenizer') else ''))
  if tok.get('note'):
    print(f"  note: {tok['note']}")


def _export_source(args) -> tuple[Any, dict, str, dict, list]:
  """(model, params, family, extra config, [(tokenizer file, name in the HF directory)]) of --params or
  --workdir."""
  if args.params:
    model, params, family, _ = fmt.load_zoo(args.params)
    extra = {k: v for k, v in fmt.hf_config_copy(args.params).items() if k.endswith('token_id')}
    tok_dir = os.path.join(fmt.model_dir(args.params), fmt.HF_TOKENIZER_DIR)
    tok_src = [(os.path.join(tok_dir, n), n) for n in sorted(os.listdir(tok_dir))] if os.path.isdir(tok_dir) else []
    return model, params, family, extra, tok_src
  config_path = paths.path(args.workdir) / 'config.json'
  config = json.loads(config_path.read_text()) if config_path.exists() else {}
  if config.get('model', {}).get('family'):
    converter(config['model']['family'])  # refuse GLM, the RNNs, ... (one line) before restoring
  model, params, family, _ = load_workdir(args.workdir, args.step)
  tok_dir = config.get('data', {}).get('tokenizer', '')
  if tok_dir and os.path.isdir(os.path.expanduser(tok_dir)):  # trained on from a HuggingFace model: its own files
    return model, params, family, *_hf_tokenizer_files(os.path.expanduser(tok_dir))
  from zoo.data import tokenizer as tk
  extra = {'pad_token_id': tk.PAD, 'bos_token_id': tk.BOS, 'eos_token_id': tk.EOS}
  if family in ('t5', 'bart'):  # zoo's encoder-decoders start the decoder at [PAD]
    extra['decoder_start_token_id'] = tk.PAD
  spm_path = paths.join(args.workdir, 'tokenizer.model')
  if not paths.path(spm_path).exists():  # data.tokenizer named a .model file
    spm_path = config.get('data', {}).get('tokenizer') or spm_path
  # zoo's SentencePiece model, under a name HF tokenizers do not pick up
  tok_src = [(spm_path, 'zoo_tokenizer.model')] if paths.path(spm_path).exists() else []
  return model, params, family, extra, tok_src


def _hf_tokenizer_files(directory: str) -> tuple[dict, list]:
  """The token ids and the vocabulary files (unchanged) of a zoo model directory or an HF tokenizer directory."""
  if os.path.isfile(os.path.join(directory, fmt.ZOO_CONFIG)):
    extra = {k: v for k, v in fmt.hf_config_copy(directory).items() if k.endswith('token_id')}
    directory = os.path.join(directory, fmt.HF_TOKENIZER_DIR)
  else:
    extra = {}
  names = sorted(n for n in os.listdir(directory) if n in fmt.TOKENIZER_FILES) if os.path.isdir(directory) else []
  return extra, [(os.path.join(directory, n), n) for n in names]


def main(argv=None) -> int:
  """`python -m zoo.convert import|export ...` (see the module docstring)."""
  parser = argparse.ArgumentParser(prog='python -m zoo.convert', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p_imp = sub.add_parser('import', help='HuggingFace directory -> zoo model directory')
  p_imp.add_argument('--hf_dir', required=True, help='HF model directory: config.json + model.safetensors')
  p_imp.add_argument('--out', required=True, help='zoo model directory to write')
  p_exp = sub.add_parser('export', help='zoo model directory or train.py workdir -> HuggingFace directory')
  p_exp.add_argument('--family', choices=FAMILIES, help=f'{", ".join(FAMILIES)} (checked against the source)')
  p_exp.add_argument('--params', help='a zoo model directory (from `import`) or its params.safetensors')
  p_exp.add_argument('--workdir', help='a train.py workdir: its newest (or --step) checkpoint')
  p_exp.add_argument('--step', type=int, default=None, help='with --workdir: the checkpoint step')
  p_exp.add_argument('--out', required=True, help='HF directory to write')
  parser.add_argument('--verbosity', choices=list(zoo_cli.LEVELS), default='warning',
                      help="libraries' logs from 'info'; 'debug' also shows tracebacks")
  args = parser.parse_args(argv)
  zoo_cli.quiet_logs(zoo_cli.LEVELS[args.verbosity])
  try:
    if args.command == 'import':
      _print_import(import_hf(args.hf_dir, args.out), args.out)
      return 0
    if bool(args.params) == bool(args.workdir):
      parser.error('export takes one of --params (a zoo model directory) or --workdir (a train.py run)')
    model, params, family, extra, tok_src = _export_source(args)
    if args.family and args.family != family:
      parser.error(f'--family={args.family} but the source holds a {family} model')
    from zoo.convert import tokenizer as hf_tok
    spm = next((paths.path(src).read_bytes() for src, name in tok_src if name == 'zoo_tokenizer.model'), None)
    export_hf(model, params, family, args.out, extra_config=extra,
              tokenizer_vocab_size=hf_tok.vocab_size(spm) if spm else None)
    for src, name in tok_src:
      paths.path(src).copy(os.path.join(args.out, name), overwrite=True)  # from a local or gs:// workdir
    names = [n for _, n in tok_src]
    if spm:  # zoo's SentencePiece model as the fast tokenizer transformers reads
      names += hf_tok.write_hf_tokenizer(spm, family, args.out, getattr(model, 'max_len', None))
    arch = zoo_to_hf_config(family, model)['architectures'][0]
    print(f'wrote {args.out}: config.json + model.safetensors ({arch})'
          + (f'; tokenizer files {names}' if names else ''))
    return 0
  except Exception as e:  # a mistake in what was given is one line; zoo's own bugs keep their traceback
    if args.verbosity == 'debug' or zoo_cli.debug_requested() or not (
        isinstance(e, ConversionError) or errors.is_user_error(e)):
      raise
    parser.exit(zoo_cli.EXIT_USER_ERROR, f'error: {errors.clean_message(e)}\n')

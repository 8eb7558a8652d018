"""Where a run starts from: `init_from`, for pretraining and fine-tuning alike.

It names one of
  - a train.py workdir, or one of its checkpoints/<step> directories (trained on any topology);
  - a zoo model directory, as `python -m zoo.convert import` writes it (zoo_model.json, params.safetensors,
    hf_tokenizer/);
  - a HuggingFace model directory (config.json and model.safetensors or pytorch_model.bin, with its vocabulary
    files), imported into <workdir>/init_model the first time;
  - `hf:<name>`, a model of the HuggingFace Hub, read from the Hub's cache (`huggingface_hub`; offline with
    HF_HUB_OFFLINE=1) and imported the same way.
The model's fields and its tokenizer come from there; the run's own config decides the objective or task, the
data, the optimizer and the steps. A new workdir with init_from is a new run: step 0 and a fresh optimizer.

>>> resolve('', '/tmp/w') is None
True
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import warnings

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from zoo import paths

log = logging.getLogger('zoo')
HUB = 'hf:'
IMPORTED = 'init_model'  # <workdir>/init_model: a HuggingFace source imported as a zoo model directory


@dataclasses.dataclass
class Source:
  kind: str  # 'workdir' or 'zoo' (a zoo model directory; HuggingFace sources are imported into one)
  path: str  # the workdir (or checkpoint directory), or the zoo model directory
  config: ml_collections.ConfigDict | None = None  # a workdir's config.json
  meta: dict | None = None  # a zoo model directory's zoo_model.json


def field_name(config) -> str:
  """Which field names the source: `init_from`, or `task.init_from` of older recipes."""
  return 'init_from' if config.get('init_from', '') else 'task.init_from'


def spec_of(config) -> str:
  return config.get('init_from', '') or config.task.get('init_from', '')


def _is_hf_dir(path: str) -> bool:
  config = os.path.join(path, 'config.json')
  if not os.path.isfile(config):
    return False
  try:
    with open(config) as f:
      found = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(found, dict) and 'model_type' in found and 'model' not in found


def resolve(spec: str, workdir: str | None, field: str = 'init_from') -> Source | None:
  """The Source `spec` names (None for ''), a HuggingFace one imported into workdir/init_model first."""
  if not spec:
    return None
  if spec.startswith(HUB):
    spec = _from_hub(spec[len(HUB):], field)
  path = paths.abspath(spec, expanduser=True)
  for d in (path, paths.join(paths.path(path).parent.parent)):  # a workdir, or one of its checkpoints/<step>
    if paths.is_file(paths.join(d, 'config.json')) and not _is_hf_dir(d):
      saved = ml_collections.ConfigDict(json.loads(paths.path(d).joinpath('config.json').read_text()))
      return Source('workdir', path, config=saved)
  from zoo import convert
  if paths.is_file(paths.join(path, convert.ZOO_CONFIG)):
    return Source('zoo', path, meta=json.loads(paths.path(path).joinpath(convert.ZOO_CONFIG).read_text()))
  if _is_hf_dir(path):
    return _import(path, workdir, field)
  if not paths.path(path).exists():
    raise FileNotFoundError(f'{field}={spec!r} does not exist: give a train.py workdir, a zoo model directory '
                            f'(python -m zoo.convert import), a HuggingFace model directory or hf:<name>')
  raise FileNotFoundError(f'{field}={spec!r}: no config.json or {convert.ZOO_CONFIG} there; point it at a workdir '
                          f'that train.py wrote, a zoo model directory or a HuggingFace model directory')


def _from_hub(name: str, field: str) -> str:
  try:
    import huggingface_hub
  except ImportError as e:
    raise ValueError(f'{field}=hf:{name} reads the HuggingFace Hub with huggingface_hub: pip install '
                     f'huggingface_hub, or download the model and give its directory') from e
  try:
    return huggingface_hub.snapshot_download(name)
  except Exception as e:  # offline and not cached, no such model, no network: one line
    raise FileNotFoundError(f'{field}=hf:{name}: the Hub gave no such model ({type(e).__name__}); with '
                            f'HF_HUB_OFFLINE=1 it must be in the cache ({huggingface_hub.constants.HF_HUB_CACHE}); '
                            f'or give a local directory') from None


def _import(hf_dir: str, workdir: str | None, field: str) -> Source:
  """A HuggingFace directory as a zoo model directory in the workdir (imported once; a rerun reads it)."""
  from zoo import convert
  if not workdir:
    raise ValueError(f'{field}={hf_dir}: a HuggingFace directory is imported into the workdir: give a workdir')
  out = os.path.abspath(os.path.join(workdir, IMPORTED))
  meta_path = os.path.join(out, convert.ZOO_CONFIG)
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get('source', {}).get('hf_dir') != os.path.abspath(hf_dir):
      raise ValueError(f'{out} holds a model imported from {meta.get("source", {}).get("hf_dir")}, not {hf_dir}: '
                       f'this workdir belongs to another run; use a new --workdir')
    return Source('zoo', out, meta=meta)
  if jax.process_index() == 0:
    tmp = out + '.tmp'
    try:
      with warnings.catch_warnings(record=True) as caught:  # which parameters start at random: one log line each
        warnings.simplefilter('always')
        convert.import_hf(hf_dir, tmp)  # written whole, then renamed: a failed import leaves no half a model
    except convert.ConversionError as e:
      raise convert.ConversionError(f'{field}={hf_dir}: {e}') from None
    finally:
      if not os.path.isfile(os.path.join(tmp, convert.ZOO_CONFIG)):
        shutil.rmtree(tmp, ignore_errors=True)
    for w in caught:
      log.warning('%s', w.message)
    os.replace(tmp, out)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('zoo init_from import')
  with open(meta_path) as f:
    return Source('zoo', out, meta=json.load(f))


def tokenizer_spec(source: Source) -> str | None:
  """What data.tokenizer becomes: the zoo model directory (read as its HF tokenizer), or None when it has none."""
  from zoo import convert
  if source.kind == 'zoo':
    return source.path if os.path.isdir(os.path.join(source.path, convert.HF_TOKENIZER_DIR)) else None
  return None


def model_config(source: Source) -> dict:
  """The model section of the run's config: the family, size and fields of a zoo model directory."""
  meta = source.meta
  return {'family': meta['family'], 'size': meta.get('size', 'tiny'), **meta['fields']}


def open_params(source: Source, scan_layers: bool):
  """(shapes {path tuple: shape}, where they are for messages, read(wanted) -> {path tuple: placed array}) of
  the source's parameters; `wanted` maps paths to ShapeDtypeStructs carrying their shardings."""
  from zoo import checkpoint as ckpt
  if source.kind == 'workdir':
    state_dir, step = ckpt.find_state(source.path)
    return (ckpt.saved_params(state_dir), f'step {step} of {source.path}',
            lambda wanted: traverse_util.flatten_dict(ckpt.restore_params(state_dir,
                                                                          traverse_util.unflatten_dict(wanted))))
  from safetensors.numpy import load_file
  from zoo import convert
  from zoo.convert import common
  params = traverse_util.unflatten_dict(load_file(os.path.join(source.path, convert.PARAMS_FILE)), sep='/')
  if scan_layers:
    params = common.stack_layers(params)
  flat = traverse_util.flatten_dict(params)
  return ({k: tuple(v.shape) for k, v in flat.items()}, source.path,
          lambda wanted: {k: jax.device_put(np.asarray(flat[k], v.dtype), v.sharding) for k, v in wanted.items()})

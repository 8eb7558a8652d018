"""Reading and writing files: safetensors (bfloat16 and float8 included), PyTorch `.bin` through torch's
weights-only loader (nothing in it is ever unpickled as an object), a HF directory's config.json and weights
(single or sharded), and JSON written atomically."""
from __future__ import annotations

import json
import os
import pickle
import struct
import warnings

import numpy as np

from zoo.convert.common import ConversionError, UnsafeCheckpointError

_ST_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'I64': np.int64, 'I32': np.int32,
              'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_}


def _read_safetensors_raw(path: str) -> dict[str, np.ndarray]:
  """The safetensors format read by hand (8-byte header size, JSON header, raw little-endian data): for the
  dtypes numpy lacks (bfloat16, float8), which `safetensors.numpy` cannot return."""
  import ml_dtypes  # comes with jax
  dtypes = dict(_ST_DTYPES, BF16=ml_dtypes.bfloat16, F8_E4M3=ml_dtypes.float8_e4m3fn,
                F8_E5M2=ml_dtypes.float8_e5m2)
  with open(path, 'rb') as f:
    (n,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in dtypes:
      raise ConversionError(f'{path}: tensor {name} has dtype {info["dtype"]}, which zoo cannot read')
    begin, end = info['data_offsets']
    out[name] = np.frombuffer(data[begin:end], dtype=dtypes[info['dtype']]).reshape(info['shape'])
  return out


def _to_float32(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    return x
  return np.ascontiguousarray(x.astype(np.float32))


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """A .safetensors file as {name: float32 numpy array} (`safetensors.numpy.load_file`; bfloat16 and float8
  files are read by hand, since numpy has no such dtypes). Integer tensors are kept as they are."""
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise ConversionError('reading .safetensors needs the safetensors package: pip install safetensors') from None
  try:
    tensors = load_file(path)
  except TypeError:  # "data type 'bfloat16' not understood"
    tensors = _read_safetensors_raw(path)
  return {k: _to_float32(v) for k, v in tensors.items()}


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str]) -> None:
  """{name: array} as a .safetensors file (float32, contiguous)."""
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, path, metadata=metadata)


def load_torch_bin(path: str) -> dict[str, np.ndarray]:
  """A PyTorch `.bin` state dict as {name: float32 numpy array}, through torch's weights-only unpickler.

  `torch.load(path, map_location='cpu', weights_only=True)` refuses any pickled object other than tensors and
  plain containers, so nothing in the file can run; such a file raises `UnsafeCheckpointError`. Without torch
  installed this says to install it or to convert the file to safetensors.
  """
  try:
    import torch
  except ImportError:
    raise ConversionError(
        f'{path} is a PyTorch pickle checkpoint: reading it needs torch (pip install torch; zoo opens it only '
        f'with the weights-only loader), or convert it to model.safetensors with a trusted tool and convert '
        f'that') from None
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings('ignore', message='Detected pickle protocol')  # torch's note on old pickles
      state = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    detail = ' '.join(line.strip() for line in str(e).splitlines() if 'GLOBAL' in line or 'Unsupported' in line)
    raise UnsafeCheckpointError(
        f'{path} holds objects other than tensors; refusing to unpickle it (it could run code). Convert it to '
        f'safetensors with a trusted tool (e.g. load it where you trust its source and save it with '
        f'safetensors.torch.save_file), then convert the model.safetensors' + (f' [{detail}]' if detail else '')
    ) from None
  except TypeError as e:
    if 'weights_only' in str(e):
      raise ConversionError(f'torch {torch.__version__} has no weights-only loader: upgrade torch (>= 1.13) '
                            f'or convert {path} to safetensors') from None
    raise
  if not isinstance(state, dict):
    raise ConversionError(f'{path} holds a {type(state).__name__}, not a state dict of tensors')
  out = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(f'{path}: entry {name!r} is a {type(value).__name__}, not a tensor: zoo reads flat '
                            f'state dicts (name -> tensor) as save_pretrained writes them')
    value = value.detach().cpu()
    out[name] = value.numpy() if not value.is_floating_point() else value.to(torch.float32).numpy().copy()
  return out


def read_hf_config(hf_dir: str) -> dict:
  """config.json of a HuggingFace model directory, as a dict."""
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.exists(path):
    raise ConversionError(f'{hf_dir} has no config.json: point --hf_dir at a HuggingFace model directory '
                          f'(what save_pretrained writes)')
  return read_json(path)


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of a HuggingFace model directory as {HF name: numpy array}: model.safetensors (or its
  sharded index) first, else pytorch_model.bin (or its index) through the weights-only loader."""
  for index, loader in (('model.safetensors.index.json', load_safetensors),
                        ('pytorch_model.bin.index.json', load_torch_bin)):
    path = os.path.join(hf_dir, index)
    if os.path.exists(path):
      shards = sorted(set(read_json(path)['weight_map'].values()))
      out = {}
      for shard in shards:
        out.update(loader(os.path.join(hf_dir, os.path.basename(shard))))
      return out
    single = os.path.join(hf_dir, index[:-len('.index.json')])
    if os.path.exists(single):
      return loader(single)
  raise ConversionError(f'{hf_dir} has no model.safetensors or pytorch_model.bin (nor a sharded index)')


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  """obj as indented JSON with sorted keys, written to path.tmp and moved into place."""
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
    f.write('\n')
  os.replace(path + '.tmp', path)

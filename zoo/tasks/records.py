"""Reading a fine-tuning task's examples: local TSV / CSV (with a header row), JSONL, or a prepared TFDS dataset.

Specs (the config's task.train / task.validation):
  tsv:<path>   csv:<path>   jsonl:<path>   tfds:<name>[:<split>]   (e.g. tfds:glue/sst2:validation)
  demo:<set>[:<split>]   zoo's small offline sets (zoo.tasks.demo: sentiment, names, qa, sft, translation)

Each example is a dict keyed by column / feature name. Text comes back as str; TFDS class labels come back as
their names (ClassLabel), so a task sees the same values from TFDS as from a file.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), 'train.tsv')
>>> _ = open(path, 'w').write('sentence\\tlabel\\ngood film\\tpos\\nbad film\\tneg\\n')
>>> read_records(f'tsv:{path}')
[{'sentence': 'good film', 'label': 'pos'}, {'sentence': 'bad film', 'label': 'neg'}]
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

import numpy as np

from zoo import paths


def read_records(spec: str, *, field: str = 'task.train', data_dir: str | None = None,
                 default_split: str = 'train') -> list[dict[str, Any]]:
  """All examples of `spec` as a list of dicts (see the module docstring). `field` names the config field in
  error messages."""
  kind, _, rest = spec.partition(':')
  if kind in ('tsv', 'csv', 'jsonl'):
    path = os.path.expanduser(rest) if paths.is_local(rest) else rest
    if not paths.is_file(path):
      raise FileNotFoundError(f'{field}={spec!r}: no file {path}')
    with io.StringIO(paths.path(path).read_bytes().decode('utf-8'), newline='') as f:  # as csv wants it
      if kind == 'jsonl':
        out = []
        for i, line in enumerate(f, 1):
          if line.strip():
            try:
              out.append(json.loads(line))
            except json.JSONDecodeError as e:
              raise ValueError(f'{field}: {path} line {i} is not JSON ({e.msg}): one object per line') from None
        return out
      rows = list(csv.DictReader(f, delimiter='\t' if kind == 'tsv' else ',', quoting=csv.QUOTE_NONE
                                 if kind == 'tsv' else csv.QUOTE_MINIMAL))
      bad = [i + 2 for i, r in enumerate(rows) if None in r or None in r.values()]
      if bad:
        raise ValueError(f'{field}: {path} line {bad[0]} has another number of columns than its header '
                         f'{list(rows[0]) if rows else []}')
      return rows
  if kind == 'demo':
    from zoo.tasks import demo
    name, _, split = rest.partition(':')
    makers = {set_name: make for set_name, (make, _) in demo.SETS.items()}
    if name not in makers:
      raise ValueError(f'{field}={spec!r}: the demo sets are {sorted(makers)}')
    split = split or default_split
    n = {'train': 800, 'validation': 200}.get(split, 200)
    return makers[name](np.random.default_rng(0 if split == 'train' else 1), n)
  if kind == 'tfds':
    name, _, split = rest.partition(':')
    return _read_tfds(name, split or default_split, data_dir, field)
  raise ValueError(f"{field}={spec!r}: use tsv:<path>, csv:<path>, jsonl:<path>, tfds:<name>[:<split>] or "
                   f"demo:<set>")


def _plain(value, feature=None):
  """TFDS numpy values -> str / int / list / dict, with ClassLabel ints turned into their names."""
  import tensorflow_datasets as tfds
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: _plain(value[k], feature[k]) for k in value}
  if isinstance(feature, tfds.features.Sequence):
    inner = feature.feature
    if isinstance(value, dict):
      return {k: [_plain(x, inner[k]) for x in v] for k, v in value.items()}
    return [_plain(x, inner) for x in value]
  if isinstance(feature, tfds.features.ClassLabel):
    return feature.int2str(int(value))
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.ndarray):
    return [_plain(x) for x in value.tolist()] if value.ndim else value.item()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _prepared_builder(name: str, data_dir: str | None):
  """A builder read from a prepared dataset's directory (<data_dir>/<name>/<version>), needing no builder code:
  how datasets whose code imports TensorFlow (glue, squad, conll2003) are read without it."""
  import tensorflow_datasets as tfds
  root = os.path.join(os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')),
                      name)
  if not os.path.isdir(root):
    return None
  versions = sorted((d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, 'dataset_info.json'))),
                    key=lambda v: [int(x) if x.isdigit() else x for x in v.split('.')])
  return tfds.builder_from_directory(os.path.join(root, versions[-1])) if versions else None


def _read_tfds(name: str, split: str, data_dir: str | None, field: str) -> list[dict]:
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name, or a builder whose code needs TensorFlow (glue): read the prepared files
    builder = _prepared_builder(name, data_dir)
    if builder is None:
      raise ValueError(f'{field}=tfds:{name}: TFDS cannot find this dataset ({str(e).splitlines()[0]}); check '
                       f'the name, and set task.data_dir to the directory it was prepared in') from None
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'{field}=tfds:{name} is not prepared, and zoo does not download: prepare it once on a machine with '
        f'network (`tfds build {name} --file_format=array_record --data_dir=DIR`), copy DIR here and set '
        f'task.data_dir=DIR')
  if split not in builder.info.splits:
    raise ValueError(f'{field}=tfds:{name}:{split}: no such split; its splits are {list(builder.info.splits)}')
  source = builder.as_data_source(split=split)
  features = builder.info.features
  return [_plain(source[i], features) for i in range(len(source))]

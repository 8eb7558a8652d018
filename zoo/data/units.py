"""A corpus as work units for `zoo.data.prepare`: byte ranges of line-per-document files (aligned to lines), whole
files (paragraph mode, Parquet), record ranges of a TFDS split; each streamed as documents in blocks, and the
tokenizer's sample drawn by random reads.

>>> units = plan_units(Options(source='default'))
>>> [u['kind'] for u in units], is_validation('some text', 0.5) == is_validation('some text', 0.5)
(['default'], True)
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Iterator

import numpy as np

from zoo import paths
from zoo.data import mixture, prepared, sources

UNIT_BYTES = 64 << 20  # a work unit of a line-per-document file
BLOCK_BYTES = 4 << 20  # what a worker reads at a time
SAMPLE_READS = 1000  # random reads that draw the tokenizer's sample: many, so it spans the corpus


@dataclasses.dataclass(frozen=True)
class Options:
  """What decides the shards' contents (recorded in plan.json; a rerun must match it)."""
  source: str
  text_mode: str = 'line'
  max_doc_chars: int = 100_000
  validation_fraction: float = 0.01
  sentences: bool = False  # flags: where sentences start (NSP, SOP, sentence permutation)
  word_segmenter: str = ''  # 'jieba': flags where Chinese words start (whole-word masking)
  data_dir: str = ''  # TFDS
  hf_config: str = ''  # a HuggingFace dataset's configuration (name)


def plan_units(opts: Options, unit_bytes: int = UNIT_BYTES) -> list[dict]:
  """The work units of a source, in a fixed order (see the module docstring)."""
  if prepared.is_prepared(opts.source) or opts.source.startswith(mixture.PREFIX):
    raise ValueError(f'--source={opts.source!r}: prepare each source of a mixture into its own directory and '
                     f'train on mix:prepared:DIR1@w1,prepared:DIR2@w2')
  kind, _, rest = opts.source.partition(':')
  units: list[dict] = []
  if kind == 'default':
    units.append({'kind': 'default'})
  elif kind == 'tfds':
    name, _, field = rest.partition(':')
    step = max(1, unit_bytes // 2048)  # records per unit, about unit_bytes of text
    for split in prepared.SPLITS:
      try:
        docs, _ = sources.read_tfds(name, field or 'text', split, opts.data_dir or None)
      except ValueError:
        if split == 'train':
          raise
        units = [dict(u, split=None) for u in units]  # no split of its own to validate on: hashed into the two
        break
      units += [{'kind': 'tfds', 'dataset': name, 'field': field or 'text', 'split': split, 'start': i,
                 'end': min(i + step, len(docs))} for i in range(0, len(docs), step)]
  elif kind == 'hf' and rest:
    name, _, field = rest.rpartition(':') if sources.has_name(rest) else (rest, '', 'text')
    step = max(1, unit_bytes // 2048)
    for split, hf_split, rows in hf_splits(name, opts.hf_config):
      units += [{'kind': 'hf', 'dataset': name, 'field': field, 'split': split, 'hf_split': hf_split, 'start': i,
                 'end': min(i + step, rows)} for i in range(0, rows, step)]
  elif kind in ('text', 'jsonl', 'parquet') and rest:
    pattern, field = (rest, '') if kind == 'text' else (rest.rpartition(':')[0], rest.rpartition(':')[2])
    if kind != 'text' and not sources.has_name(rest):
      raise ValueError(f'--source={opts.source!r}: name the field, as {kind}:<glob>:<field>')
    for path in sources.expand(pattern, '--source'):
      size = paths.path(path).stat().length
      whole = kind == 'parquet' or (kind == 'text' and opts.text_mode == 'paragraph')
      starts = [0] if whole or size == 0 else range(0, size, unit_bytes)
      units += [{'kind': 'parquet' if kind == 'parquet' else 'lines', 'path': path, 'field': field,
                 'start': s, 'end': size if whole else min(s + unit_bytes, size), 'size': size} for s in starts]
  else:
    raise ValueError(f"--source={opts.source!r} is not a source: use 'default', 'text:<glob>', "
                     f"'jsonl:<glob>:<field>', 'parquet:<glob>:<column>', 'tfds:<name>[:<field>]' or "
                     f"'hf:<dataset dir or Hub name>[:<field>]'")
  for i, unit in enumerate(units):
    unit['name'] = f'{i:05d}'
  return units


def line_range(path: str, start: int, end: int) -> Iterator[bytes]:
  """The lines (without '\\n') that start in [start, end) of a file: a line that crosses `start` belongs to the
  range before, so consecutive ranges read every line once."""
  with paths.path(path).open('rb') as fh:
    if start:
      fh.seek(start - 1)
      fh.readline()  # the rest of the line that holds start - 1
    pos, carry = fh.tell(), b''
    while pos < end:
      block = fh.read(BLOCK_BYTES if carry else min(BLOCK_BYTES, end - pos + 4096))  # a window reads little
      lines = (carry + block).split(b'\n')
      carry = lines.pop() if block else b''
      for line in lines:
        if pos >= end:
          return
        yield line
        pos += len(line) + 1
      if not block:
        return


def documents(unit: dict, opts: Options, stats: sources.Stats) -> Iterator[str]:
  """The documents of one unit, as `sources.read_documents` would give them (stripped, long ones cut)."""
  kind, cut = unit['kind'], opts.max_doc_chars
  if kind == 'default':
    yield from sources.read_default(cut)[0]
  elif kind == 'hf':
    ds = hf_dataset(unit['dataset'], opts.hf_config, unit['hf_split'])
    if unit['field'] not in ds.column_names:
      raise ValueError(f'--source=hf:{unit["dataset"]} has no column {unit["field"]!r}; its columns are '
                       f'{ds.column_names}: use hf:<dataset>:<column>')
    for i in range(unit['start'], unit['end'], 1000):  # a slice at a time: arrow reads only those rows
      for text in ds[i:min(i + 1000, unit['end'])][unit['field']]:
        if text is None:
          stats.null_values += 1
        else:
          yield from sources.pieces(str(text), stats, cut)
  elif kind == 'tfds':
    docs, _ = sources.read_tfds(unit['dataset'], unit['field'], unit['split'] or 'train', opts.data_dir or None)
    for i in range(unit['start'], unit['end']):
      yield from sources.pieces(docs[i], stats, cut)
  elif kind == 'parquet':
    with paths.path(unit['path']).open('rb') as fh:
      for text in sources.parquet_texts(unit['path'], fh, unit['field'], stats):
        yield from sources.pieces(text, stats, cut)
  elif opts.text_mode == 'paragraph' and not unit['field']:
    lines = (sources.decode_line(b, stats) for b in line_range(unit['path'], unit['start'], unit['end']))
    for block in sources.paragraphs(lines):
      yield from sources.pieces(block, stats, cut)
  else:
    for raw in line_range(unit['path'], unit['start'], unit['end']):
      text = sources.decode_line(raw, stats)
      if unit['field']:
        text = sources.json_text(text, unit['field'], stats)
        if text is None:
          continue
      yield from sources.pieces(text, stats, cut)


_HF: dict = {}


def hf_dataset(name: str, config: str, split: str):
  """One split of a HuggingFace `datasets` dataset: a directory `save_to_disk` wrote, or a Hub name (downloaded
  to, or read offline from, HF's cache). 'all' is a dataset with no splits of its own."""
  key = (name, config)
  if key not in _HF:
    try:
      import datasets
    except ImportError:
      raise ImportError('--source=hf:... reads through the datasets library: pip install datasets') from None
    if paths.path(name).exists():
      _HF[key] = datasets.load_from_disk(name)
    else:
      try:
        _HF[key] = datasets.load_dataset(name, config or None)
      except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise ValueError(f'--source=hf:{name}: no such directory, and the Hub has no dataset by that name here '
                         f'({e}); give a save_to_disk directory, or a Hub name (offline: one in HF\'s cache)') from None
  ds = _HF[key]
  return ds if split == 'all' else ds[split]


def hf_splits(name: str, config: str) -> list[tuple]:
  """(zoo's split, the dataset's split, rows): its own train and validation (or test) splits; or, for a dataset
  without splits, (None, 'all', rows): each document's split by the hash of its text."""
  ds = hf_dataset(name, config, 'all')
  if not hasattr(ds, 'keys'):
    return [(None, 'all', len(ds))]
  if 'train' not in ds:
    raise ValueError(f'--source=hf:{name} has splits {list(ds)}, and no train split')
  val = next((s for s in ('validation', 'test') if s in ds), None)
  if val is None:  # the train split alone: hashed into the two
    return [(None, 'train', len(ds['train']))]
  return [('train', 'train', len(ds['train'])), ('validation', val, len(ds[val]))]


def is_validation(text: str, fraction: float) -> bool:
  """A document's split, from a hash of its text (stable across runs, machines and Python versions)."""
  h = int.from_bytes(hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=8).digest(), 'little')
  return h < fraction * 2.0 ** 64


def sample_documents(units: list[dict], opts: Options, budget_chars: int, seed: int = 0) -> list[str]:
  """About budget_chars characters of training documents, drawn uniformly: random windows of the line files
  (their size, not a pass over them, sets the cost), whole units in a random order for the rest."""
  stats, rng, out, chars = sources.Stats(), np.random.default_rng(seed), [], 0
  ranged = [u for u in units if u['kind'] == 'lines' and opts.text_mode == 'line']
  sizes = np.array([u['end'] - u['start'] for u in ranged], np.int64)
  if len(ranged) and sizes.sum() > 2 * budget_chars:  # large: random windows
    ends, window = np.cumsum(sizes), int(np.clip(2 * budget_chars // SAMPLE_READS, 4 << 10, 64 << 10))
    for at in np.sort(rng.integers(0, ends[-1], math.ceil(2 * budget_chars / window))):
      k = int(np.searchsorted(ends, at, side='right'))
      u = ranged[k]
      start = u['start'] + int(at - (ends[k] - sizes[k]))
      read = dict(u, start=start, end=min(start + window, u['size']))
      out += [t for t in documents(read, opts, stats) if not is_validation(t, opts.validation_fraction)]
  else:
    for k in rng.permutation(len(units)):  # whole units until twice the budget is read
      if units[k].get('split') in (None, 'train') and chars < 2 * budget_chars:
        out += [t for t in documents(units[k], opts, stats) if not is_validation(t, opts.validation_fraction)]
        chars = sum(map(len, out))
    chars = 0
  rng.shuffle(out)
  kept = []
  for text in out:
    if chars >= budget_chars:
      break
    kept.append(text)
    chars += len(text)
  return kept

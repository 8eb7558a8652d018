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
    for split in prepared.SPLITS:
      docs, _ = sources.read_tfds(name, field or 'text', split, opts.data_dir or None)
      step = max(1, unit_bytes // 2048)  # records per unit, about unit_bytes of text
      units += [{'kind': 'tfds', 'name': name, 'field': field or 'text', 'split': split, 'start': i,
                 'end': min(i + step, len(docs))} for i in range(0, len(docs), step)]
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
                     f"'jsonl:<glob>:<field>', 'parquet:<glob>:<column>' or 'tfds:<name>[:<field>]'")
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
  elif kind == 'tfds':
    docs, _ = sources.read_tfds(unit['name'], unit['field'], unit['split'], opts.data_dir or None)
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
      if units[k].get('split', 'train') == 'train' and chars < 2 * budget_chars:
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

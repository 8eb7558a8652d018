"""Reading a prepared corpus (`data.source='prepared:DIR'`): token shards that `python -m zoo.data.prepare` wrote.

A prepared directory holds, per work unit (a range of an input file, a whole file, or a range of a dataset's
records) and per split:

  units/<unit>.<split>.tokens   the documents' token ids back to back (uint16, or uint32 for vocabularies over
                                65,536), without the [EOS] that closes each document (the reader adds it)
  units/<unit>.<split>.index    int64: where each document starts, and the end (documents + 1 numbers)
  units/<unit>.<split>.flags    (optional) uint8 per token: bit 0 a sentence starts here, bit 1 a word does
  units/<unit>.json             written last: the unit is complete (its counts, sizes and sha256 hashes)
  manifest.json                 written when every unit is: source, tokenizer and its hash, counts, features
  tokenizer.model               the tokenizer every token was made with (or tokenizer/: a HuggingFace one's files)

Token and index files are read by range, with `os.pread` when local and through etils.epath on a bucket; nothing is
memory-mapped, so the reader's memory grows neither with the corpus nor with what it has read.
`PreparedSplit` is a random-access sequence of documents, each a dict of int32 arrays (`tokens`, and
`sentence_starts` / `word_starts` when prepared with them), which grain shuffles and shards by index.

>>> import tempfile
>>> from zoo.data import prepare, tokenizer as tk
>>> d = tempfile.mkdtemp()
>>> _ = open(f'{d}/a.txt', 'w').write('the cat sat\\na dog ran\\n' * 50)
>>> tok = tk.train_tokenizer(open(f'{d}/a.txt').read().split('\\n'), vocab_size=300, num_sentinels=0)
>>> tok.save(f'{d}/tok.model')
>>> m = prepare.prepare(f'text:{d}/a.txt', f'{d}/out', tokenizer=f'{d}/tok.model', workers=1, progress=False)
>>> train = PreparedSplit(f'{d}/out', 'train')
>>> len(train) + len(PreparedSplit(f'{d}/out', 'validation')), tok.decode(train[0]['tokens'])
(100, 'a dog ran')
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from zoo import paths
from zoo.data import mixture

PREFIX = 'prepared:'
FORMAT = 'zoo.prepared/1'
SPLITS = ('train', 'validation')
SENTENCE_START, WORD_START = 1, 2  # bits of the flags file
_OPEN_UNITS = 128  # units whose files are kept open, per split (each holds 2 or 3 descriptors)


class PreparedError(ValueError):
  """A prepared directory that cannot be read as it is: named, with what to do."""


def is_prepared(spec: str) -> bool:
  return spec.startswith(PREFIX)


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def unit_file(directory: str, unit: str, split: str, kind: str) -> str:
  return paths.join(directory, 'units', f'{unit}.{split}.{kind}')


def load_manifest(directory: str) -> dict:
  """DIR/manifest.json, checked: a directory that is not (yet) a complete preparation is refused."""
  path = paths.join(directory, 'manifest.json')
  if not paths.is_file(path):
    started = paths.path(directory).joinpath('plan.json').exists() if paths.path(directory).exists() else False
    hint = ('its preparation has not finished: run the same `python -m zoo.data.prepare` command again to '
            'complete it' if started else 'prepare it first with `python -m zoo.data.prepare --source=... '
                                          f'--out={directory}`')
    raise PreparedError(f'data.source=prepared:{directory}: no manifest.json there; {hint}')
  try:
    manifest = json.loads(paths.path(path).read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PreparedError(f'{path} is not valid JSON ({e}): the preparation was damaged; prepare it again') from None
  if manifest.get('format') != FORMAT:
    raise PreparedError(f'{path} is format {manifest.get("format")!r}; this zoo reads {FORMAT!r}: prepare it again')
  return manifest


def hf_tokenizer_dir(directory: str, manifest: dict | None = None) -> str | None:
  """DIR/tokenizer when the corpus was prepared with a HuggingFace tokenizer's files, else None (zoo's)."""
  manifest = manifest or load_manifest(directory)
  return paths.join(directory, 'tokenizer') if manifest['tokenizer'].get('kind', 'zoo') != 'zoo' else None


def tokenizer_proto(directory: str, manifest: dict | None = None) -> bytes:
  """The tokenizer file (SentencePiece model bytes) a prepared corpus was made with, checked against the
  manifest's hash."""
  manifest = manifest or load_manifest(directory)
  if manifest['tokenizer'].get('kind', 'zoo') != 'zoo':
    raise PreparedError(f'prepared:{directory} was made with the HuggingFace tokenizer in {directory}/tokenizer, '
                        f'not a zoo SentencePiece model: read it with hf_tokenizer_dir')
  path = paths.join(directory, manifest['tokenizer']['file'])
  if not paths.is_file(path):
    raise PreparedError(f'{path} is missing: the prepared corpus {directory} is incomplete; prepare it again')
  proto = paths.path(path).read_bytes()
  if sha256_bytes(proto) != manifest['tokenizer']['sha256']:
    raise PreparedError(f'{path} is not the tokenizer {directory}/manifest.json names (its sha256 differs): the '
                        f'tokens were made with another one; restore that file or prepare the corpus again')
  return proto


class _Unit:
  """One unit's files of one split, read by range: `os.pread` on local files (nothing is mapped into the
  process, so its memory does not grow with what it has read), seek and read through etils.epath on a bucket."""

  def __init__(self, directory: str, unit: dict, split: str, dtype, flags: bool, local: bool):
    self.name, self.dtype, self.local = unit['name'], np.dtype(dtype), local
    counts = unit[split]
    self.documents, self.tokens = counts['documents'], counts['tokens']
    self.files = {k: unit_file(directory, self.name, split, k) for k in ('tokens', 'index') + ('flags',) * flags}
    self._handles: dict = {}

  def check(self) -> None:
    """The files have the sizes the manifest says (a truncated or missing shard is named)."""
    sizes = {'tokens': self.tokens * self.dtype.itemsize, 'index': 8 * (self.documents + 1), 'flags': self.tokens}
    for kind, f in self.files.items():
      if self.local:
        size = os.stat(f).st_size if os.path.exists(f) else None
      else:
        size = paths.path(f).stat().length if paths.path(f).exists() else None
      if size != sizes[kind]:
        found = 'missing' if size is None else f'{size:,} bytes'
        raise PreparedError(f'{f} is {found}, not the {sizes[kind]:,} bytes its manifest says: the shard is '
                            f'truncated or damaged; prepare the corpus again (or rerun prepare into a new --out)')

  def _read(self, kind: str, dtype, start: int, stop: int) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if kind not in self._handles:
      f = self.files[kind]
      self._handles[kind] = os.open(f, os.O_RDONLY) if self.local else paths.path(f).open('rb')
    handle = self._handles[kind]
    if self.local:
      data = os.pread(handle, (stop - start) * size, start * size)
    else:
      handle.seek(start * size)
      data = handle.read((stop - start) * size)
    if len(data) != (stop - start) * size:
      raise PreparedError(f'{self.files[kind]} ended early: the shard is truncated; prepare the corpus again')
    return np.frombuffer(data, dtype)

  def document(self, i: int, vocab_size: int) -> dict:
    start, stop = (int(x) for x in self._read('index', np.int64, i, i + 2))
    if not 0 <= start <= stop <= self.tokens:
      raise PreparedError(f'{self.files["index"]}: document {i} spans tokens [{start}, {stop}) outside the '
                          f'{self.tokens:,} of its shard: the index is damaged; prepare the corpus again')
    ids = self._read('tokens', self.dtype, start, stop)
    if len(ids) and int(ids.max()) >= vocab_size:
      raise PreparedError(f'{self.files["tokens"]}: document {i} holds id {int(ids.max())}, outside the '
                          f'tokenizer\'s {vocab_size} ids: the shard is damaged; prepare the corpus again')
    out = {'tokens': ids.astype(np.int32)}
    if 'flags' in self.files:
      flags = self._read('flags', np.uint8, start, stop)
      out['sentence_starts'] = (flags & SENTENCE_START).astype(np.int32)
      out['word_starts'] = ((flags & WORD_START) >> 1).astype(np.int32)
    return out

  def close(self):
    for handle in self._handles.values():
      os.close(handle) if self.local else handle.close()
    self._handles = {}


class PreparedSplit(Sequence[dict]):
  """The documents of one split of a prepared corpus, by index (see the module docstring); picklable (files
  reopen in the process that reads)."""

  def __init__(self, directory: str, split: str = 'train', local: bool | None = None):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    self.directory, self.split = directory, split
    self.manifest = load_manifest(directory)
    self.local = paths.is_local(directory) if local is None else local
    self.features = tuple(self.manifest['features'])
    self.vocab_size = int(self.manifest['tokenizer']['vocab_size'])
    units = self.manifest['units']
    self._names = [u['name'] for u in units]
    self.offsets = [0] + list(np.cumsum([u[split]['documents'] for u in units]).tolist())
    self.num_tokens = int(sum(u[split]['tokens'] for u in units))
    self._open: collections.OrderedDict = collections.OrderedDict()
    self._checked: set = set()
    if self.local:  # a truncated or missing shard is found now, not at its first read (stat is cheap here)
      for k in range(len(units)):
        self._unit(k)
    if self.offsets[-1] == 0:
      raise PreparedError(f'data.source=prepared:{directory} has no {split} documents: prepare it again with a '
                          f'larger --validation_fraction' if split == 'validation' else
                          f'data.source=prepared:{directory} has no training documents')

  def _unit(self, k: int) -> _Unit:
    unit = self._open.get(k)
    if unit is None:
      unit = _Unit(self.directory, self.manifest['units'][k], self.split, self.manifest['dtype'],
                   bool(self.features), self.local)
      if k not in self._checked:  # once: a unit reopened after the cache let it go is not checked again
        unit.check()
        self._checked.add(k)
      self._open[k] = unit
      if len(self._open) > _OPEN_UNITS:
        self._open.popitem(last=False)[1].close()
    else:
      self._open.move_to_end(k)
    return unit

  def __len__(self) -> int:
    return self.offsets[-1]

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    k, j = mixture.locate(self.offsets, i)
    return self._unit(k).document(j, self.vocab_size)

  def __getstate__(self):
    return {'directory': self.directory, 'split': self.split, 'local': self.local}

  def __setstate__(self, state):
    self.__init__(state['directory'], state['split'], state['local'])

  def describe(self) -> str:
    return (f'prepared:{self.directory}[{self.split}]: {len(self):,} documents, {self.num_tokens:,} tokens from '
            f'{self.manifest["source"]}')


def directory_of(spec: str) -> str:
  directory = spec[len(PREFIX):]
  if not directory:
    raise ValueError("data.source='prepared:' names no directory: use prepared:DIR, where "
                     "`python -m zoo.data.prepare --out=DIR` wrote it")
  return paths.abspath(directory, expanduser=True) if paths.is_local(directory) else directory.rstrip('/')

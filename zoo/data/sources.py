"""Where text comes from. A source spec names it (the recipe field `data.source`):

  default                      English prose every Python has: the docstrings of the standard library and the
                               language reference of `pydoc_data` (about 2 MB; no network, no download)
  text:<glob>                  plain-text files; one document per line, or per blank-line-separated
                               paragraph block with data.text_mode='paragraph'
  jsonl:<glob>:<field>         JSON Lines files, the text in `field`
  parquet:<glob>:<column>      Parquet files, the text in `column`, read a record batch at a time through pyarrow
  tfds:<name>[:<field>]        a TensorFlow Datasets dataset (field 'text' by default), read from
                               data.data_dir through array_record data sources (no TensorFlow needed), or
                               through tf.data when the dataset was prepared as TFRecord and TensorFlow is there
  prepared:<dir>               token shards `python -m zoo.data.prepare` wrote (`zoo.data.prepared`): read by
                               index in constant memory, with the tokenizer they were made with
  mix:<source>@<w>,<source>@<w>,...   a weighted mixture of the sources above (zoo.data.mixture): each read
                               and split on its own, packed apart, its rows mixed at the weights

A <glob> may be local (`**` recurses) or a gs://... URI (any etils.epath filesystem; `*` per level, listed
through epath); every file is read through epath.

`read_documents` returns a random-access sequence of strings and a `Stats` of what was skipped or repaired:
empty files, invalid UTF-8, over-long documents (cut into pieces, nothing dropped), bad JSON lines, null values.
Sources without their own validation split are split deterministically (the same documents every run,
whatever the training seed).
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import json
import logging
import os
import pathlib
import re
import sys
import sysconfig
from typing import Sequence

import numpy as np

from zoo import paths
from zoo.data import mixture, prepared

log = logging.getLogger(__name__)

SPLIT_SEED = 20240101  # the train/validation split does not move with the training seed


@dataclasses.dataclass
class Stats:
  """What reading a source found; `report()` says it in one line."""
  source: str = ''
  files: int = 0
  documents: int = 0
  characters: int = 0
  empty_files: int = 0
  invalid_utf8_lines: int = 0  # decoded with U+FFFD in place of the bad bytes
  split_long_documents: int = 0  # documents over max_doc_chars, cut into pieces
  bad_json_lines: int = 0  # skipped
  missing_field_lines: int = 0  # skipped
  null_values: int = 0  # Parquet rows without text: skipped
  tokens: int = 0  # a prepared source's (it has no characters)

  def report(self) -> str:
    issues = [f'{v} {k.replace("_", " ")}' for k, v in dataclasses.asdict(self).items()
              if k not in ('source', 'files', 'documents', 'characters', 'tokens') and v]
    size = (f'{self.tokens:,} tokens in {self.files} unit(s)' if self.tokens else
            f'{self.characters:,} characters from {self.files} file(s)')
    return (f'{self.source}: {self.documents:,} documents, {size}' +
            (f'; {", ".join(issues)}' if issues else ''))


def _glob_uri(pattern: str, field: str) -> list[str]:
  """The files a gs://... (any epath URI) glob matches, listed through epath: `*`, `?` and `[...]` in any
  part after the bucket; `**` (any depth) is refused, as epath does (one listing per directory on GCS)."""
  parts = pattern.split('/')
  first = next((i for i, part in enumerate(parts) if re.search(r'[*?[]', part)), None)
  if first is None:  # no wildcard: the file itself
    return [pattern] if paths.is_file(pattern) else []
  rest = '/'.join(parts[first:])
  if '**' in rest:
    raise ValueError(f'{field}: {pattern!r}: ** (any depth) works for local files only; on {parts[0]}// list the '
                     f'levels with * (corpus/*/*.txt)')
  return [os.fspath(p) for p in paths.path('/'.join(parts[:first])).glob(rest) if not p.is_dir()]


def expand(pattern: str, field: str = 'data.source') -> list[str]:
  """The files a glob matches, sorted: local ones through glob.glob (`**` recurses), gs://... through epath."""
  if paths.is_local(pattern):
    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if os.path.isfile(f)]
  else:
    files = sorted(_glob_uri(pattern, field))
  if not files:
    like = 'corpus/*.txt and corpus/**/*.txt' if paths.is_local(pattern) else 'gs://bucket/corpus/*/*.txt'
    raise FileNotFoundError(f'{field}: no file matches {pattern!r}; check the path (globs like {like} work)')
  return files


def _decode_lines(path: str, stats: Stats) -> list[str]:
  raw = paths.path(path).read_bytes()
  if not raw.strip():
    stats.empty_files += 1
    log.warning('%s is empty: skipped', path)
    return []
  return [decode_line(line, stats) for line in raw.split(b'\n')]


def pieces(text: str, stats: Stats, max_doc_chars: int) -> list[str]:
  """A document as zoo keeps it: stripped, nothing if blank, cut into max_doc_chars pieces if longer."""
  text = text.strip()
  if not text:
    return []
  if len(text) > max_doc_chars:
    stats.split_long_documents += 1
    return [text[i:i + max_doc_chars] for i in range(0, len(text), max_doc_chars)]
  return [text]


def _add(docs: list[str], text: str, stats: Stats, max_doc_chars: int) -> None:
  docs.extend(pieces(text, stats, max_doc_chars))


def decode_line(line: bytes, stats: Stats) -> str:
  """UTF-8 text, invalid bytes replaced by U+FFFD (and counted)."""
  try:
    return line.decode('utf-8')
  except UnicodeDecodeError:
    stats.invalid_utf8_lines += 1
    return line.decode('utf-8', errors='replace')


def json_text(line: str, field: str, stats: Stats) -> str | None:
  """The text in `field` of one JSON line; None (counted) for a bad line or a record without the field."""
  if not line.strip():
    return None
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    stats.bad_json_lines += 1
    return None
  if not isinstance(record, dict) or field not in record:
    stats.missing_field_lines += 1
    return None
  return str(record[field])


def paragraphs(lines: Sequence[str]):
  """Blank-line-separated blocks of lines, each joined by newlines (data.text_mode='paragraph')."""
  block: list[str] = []
  for line in list(lines) + ['']:
    if line.strip():
      block.append(line)
    elif block:
      yield '\n'.join(block)
      block = []


def read_text(pattern: str, text_mode: str = 'line', max_doc_chars: int = 100_000) -> tuple[list[str], Stats]:
  if text_mode not in ('line', 'paragraph'):
    raise ValueError(f"data.text_mode must be 'line' or 'paragraph', got {text_mode!r}")
  stats, docs = Stats(source=f'text:{pattern}'), []
  for path in expand(pattern):
    stats.files += 1
    lines = _decode_lines(path, stats)
    if text_mode == 'line':
      for line in lines:
        _add(docs, line, stats, max_doc_chars)
    else:
      for block in paragraphs(lines):
        _add(docs, block, stats, max_doc_chars)
  return docs, stats


def read_jsonl(pattern: str, field: str, max_doc_chars: int = 100_000) -> tuple[list[str], Stats]:
  stats, docs = Stats(source=f'jsonl:{pattern}:{field}'), []
  for path in expand(pattern):
    stats.files += 1
    for line in _decode_lines(path, stats):
      text = json_text(line, field, stats)
      if text is not None:
        _add(docs, text, stats, max_doc_chars)
  if stats.missing_field_lines and not docs:
    raise ValueError(f'data.source: no line of {pattern} has the field {field!r}; name the JSON field that '
                     f'holds the text, as jsonl:<glob>:<field>')
  return docs, stats


_TEXT_TYPES = ('string', 'large_string', 'string_view', 'binary', 'large_binary', 'binary_view')


def read_parquet(pattern: str, column: str, max_doc_chars: int = 100_000,
                 batch_rows: int = 4096) -> tuple[list[str], Stats]:
  """The text in `column` of Parquet files, read one record batch of that column at a time: a big file is
  never loaded whole, and the other columns are not read."""
  stats, docs = Stats(source=f'parquet:{pattern}:{column}'), []
  for path in expand(pattern):
    stats.files += 1
    with paths.path(path).open('rb') as fh:  # pyarrow reads the file object: local or gs://...
      for text in parquet_texts(path, fh, column, stats, batch_rows):
        _add(docs, text, stats, max_doc_chars)
  return docs, stats


def parquet_texts(path: str, fh, column: str, stats: Stats, batch_rows: int = 4096):
  """The texts of one Parquet file's `column`, a record batch at a time (nulls skipped and counted)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    f = pq.ParquetFile(fh)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f'data.source: {path} is not a readable Parquet file ({e}); point the glob at .parquet '
                     f'files') from None
  schema = f.schema_arrow
  if column not in schema.names:
    raise ValueError(f'data.source: {path} has no column {column!r}; its columns are {schema.names}: name the '
                     f'column that holds the text, as parquet:<glob>:<column>')
  kind = str(schema.field(column).type)
  if kind not in _TEXT_TYPES:
    raise ValueError(f'data.source: column {column!r} of {path} holds {kind}, not text: name a string column, '
                     f'as parquet:<glob>:<column>')
  if f.metadata.num_rows == 0:
    stats.empty_files += 1
    log.warning('%s has no rows: skipped', path)
    return
  try:
    for batch in f.iter_batches(batch_size=batch_rows, columns=[column]):
      for value in batch.column(0).to_pylist():
        if value is None:
          stats.null_values += 1
          continue
        yield decode_line(value, stats) if isinstance(value, bytes) else value
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f'data.source: reading {path} failed ({e}); the file may be truncated or corrupt') from None


_DOC_SEP = '\n\x1e\n'  # ASCII record separator between documents in the cached file


def default_corpus_text(cache_dir: str | None = None) -> str:
  """The default corpus as one text (documents separated by _DOC_SEP), cached per Python version."""
  cache_dir = cache_dir or os.environ.get('ZOO_CACHE', os.path.expanduser('~/.cache/zoo'))
  version = '.'.join(map(str, sys.version_info[:3]))
  path = os.path.join(cache_dir, f'default_corpus_v2_py{version}.txt')
  if os.path.exists(path):
    return pathlib.Path(path).read_text(encoding='utf-8')
  docs = []
  from pydoc_data.topics import topics  # the language reference, as `help()` shows it
  docs.extend(topics[k] for k in sorted(topics))
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  skip = {'site-packages', 'dist-packages', 'test', 'tests', 'idlelib', 'lib2to3', 'turtledemo', 'pydoc_data'}
  for path_ in sorted(root.rglob('*.py')):
    if skip & set(path_.relative_to(root).parts):
      continue
    try:
      tree = ast.parse(path_.read_bytes())
    except (SyntaxError, ValueError, OSError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 40:
          docs.append(doc)
  text = _DOC_SEP.join(d.strip() for d in docs)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  pathlib.Path(tmp).write_text(text, encoding='utf-8')
  os.replace(tmp, path)
  return text


def read_default(max_doc_chars: int = 100_000, cache_dir: str | None = None) -> tuple[list[str], Stats]:
  stats, docs = Stats(source='default', files=1), []
  for block in default_corpus_text(cache_dir).split(_DOC_SEP):
    _add(docs, block, stats, max_doc_chars)
  return docs, stats


class TfdsDocuments(Sequence[str]):
  """Random access to the text field of a TFDS array_record data source (bytes decoded to str)."""

  def __init__(self, source, field: str):
    self._source, self._field = source, field

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    if not -len(self) <= i < len(self):
      raise IndexError(i)
    value = self._source[i % len(self)][self._field]
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def read_tfds(name: str, field: str, split: str, data_dir: str | None) -> tuple[Sequence[str], Stats]:
  import tensorflow_datasets as tfds
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name, or a registry that needs the network
    raise ValueError(f'data.source tfds:{name}: TFDS cannot find this dataset ({e}); check the name '
                     f'(`tfds.list_builders()`) and data.data_dir') from None
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'data.source tfds:{name} is not prepared in {where}, and zoo does not download: prepare it once on a '
        f'machine with network (`tfds build {name} --file_format=array_record --data_dir=DIR`), copy DIR '
        f'here and set data.data_dir=DIR')
  if field not in builder.info.features:
    raise ValueError(f'data.source tfds:{name} has no feature {field!r}; its features are '
                     f'{list(builder.info.features)}: use tfds:{name}:<field>')
  return read_prepared(builder, name, field, split)


def read_prepared(builder, name: str, field: str, split: str) -> tuple[Sequence[str], Stats]:
  """A prepared TFDS dataset's text: array_record by index (no TensorFlow), TFRecord through tf.data."""
  import tensorflow_datasets as tfds
  split = tfds_split(builder, split, name)
  stats = Stats(source=f'tfds:{name}:{field}[{split}]')
  file_format = str(builder.info.file_format).lower()
  if 'array_record' in file_format:
    docs = TfdsDocuments(builder.as_data_source(split=split), field)
  else:
    try:
      import tensorflow  # noqa: F401
    except ImportError:
      raise RuntimeError(
          f'data.source tfds:{name} was prepared as {file_format}, which needs TensorFlow to read: '
          f'`pip install tensorflow`, or prepare it again with --file_format=array_record') from None
    docs = [x[field].decode('utf-8', errors='replace') if isinstance(x[field], bytes) else str(x[field])
            for x in tfds.as_numpy(builder.as_dataset(split=split))]
  stats.documents = len(docs)
  return docs, stats


def tfds_split(builder, split: str, name: str) -> str:
  splits = list(builder.info.splits)
  if split in splits:
    return split
  if split == 'validation' and 'test' in splits:
    return 'test'
  raise ValueError(f'data.source tfds:{name} has no {split!r} split; its splits are {splits}')


def split_indices(n: int, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """A fixed pseudo-random (train, validation) partition of range(n); at least one validation document."""
  if not 0 < validation_fraction < 1:
    raise ValueError(f'data.validation_fraction must be in (0, 1), got {validation_fraction}')
  if n < 2:
    raise ValueError(f'the corpus has {n} document(s): at least 2 are needed to hold one out for validation')
  perm = np.random.default_rng(SPLIT_SEED).permutation(n)
  n_val = max(1, int(round(n * validation_fraction)))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def has_name(rest: str) -> bool:
  """Whether '<glob>:<field>' ends with a field (the ':' of a gs:// glob is not one)."""
  return rest.count(':') >= 1 and not rest.rpartition(':')[2].startswith('//')


def read_documents(source: str, *, split: str = 'train', data_dir: str | None = None,
                   validation_fraction: float = 0.01, text_mode: str = 'line', max_doc_chars: int = 100_000,
                   cache_dir: str | None = None) -> tuple[Sequence[str], Stats]:
  """The documents of `split` ('train' or 'validation') of a source spec (see the module docstring)."""
  if split not in ('train', 'validation'):
    raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
  if mixture.is_mixture(source):
    return read_mixture(source, split=split, data_dir=data_dir, validation_fraction=validation_fraction,
                        text_mode=text_mode, max_doc_chars=max_doc_chars, cache_dir=cache_dir)
  kind, _, rest = source.partition(':')
  if prepared.is_prepared(source):
    docs = prepared.PreparedSplit(prepared.directory_of(source), split)
    stats = Stats(source=f'{source}[{split}]', documents=len(docs), files=len(docs.manifest['units']),
                  tokens=docs.num_tokens)
    return docs, stats
  if kind == 'tfds':
    name, _, field = rest.partition(':')
    return read_tfds(name, field or 'text', split, data_dir)
  if kind == 'default':
    docs, stats = read_default(max_doc_chars, cache_dir)
  elif kind == 'text' and rest:
    docs, stats = read_text(rest, text_mode, max_doc_chars)
  elif kind == 'jsonl' and has_name(rest):
    pattern, _, field = rest.rpartition(':')
    docs, stats = read_jsonl(pattern, field, max_doc_chars)
  elif kind == 'parquet' and has_name(rest):
    pattern, _, column = rest.rpartition(':')
    docs, stats = read_parquet(pattern, column, max_doc_chars)
  else:
    raise ValueError(f"data.source={source!r} is not a source: use 'default', 'text:<glob>', "
                     f"'jsonl:<glob>:<field>', 'parquet:<glob>:<column>', 'tfds:<name>[:<field>]', "
                     f"'prepared:<dir>' or 'mix:<source>@<weight>,...'")
  if not docs:
    raise ValueError(f'data.source={source!r} holds no text ({stats.report()}): point it at non-empty files')
  train, val = split_indices(len(docs), validation_fraction)
  chosen = [docs[i] for i in (train if split == 'train' else val)]
  stats.documents, stats.characters = len(chosen), sum(map(len, chosen))
  stats.source += f'[{split}]'
  return chosen, stats


def read_mixture(spec: str, *, split: str = 'train', **kwargs) -> tuple[mixture.MixedDocuments, Stats]:
  """Every part of a 'mix:' spec read as its own source (its own validation split), kept apart in a
  `mixture.MixedDocuments`; the Stats add the parts' up (each part's are in `docs.stats`)."""
  parts = mixture.parse(spec)
  read = [read_documents(p.source, split=split, **kwargs) for p in parts]
  stats = Stats(source=f'{spec}[{split}]')
  for _, s in read:
    for f in dataclasses.fields(Stats):
      if f.name != 'source':
        setattr(stats, f.name, getattr(stats, f.name) + getattr(s, f.name))
  return mixture.MixedDocuments(parts, [d for d, _ in read], [s for _, s in read]), stats

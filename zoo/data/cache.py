"""train.py's preparation cache (`data.prepare=True`): the first run tokenizes data.source into token shards
(`zoo.data.prepare`, with a progress bar) in a directory named by a hash of what decides their contents, and this
run and every later one with the same source and tokenizer train on them (`prepared:DIR`) in constant memory.

The key holds the source spec, its files' paths, sizes and modification times (an edited file is prepared
anew), the reading options (text_mode, max_doc_chars, validation_fraction), the sentence and word flags the
objective needs, and the tokenizer: the file's hash for data.tokenizer=<model>, or the training settings
(vocab_size, type, sentinels, sample size) for 'train', whose tokenizer is trained on a bounded sample during the
preparation. Each part of a mixture is prepared on its own, the later ones with the first one's tokenizer.

The cache lives in data.prepared_dir, by default $ZOO_CACHE/prepared (~/.cache/zoo/prepared). A multi-process
run prepares it together (process i does units k % n == i) and so needs a data.prepared_dir that every process
sees (a bucket). Delete a directory there to prepare it again.

>>> key_of({'source': 'default', 'tokenizer': 'train'}) == key_of({'source': 'default', 'tokenizer': 'train'})
True
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time

from zoo import paths
from zoo.data import mixture, prepare, prepared, sources

log = logging.getLogger('zoo')


def root(prepared_dir: str = '') -> str:
  if prepared_dir:
    return paths.abspath(prepared_dir, expanduser=True)
  return os.path.join(os.environ.get('ZOO_CACHE', os.path.expanduser('~/.cache/zoo')), 'prepared')


def fingerprint(spec: str) -> list:
  """The files a spec reads, with their sizes and modification times (none for a dataset named by name)."""
  kind, _, rest = spec.partition(':')
  if kind not in ('text', 'jsonl', 'parquet') or not rest:
    return []
  pattern = rest if kind == 'text' else rest.rpartition(':')[0]
  out = []
  for f in sources.expand(pattern):
    if paths.is_local(f):
      st = os.stat(f)
      out.append([f, st.st_size, st.st_mtime_ns])
    else:
      st = paths.path(f).stat()
      out.append([f, st.length, st.mtime])
  return out


def key_of(fields: dict) -> str:
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _wait_for(path: str, seconds: float, what: str) -> None:
  deadline = time.time() + seconds
  while not paths.path(path).exists():
    if time.time() > deadline:
      raise TimeoutError(f'{path} did not appear in {seconds:.0f} s: {what}')
    time.sleep(2)


def ensure(data, *, sentences: bool, kept_tokenizer: str | None = None, shard: int = 0, num_shards: int = 1,
           wait_s: float = 86_400.0) -> dict:
  """{part of data.source: its prepared directory} (see the module docstring), preparing what is missing.

  data: the config's `data` section. kept_tokenizer: a workdir's tokenizer.model, used when a directory must be
  prepared for a run that trained its tokenizer before (its cache was deleted)."""
  if num_shards > 1 and not data.prepared_dir:
    raise ValueError('data.prepare in a run of several processes prepares the corpus together: set '
                     'data.prepared_dir to a path every process sees (gs://bucket/prepared)')
  parts = [p.source for p in mixture.parse(data.source)] if mixture.is_mixture(data.source) else [data.source]
  tokenizer = None if data.tokenizer == 'train' else data.tokenizer
  out = {}
  for spec in parts:
    if prepared.is_prepared(spec):
      out[spec] = prepared.directory_of(spec)
      continue
    tok_key = (prepared.sha256_bytes(paths.path(tokenizer).read_bytes()) if tokenizer else
               ['train', data.vocab_size, data.tokenizer_type, data.num_sentinels, data.tokenizer_sample_chars])
    fields = {'source': spec, 'files': fingerprint(spec), 'tokenizer': tok_key, 'text_mode': data.text_mode,
              'max_doc_chars': data.max_doc_chars, 'validation_fraction': data.validation_fraction,
              'sentences': sentences, 'word_segmenter': data.word_segmenter, 'data_dir': data.data_dir,
              'format': prepared.FORMAT}
    name = re.sub(r'[^A-Za-z0-9]+', '_', spec).strip('_')[:40]
    directory = paths.join(root(data.prepared_dir), f'{name}-{key_of(fields)}')
    manifest = paths.join(directory, 'manifest.json')
    if not paths.path(manifest).exists():
      use = tokenizer or (kept_tokenizer if kept_tokenizer and paths.is_file(kept_tokenizer) else None)
      log.info('preparing %s into %s, once: later runs with this source and tokenizer read it', spec, directory)
      done = prepare.prepare(
          spec, directory, tokenizer=use, vocab_size=None if use else data.vocab_size,
          model_type=data.tokenizer_type, num_sentinels=data.num_sentinels,
          sample_chars=data.tokenizer_sample_chars, shard=shard, num_shards=num_shards, progress=shard == 0,
          wait_s=wait_s, text_mode=data.text_mode, max_doc_chars=data.max_doc_chars,
          validation_fraction=data.validation_fraction, sentences=sentences, word_segmenter=data.word_segmenter,
          data_dir=data.data_dir)
      if done is None:  # the other processes' units
        _wait_for(manifest, wait_s, 'another process has not finished its units of the preparation')
    tokenizer = tokenizer or paths.join(directory, 'tokenizer.model')  # the mixture's later parts share it
    out[spec] = directory
  return out

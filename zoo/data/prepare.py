"""Tokenize a corpus once into token shards that training reads by random access (`data.source=prepared:DIR`).

  python -m zoo.data.prepare --source='text:corpus/*.txt' --out=DIR --vocab_size=32000
  python -m zoo.data.prepare --source='jsonl:web/*.jsonl:text' --out=gs://bucket/web --tokenizer=tok.model

The source is any single `data.source` spec (text, jsonl, parquet, tfds, default), or a HuggingFace `datasets`
dataset: `hf:<dir>[:<field>]` for a directory `save_to_disk` wrote, `hf:<Hub name>[:<field>]` (`--hf_config`)
for one on the Hub or in HF's cache (field 'text' by default). The corpus is cut into work
units (byte ranges of line-per-document files, aligned to lines; whole files for paragraph mode and Parquet;
record ranges of a TFDS or HF split), which `--workers` processes tokenize in parallel, each streaming its unit in
blocks: memory does not grow with the corpus. Each unit's files are written under temporary names, renamed,
and recorded last in units/<unit>.json: a killed preparation, run again, skips the complete units and redoes
the rest, and gives the same files as a run never killed (the work is deterministic). When every unit is done,
manifest.json is written (see `zoo.data.prepared` for the layout).

Many machines prepare one corpus together: each runs the same command with `--shard=i --num_shards=N` (by
default JAX_PROCESS_ID and JAX_NUM_PROCESSES, as in a multi-host job) and does the units k with k % N == i; the
last to finish writes the manifest. A trained tokenizer (`--vocab_size`) is trained by shard 0 on a uniform
sample of `--tokenizer_sample_chars` characters (10M by default) drawn by random reads, so its time does not
depend on the corpus size; the other shards wait for it.

Documents go to the validation split by a hash of their text (`--validation_fraction`, 1% by default; equal
documents land in the same split), and the first document of the first unit always does, so the split is the
same whatever the number of units, workers or shards.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
import uuid

import numpy as np

from zoo import paths
from zoo.data import prepared, sources, units as units_lib
from zoo.data.units import Options
from zoo.data import tokenizer as tk

log = logging.getLogger('zoo')

BATCH_CHARS = 1 << 20  # text tokenized in one call


class _SplitWriter:
  """One unit's token, index and flag files of one split, written under temporary names until `finish`."""

  def __init__(self, directory: str, unit: str, split: str, dtype, flags: bool):
    self.final = {k: prepared.unit_file(directory, unit, split, k) for k in ('tokens', 'index') + ('flags',) * flags}
    self.tmp = {k: f'{f}.tmp-{uuid.uuid4().hex[:8]}' for k, f in self.final.items()}
    self.fh = {k: paths.path(f).open('wb') for k, f in self.tmp.items() if k != 'index'}
    self.sha = {k: hashlib.sha256() for k in self.final}
    self.dtype, self.lengths = np.dtype(dtype), []

  def add(self, ids: list[list[int]], flags: list[np.ndarray] | None) -> None:
    self.lengths += map(len, ids)
    for kind, data in (('tokens', np.fromiter(itertools.chain.from_iterable(ids), self.dtype)),
                       ('flags', np.concatenate(flags).astype(np.uint8) if flags else None)):
      if data is not None and kind in self.fh:
        buf = data.tobytes()
        self.fh[kind].write(buf)
        self.sha[kind].update(buf)

  def finish(self) -> dict:
    index = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int64).tobytes()
    with paths.path(self.tmp['index']).open('wb') as fh:
      fh.write(index)
    self.sha['index'].update(index)
    for fh in self.fh.values():
      fh.close()
    for kind, tmp in self.tmp.items():
      paths.path(tmp).replace(self.final[kind])
    return {'documents': len(self.lengths), 'tokens': int(sum(self.lengths)),
            'sha256': {k: h.hexdigest() for k, h in self.sha.items()}}


_TOKENIZERS: dict = {}


def _tokenizer(path: str):
  if path not in _TOKENIZERS:  # once per worker process
    if paths.path(path).is_dir():
      from zoo.data import hf_tokenizer
      _TOKENIZERS[path] = hf_tokenizer.HFTokenizer.load(path)
    else:
      _TOKENIZERS[path] = tk.Tokenizer.load(path)
  return _TOKENIZERS[path]


def _encode(tok, texts: list[str], opts: Options) -> tuple[list[list[int]], list | None]:
  if not isinstance(tok, tk.Tokenizer):  # a HuggingFace tokenizer: ids only, no special tokens added
    return tok.encode_batch(texts), None
  if not (opts.sentences or opts.word_segmenter):
    return tok.encode_batch(texts, num_threads=1), None
  ids, flags = [], []
  for text in texts:
    doc, starts = tok.encode_sentences(text)
    flag = np.concatenate([[1], np.diff(starts) > 0]).astype(np.uint8)[:len(doc)] * prepared.SENTENCE_START
    if opts.word_segmenter:
      flag |= tok.encode_words(text, opts.word_segmenter)[1].astype(np.uint8) * prepared.WORD_START
    ids.append(doc)
    flags.append(flag)
  return ids, flags


def prepare_unit(directory: str, unit: dict, opts: Options, tokenizer_path: str, dtype: str) -> dict:
  """Tokenize one unit into its files and record it in units/<unit>.json (a worker's job)."""
  tok, stats = _tokenizer(tokenizer_path), sources.Stats(source=opts.source)
  flags = opts.sentences or bool(opts.word_segmenter)
  fixed = unit.get('split')  # a unit of a dataset's own split (TFDS, HF) belongs to it
  writers = {s: _SplitWriter(directory, unit['name'], s, dtype, flags) for s in prepared.SPLITS}
  batch: list[str] = []
  first = unit['name'] == '00000'

  def flush():
    ids, flag = _encode(tok, batch, opts)
    chosen = [fixed or ('validation' if (first and i == 0 and not writers['validation'].lengths
                                         and not writers['train'].lengths) or
                        units_lib.is_validation(t, opts.validation_fraction) else 'train') for i, t in enumerate(batch)]
    for split in prepared.SPLITS:
      keep = [i for i, s in enumerate(chosen) if s == split]
      if keep:
        writers[split].add([ids[i] for i in keep], [flag[i] for i in keep] if flag else None)
    batch.clear()

  chars = 0
  for text in units_lib.documents(unit, opts, stats):
    batch.append(text)
    stats.documents += 1
    stats.characters += len(text)
    chars += len(text)
    if chars >= BATCH_CHARS:
      flush()
      chars = 0
  if batch:
    flush()
  if unit.get('start', 0) == 0 and unit['kind'] in ('lines', 'parquet') and not stats.documents:
    stats.empty_files += 1
    log.warning('%s holds no text: skipped', unit['path'])
  record = {'name': unit['name'], **{s: w.finish() for s, w in writers.items()},
            'stats': {k: v for k, v in dataclasses.asdict(stats).items() if k != 'source'}}
  _write_json(paths.join(directory, 'units', f'{unit["name"]}.json'), record)
  return record


def _write_json(path: str, data: dict) -> None:
  """Atomically: a reader sees the old file or the whole new one."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  paths.path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))
  paths.path(tmp).replace(path)


def _done(directory: str, unit: dict) -> dict | None:
  path = paths.join(directory, 'units', f'{unit["name"]}.json')
  if not paths.path(path).exists():
    return None
  try:
    return json.loads(paths.path(path).read_text())
  except json.JSONDecodeError:
    return None


def _plan(directory: str, opts: Options, units: list[dict], tok) -> dict:
  if isinstance(tok, tk.Tokenizer):
    info = {'file': 'tokenizer.model', 'kind': 'zoo', 'sha256': prepared.sha256_bytes(tok.model_proto),
            'vocab_size': tok.vocab_size}
  else:
    info = {'file': 'tokenizer', 'kind': 'hf', 'sha256': _files_sha(paths.join(directory, 'tokenizer')),
            'vocab_size': tok.vocab_size}
  return {'format': prepared.FORMAT, 'options': dataclasses.asdict(opts), 'units': units, 'tokenizer': info,
          'dtype': 'uint16' if info['vocab_size'] <= 1 << 16 else 'uint32'}


_HF_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'vocab.txt',
             'vocab.json', 'merges.txt', 'spiece.model', 'config.json')


def _hf_files(directory: str) -> dict:
  return {n: paths.path(directory).joinpath(n).read_bytes() for n in _HF_FILES
          if paths.path(directory).joinpath(n).exists()}


def _files_sha(directory: str) -> str:
  return prepared.sha256_bytes(b''.join(n.encode() + b'\0' + prepared.sha256_bytes(b).encode()
                                        for n, b in sorted(_hf_files(directory).items())))


def _hf_tokenizer_for(directory: str, tokenizer: str, opts: Options):
  """A HuggingFace tokenizer directory's files copied to DIR/tokenizer/ (its ids and special ids kept)."""
  from zoo.data import hf_tokenizer
  if opts.sentences or opts.word_segmenter:
    raise ValueError('--sentences and --word_segmenter record offsets that only a zoo SentencePiece tokenizer gives: '
                     'prepare with --tokenizer=<zoo .model> or --vocab_size=N')
  if hf_tokenizer.usable_files(tokenizer) is None:
    raise ValueError(f'--tokenizer={tokenizer} is a directory without HuggingFace tokenizer files (tokenizer.json, '
                     f'spiece.model, vocab.txt, or vocab.json and merges.txt)')
  target, files = paths.join(directory, 'tokenizer'), _hf_files(tokenizer)
  if paths.path(directory).joinpath('tokenizer.model').exists() or (
      paths.path(target).exists() and _hf_files(target) != files):
    raise ValueError(f'--out={directory} was prepared with another tokenizer than --tokenizer={tokenizer}: use a '
                     f'new --out')
  paths.path(target).mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    if not paths.path(target).joinpath(name).exists():
      tmp = paths.join(target, f'.{name}.tmp-{uuid.uuid4().hex[:8]}')
      paths.path(tmp).write_bytes(data)
      paths.path(tmp).replace(paths.join(target, name))
  return hf_tokenizer.HFTokenizer.load(target)


def _check_plan(directory: str, plan: dict) -> None:
  """Refuse to mix shards of two preparations in one directory; write the plan if it is the first."""
  path = paths.join(directory, 'plan.json')
  if paths.path(path).exists():
    old = json.loads(paths.path(path).read_text())
    for key, what in (('tokenizer', 'tokenizer'), ('options', 'source or options'),
                      ('units', 'set of input files (or their sizes, or --unit_mb)')):
      if old.get(key) != plan[key]:
        raise ValueError(f'--out={directory} holds a preparation with another {what} ({path}): use a new --out, '
                         f'or the same command as the first time to continue it')
  else:
    _write_json(path, plan)


def _tokenizer_for(directory: str, opts: Options, units: list[dict], tokenizer: str | None, vocab_size: int | None,
                   num_sentinels: int, sample_chars: int, shard: int, wait_s: float, model_type: str = 'unigram'):
  """The tokenizer file DIR/tokenizer.model: copied, reused from an earlier run, or trained by shard 0; or a
  HuggingFace tokenizer directory's files in DIR/tokenizer/."""
  path = paths.join(directory, 'tokenizer.model')
  if tokenizer and paths.path(tokenizer).is_dir():
    return _hf_tokenizer_for(directory, tokenizer, opts)
  if tokenizer:
    tok = tk.Tokenizer.load(tokenizer)
    if paths.path(path).exists() and paths.path(path).read_bytes() != tok.model_proto:
      raise ValueError(f'--out={directory} was prepared with another tokenizer than --tokenizer={tokenizer}: use a '
                       f'new --out, or the tokenizer it was made with ({path})')
    if not paths.path(path).exists():
      tok.save(path)
    return tok
  if not vocab_size:
    raise ValueError('give --tokenizer=MODEL (a SentencePiece model zoo trained) or --vocab_size=N (train one on a '
                     'sample of the corpus)')
  if paths.path(path).exists() or shard != 0:
    deadline = time.time() + wait_s
    while not paths.path(path).exists():  # shard 0 trains it
      if time.time() > deadline:
        raise TimeoutError(f'{path} did not appear in {wait_s:.0f} s: start shard 0 (--shard=0), which trains it')
      time.sleep(2)
    tok = tk.Tokenizer.load(path)
    if vocab_size not in (tok.requested_vocab_size, tok.vocab_size):
      raise ValueError(f'{path} has {tok.vocab_size} pieces, not --vocab_size={vocab_size}: use a new --out')
    return tok
  start = time.perf_counter()
  sample = units_lib.sample_documents(units, opts, sample_chars)
  log.info('tokenizer sample: %s documents, %s characters in %.1f s', f'{len(sample):,}',
           f'{sum(map(len, sample)):,}', time.perf_counter() - start)
  tok = tk.train_tokenizer(sample, vocab_size, model_type=model_type, num_sentinels=num_sentinels,
                           seed_field='--vocab_size', source=f'a sample of {opts.source}')
  _publish(path, tok.model_proto)
  return tk.Tokenizer.load(path)  # the first one written, if another run trained one at the same time


def _publish(path: str, data: bytes) -> None:
  """Write path unless it exists: of two preparations started at once, both tokenize with the first tokenizer
  (SentencePiece's threaded training need not give the same bytes twice). Local files only: a bucket keeps the
  last one written."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  paths.path(tmp).write_bytes(data)
  if paths.is_local(path):
    try:
      os.link(tmp, path)  # fails where path exists: atomic create-if-absent
    except FileExistsError:
      pass
    os.unlink(tmp)
  else:
    paths.path(tmp).replace(path)


def _manifest(directory: str, plan: dict, records: list[dict]) -> dict:
  totals = {s: {k: sum(r[s][k] for r in records) for k in ('documents', 'tokens')} for s in prepared.SPLITS}
  stats = {k: sum(r['stats'][k] for r in records) for k in records[0]['stats']} if records else {}
  opts = plan['options']
  features = (['sentence_starts'] if opts['sentences'] else []) + (['word_starts'] if opts['word_segmenter'] else [])
  return {'format': prepared.FORMAT, 'source': opts['source'], 'options': opts, 'tokenizer': plan['tokenizer'],
          'dtype': plan['dtype'], 'features': features, 'split_rule': 'blake2b-64 of the text < fraction; the first '
          'document of unit 00000', 'totals': totals, 'stats': stats,
          'units': [{**{k: v for k, v in u.items() if k != 'name'}, **r} for u, r in zip(plan['units'], records)]}


def prepare(source: str, out: str, *, tokenizer: str | None = None, vocab_size: int | None = None,
            num_sentinels: int = 100, model_type: str = 'unigram', workers: int | None = None, shard: int = 0, num_shards: int = 1,
            unit_bytes: int = units_lib.UNIT_BYTES, sample_chars: int = 10_000_000, progress: bool = True,
            wait_s: float = 3600.0, **options) -> dict | None:
  """Prepare `source` into `out` (see the module docstring): the manifest, or None while other shards work."""
  if not 0 <= shard < num_shards:
    raise ValueError(f'--shard={shard} must be in [0, --num_shards={num_shards})')
  opts = Options(source=source, **options)
  if not 0 < opts.validation_fraction < 1:
    raise ValueError(f'--validation_fraction must be in (0, 1), got {opts.validation_fraction}')
  out = paths.abspath(out, expanduser=True)
  units = units_lib.plan_units(opts, unit_bytes)
  paths.path(out).joinpath('units').mkdir(parents=True, exist_ok=True)
  tok = _tokenizer_for(out, opts, units, tokenizer, vocab_size, num_sentinels, sample_chars, shard, wait_s,
                       model_type)
  plan = _plan(out, opts, units, tok)
  _check_plan(out, plan)
  mine = [u for k, u in enumerate(units) if k % num_shards == shard and _done(out, u) is None]
  for u in mine:  # what a killed run of these units left half-written
    for stale in paths.path(out).joinpath('units').glob(f'{u["name"]}.*.tmp-*'):
      stale.unlink()
  workers = min(workers or os.cpu_count() or 1, len(mine)) or 1  # a worker more than units only costs its start
  sizes = {u['name']: u.get('end', 1) - u.get('start', 0) for u in mine}
  bar = _progress(progress, sum(sizes.values()), f'shard {shard}/{num_shards}' if num_shards > 1 else '')
  start, tokens = time.perf_counter(), 0
  args = (os.fspath(paths.join(out, plan['tokenizer']['file'])), plan['dtype'])
  if workers == 1:
    for u in mine:
      record = prepare_unit(out, u, opts, *args)
      tokens += record['train']['tokens'] + record['validation']['tokens']
      bar.update(sizes[u['name']])
  elif mine:
    # spawned, not forked: a fork copies the parent's threads' locks (array_record's, JAX's) mid-use
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
      jobs = {pool.submit(prepare_unit, out, u, opts, *args): u['name'] for u in mine}
      for job in concurrent.futures.as_completed(jobs):
        record = job.result()
        tokens += record['train']['tokens'] + record['validation']['tokens']
        bar.update(sizes[jobs[job]])
  bar.close()
  seconds = time.perf_counter() - start
  if mine:
    log.info('%s tokens from %d unit(s) in %.1f s (%s tokens/s, %d worker(s))', f'{tokens:,}', len(mine), seconds,
             f'{tokens / max(seconds, 1e-9):,.0f}', workers)
  records = [_done(out, u) for u in units]
  if any(r is None for r in records):
    log.info('%d unit(s) await the other shards; the last to finish writes %s/manifest.json',
             sum(r is None for r in records), out)
    return None
  manifest = _manifest(out, plan, records)
  _write_json(paths.join(out, 'manifest.json'), manifest)
  return manifest


def verify(directory: str) -> int:
  """Hash every shard file against its manifest: the number of documents checked (an error names a bad file)."""
  manifest = prepared.load_manifest(directory)
  for unit in manifest['units']:
    for split in prepared.SPLITS:
      for kind, want in unit[split]['sha256'].items():
        f = prepared.unit_file(directory, unit['name'], split, kind)
        h = hashlib.sha256()
        with paths.path(f).open('rb') as fh:
          for block in iter(lambda: fh.read(units_lib.BLOCK_BYTES), b''):
            h.update(block)
        if h.hexdigest() != want:
          raise prepared.PreparedError(f'{f} does not match its sha256 in the manifest: the shard is damaged; '
                                       f'delete units/{unit["name"]}.json and run the preparation again to redo it')
  return sum(manifest['totals'][s]['documents'] for s in prepared.SPLITS)


class _NoBar:
  def update(self, n):
    del n

  def close(self):
    pass


def _progress(enabled: bool, total: int, desc: str):
  if not enabled or not total:
    return _NoBar()
  import tqdm
  return tqdm.tqdm(total=total, unit='B', unit_scale=True, desc=desc or 'prepare', file=sys.stderr,
                   disable=None)


def main(argv=None) -> None:
  from zoo import cli
  parser = argparse.ArgumentParser(prog='python -m zoo.data.prepare', description=__doc__.split('\n')[0])
  parser.add_argument('--source', help="'text:<glob>', 'jsonl:<glob>:<field>', 'parquet:<glob>:<column>', "
                                       "'tfds:<name>[:<field>]', 'hf:<dataset dir or Hub name>[:<field>]' or "
                                       "'default'")
  parser.add_argument('--out', help='the directory to write (local, or gs://...)')
  parser.add_argument('--tokenizer', default=None, help='a SentencePiece .model that zoo trained, or a HuggingFace '
                                                        'tokenizer directory')
  parser.add_argument('--vocab_size', type=int, default=None, help='train a tokenizer of this size on a sample')
  parser.add_argument('--num_sentinels', type=int, default=100)
  parser.add_argument('--model_type', choices=('unigram', 'bpe'), default='unigram', help='of a trained tokenizer')
  parser.add_argument('--tokenizer_sample_chars', type=int, default=10_000_000)
  parser.add_argument('--workers', type=int, default=0, help='tokenizing processes (default: one per core)')
  parser.add_argument('--shard', type=int, default=int(os.environ.get('JAX_PROCESS_ID', 0)))
  parser.add_argument('--num_shards', type=int, default=int(os.environ.get('JAX_NUM_PROCESSES', 1)))
  parser.add_argument('--text_mode', choices=('line', 'paragraph'), default='line')
  parser.add_argument('--max_doc_chars', type=int, default=100_000)
  parser.add_argument('--validation_fraction', type=float, default=0.01)
  parser.add_argument('--sentences', action='store_true', help='record sentence starts (NSP, SOP)')
  parser.add_argument('--word_segmenter', default='', choices=('', 'jieba'), help='record Chinese word starts')
  parser.add_argument('--data_dir', default='', help='TFDS data_dir')
  parser.add_argument('--hf_config', default='', help="a HuggingFace dataset's configuration name")
  parser.add_argument('--unit_mb', type=int, default=units_lib.UNIT_BYTES >> 20, help='MB of text per work unit')
  parser.add_argument('--verify', metavar='DIR', default=None, help='check a prepared directory\'s hashes')
  args = parser.parse_args(argv)
  cli.quiet_logs()
  if args.verify:
    n = cli.guard(verify, args.verify)
    print(f'{args.verify}: every shard matches its manifest ({n:,} documents)')
    return
  if not args.source or not args.out:
    parser.error('give --source and --out (or --verify=DIR)')
  manifest = cli.guard(prepare, args.source, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       num_sentinels=args.num_sentinels, model_type=args.model_type, workers=args.workers or None, shard=args.shard,
                       num_shards=args.num_shards, unit_bytes=args.unit_mb << 20,
                       sample_chars=args.tokenizer_sample_chars, text_mode=args.text_mode,
                       max_doc_chars=args.max_doc_chars, validation_fraction=args.validation_fraction,
                       sentences=args.sentences, word_segmenter=args.word_segmenter, data_dir=args.data_dir,
                       hf_config=args.hf_config)
  if manifest is not None:
    t = manifest['totals']
    print(f'wrote {args.out}: {t["train"]["documents"]:,} training documents ({t["train"]["tokens"]:,} tokens), '
          f'{t["validation"]["documents"]:,} validation ({t["validation"]["tokens"]:,} tokens); train with '
          f'--config.data.source=prepared:{args.out}')


if __name__ == '__main__':
  main()

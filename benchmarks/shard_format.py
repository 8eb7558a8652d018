"""Which on-disk format prepared token shards use: flat token arrays with an offset index (memory-mapped) or
ArrayRecord (one record per document, read through grain), compared side by side on the same documents.

  python benchmarks/shard_format.py [--documents=300000] [--reads=200000] [--repeats=3]

Prints one JSON line per format and repeat: write seconds, bytes on disk, and documents and tokens per second for
random reads by index (what a shuffled training run does: grain asks for one document at a time), for reads in
order (an evaluation pass), and for ArrayRecord also 1,000 random records per call (its batched read).
"""
import argparse
import datetime
import json
import os
import tempfile
import time

import grain
import numpy as np
from array_record.python import array_record_module

import prepared_corpus  # benchmarks/ is on the path of a script run from it
from zoo.data import prepared, sources
from zoo.data import tokenizer as tk


def corpus(n: int) -> tuple[list[np.ndarray], tk.Tokenizer]:
  docs, _ = sources.read_documents('default')
  tok = tk.train_tokenizer(docs, vocab_size=8000, num_sentinels=0)
  ids = [np.asarray(x, np.uint16) for x in tok.encode_batch(docs)]
  return [ids[i % len(ids)] for i in range(n)], tok


def write_flat(directory: str, docs: list[np.ndarray]) -> None:
  os.makedirs(f'{directory}/units', exist_ok=True)
  np.concatenate(docs).tofile(prepared.unit_file(directory, '00000', 'train', 'tokens'))
  index = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
  index.tofile(prepared.unit_file(directory, '00000', 'train', 'index'))


class Flat:
  def __init__(self, directory: str):
    self.tokens = np.memmap(prepared.unit_file(directory, '00000', 'train', 'tokens'), np.uint16, mode='r')
    self.index = np.memmap(prepared.unit_file(directory, '00000', 'train', 'index'), np.int64, mode='r')

  def __getitem__(self, i):
    return np.asarray(self.tokens[self.index[i]:self.index[i + 1]]).astype(np.int32)


def write_array_record(path: str, docs: list[np.ndarray]) -> None:
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')  # random access: a record per chunk
  for d in docs:
    writer.write(d.tobytes())
  writer.close()


class Records:
  def __init__(self, path: str):
    self.source = grain.sources.ArrayRecordDataSource([path])

  def __getitem__(self, i):
    return np.frombuffer(self.source[int(i)], np.uint16).astype(np.int32)

  def many(self, indices):  # ArrayRecord's fast path: one call for many records
    return [np.frombuffer(r, np.uint16).astype(np.int32) for r in self.source.__getitems__([int(i) for i in indices])]


def read_rate(reader, order, batch: int = 1) -> tuple[float, float]:
  start, tokens = time.perf_counter(), 0
  for k in range(0, len(order), batch):
    got = reader.many(order[k:k + batch]) if batch > 1 else [reader[order[k]]]
    tokens += sum(map(len, got))
  seconds = time.perf_counter() - start
  return len(order) / seconds, tokens / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--documents', type=int, default=300_000)
  parser.add_argument('--reads', type=int, default=200_000)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  docs, _ = corpus(args.documents)
  rng = np.random.default_rng(0)
  shuffled = rng.permutation(args.documents)[:args.reads]
  ordered = np.arange(min(args.reads, args.documents))
  machine = {**prepared_corpus.machine(),
             'date': datetime.date.today().isoformat(), 'command': 'python benchmarks/shard_format.py'}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(args.repeats):
      for name in ('flat_memmap', 'array_record'):
        where = f'{tmp}/{name}{repeat}'
        start = time.perf_counter()
        if name == 'flat_memmap':
          write_flat(where, docs)
          size = sum(os.path.getsize(os.path.join(where, 'units', f)) for f in os.listdir(f'{where}/units'))
        else:
          write_array_record(where, docs)
          size = os.path.getsize(where)
        written = time.perf_counter() - start
        reader = Flat(where) if name == 'flat_memmap' else Records(where)
        random_docs, random_tokens = read_rate(reader, shuffled)
        ordered_docs, ordered_tokens = read_rate(reader, ordered)
        batched = read_rate(reader, shuffled, 1000)[0] if hasattr(reader, 'many') else None
        print(json.dumps({'format': name, 'repeat': repeat, 'documents': args.documents,
                          'tokens': int(sum(map(len, docs))), 'write_s': round(written, 3), 'bytes': size,
                          'random_docs_per_s': round(random_docs), 'random_tokens_per_s': round(random_tokens),
                          'ordered_docs_per_s': round(ordered_docs), 'ordered_tokens_per_s': round(ordered_tokens),
                          'random_docs_per_s_1000_per_call': batched and round(batched),
                          **machine}), flush=True)


if __name__ == '__main__':
  main()

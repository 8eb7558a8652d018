"""Tokens per second the input pipeline delivers, and how full its rows are, printed as JSON.

  python benchmarks/input_pipeline.py [--source=default] [--seq_len=128] [--batch_size=32] [--batches=200]

Every packing mode and worker count runs in the same process, one after the other, on the same corpus and
tokenizer, so the figures compare side by side.
"""
import argparse
import json
import os
import tempfile
import time

from zoo.data import pipeline, sources
from zoo.data import tokenizer as tk


def measure(docs, tok, packing, workers, args):
  ds = pipeline.make_dataset(docs, tok, seq_len=args.seq_len, batch_size=args.batch_size, packing=packing,
                             num_workers=workers)
  it = iter(ds)
  t0 = time.perf_counter()
  first = next(it)  # start-up: worker processes, first tokenization
  startup = time.perf_counter() - t0
  batches = [first]
  t0 = time.perf_counter()
  for _ in range(args.batches):
    batches.append(next(it))
  elapsed = time.perf_counter() - t0
  if hasattr(it, 'close'):
    it.close()  # stop prefetch threads and worker processes before the next run
  tokens = args.batches * args.batch_size * args.seq_len
  return dict(packing=packing, workers=workers, tokens_per_s=round(tokens / elapsed),
              real_tokens_per_s=round(tokens * pipeline.fill_rate(batches[1:]) / elapsed),
              fill_rate=round(pipeline.fill_rate(batches), 4), startup_s=round(startup, 3))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', default='default')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--workers', default='0,2', help='comma-separated worker counts to compare')
  args = parser.parse_args()
  docs, stats = sources.read_documents(args.source)
  t0 = time.perf_counter()
  tok = tk.train_tokenizer(docs, args.vocab_size, path=os.path.join(tempfile.mkdtemp(), 'spm.model'))
  train_s = time.perf_counter() - t0
  rows = [measure(docs, tok, packing, int(w), args)
          for packing in pipeline.PACKINGS for w in args.workers.split(',')]
  print(json.dumps(dict(source=stats.report(), tokenizer_train_s=round(train_s, 2), vocab_size=tok.vocab_size,
                        seq_len=args.seq_len, batch_size=args.batch_size, cpus=os.cpu_count(), results=rows),
                   indent=1))


if __name__ == '__main__':
  main()

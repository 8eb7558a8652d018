"""Tokens per second the input pipeline delivers, and how full its rows are, printed as JSON.

  python benchmarks/input_pipeline.py [--source=default] [--seq_len=128] [--batch_size=32] [--batches=200]
      [--prepare_workers=1,2] [--prepared=DIR]

Every packing mode and worker count runs in the same process, one after the other, on the same corpus and
tokenizer, so the figures compare side by side: the documents held in memory as text (tokenized as they are
read), and the same corpus prepared (`python -m zoo.data.prepare`, with each of --prepare_workers processes, into
a temporary directory; its tokens per second are reported too) and read as token shards. --prepared=DIR reads a
preparation already made instead (its tokenizer, and its source for the text); --prepare_workers='' leaves the
prepared corpus out.
"""
import argparse
import json
import os
import shutil
import tempfile
import time

from zoo.data import pipeline, prepare, prepared, sources
from zoo.data import tokenizer as tk


def measure(docs, tok, packing, workers, args, data='memory'):
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
  return dict(data=data, packing=packing, workers=workers, tokens_per_s=round(tokens / elapsed),
              real_tokens_per_s=round(tokens * pipeline.fill_rate(batches[1:]) / elapsed),
              fill_rate=round(pipeline.fill_rate(batches), 4), startup_s=round(startup, 3))


def prepare_corpus(source, tok_path, workers, directory):
  """Prepare the source into a new directory with `workers` processes: seconds, tokens and tokens/s."""
  shutil.rmtree(directory, ignore_errors=True)
  t0 = time.perf_counter()
  manifest = prepare.prepare(source, directory, tokenizer=tok_path, workers=workers, progress=False)
  seconds = time.perf_counter() - t0
  tokens = sum(manifest['totals'][s]['tokens'] for s in prepared.SPLITS)
  return dict(workers=workers, units=len(manifest['units']), seconds=round(seconds, 3), tokens=tokens,
              tokens_per_s=round(tokens / seconds))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', default='default')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--workers', default='0,2', help='comma-separated worker counts to compare')
  parser.add_argument('--prepare_workers', default='1,2',
                      help="comma-separated preparation worker counts to time ('': no prepared corpus)")
  parser.add_argument('--prepared', default='', help='a prepared directory to read instead of preparing --source')
  args = parser.parse_args()
  tmp = tempfile.mkdtemp()
  preparation, train_s = [], None
  if args.prepared:  # its tokenizer and its source, so both paths read the same corpus with the same ids
    directory = prepared.directory_of(prepared.PREFIX + args.prepared)
    tok = tk.Tokenizer(prepared.tokenizer_proto(directory), os.path.join(directory, 'tokenizer.model'))
    args.source = prepared.load_manifest(directory)['source']
  docs, stats = sources.read_documents(args.source)
  if not args.prepared:
    t0 = time.perf_counter()
    tok = tk.train_tokenizer(docs, args.vocab_size, path=os.path.join(tmp, 'spm.model'))
    train_s = time.perf_counter() - t0
    for w in filter(None, args.prepare_workers.split(',')):
      directory = os.path.join(tmp, 'prepared')
      preparation.append(prepare_corpus(args.source, os.path.join(tmp, 'spm.model'), int(w), directory))
  read = prepared.PreparedSplit(directory, 'train') if args.prepared or preparation else None
  rows = []
  for packing in pipeline.PACKINGS:
    for w in args.workers.split(','):
      rows.append(measure(docs, tok, packing, int(w), args))
      if read is not None:
        rows.append(measure(read, tok, packing, int(w), args, data='prepared'))
  out = dict(source=stats.report(), tokenizer_train_s=round(train_s, 2) if train_s is not None else None,
             vocab_size=tok.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size, cpus=os.cpu_count(),
             preparation=preparation, prepared=read.describe() if read is not None else None, results=rows)
  shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()

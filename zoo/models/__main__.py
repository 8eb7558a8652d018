"""python -m zoo.models [--json]: every model family and size with its parameter count (via eval_shape)."""
import argparse
import json

from zoo.models import table


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m zoo.models', description=__doc__)
  parser.add_argument('--json', action='store_true', help='print one JSON list instead of a table')
  args = parser.parse_args(argv)
  rows = table()
  if args.json:
    print(json.dumps(rows, indent=1))
    return
  print(f"{'family':<12} {'size':<8} {'params':>15} {'published':>15}")
  for r in rows:
    pub = f"{r['published']:,}" if 'published' in r else ''
    print(f"{r['family']:<12} {r['size']:<8} {r['params']:>15,} {pub:>15}")


if __name__ == '__main__':
  main()

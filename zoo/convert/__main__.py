"""`python -m zoo.convert import|export ...`: see zoo.convert.cli."""
from zoo.convert.cli import main

if __name__ == '__main__':
  raise SystemExit(main())

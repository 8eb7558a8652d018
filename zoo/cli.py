"""What zoo's command lines share: quiet logs, `--verbosity` by name, and a user's mistake as one line.

A mistake in what the user gave (a config field, a value, a file, a mesh) is printed as one `error: ...` line and
the command exits with status 2. A traceback is shown for zoo's own bugs, and for everything with
`--verbosity=debug` or `ZOO_DEBUG=1`.

>>> named_verbosity(['train.py', '--verbosity=debug'])
['train.py', '--verbosity=1']
"""
from __future__ import annotations

import logging
import os
import sys

from zoo.errors import clean_message, is_user_error

EXIT_USER_ERROR = 2
# --verbosity by name -> absl's number. Library INFO logs show from 'info' up; the default is 'warning'.
LEVELS = {'debug': 1, 'info': 0, 'warning': -1, 'error': -2}


def debug_requested(argv=None) -> bool:
  """ZOO_DEBUG=1, or --verbosity=debug (or a number >= 1) in argv."""
  if os.environ.get('ZOO_DEBUG', '') not in ('', '0'):
    return True
  argv = sys.argv if argv is None else argv
  for i, a in enumerate(argv):
    value = a.split('=', 1)[1] if a.startswith(('--verbosity=', '-v=')) else (
        argv[i + 1] if a in ('--verbosity', '-v') and i + 1 < len(argv) else None)
    if value is not None:
      value = str(LEVELS.get(value, value))
      if value.lstrip('-').isdigit() and int(value) >= 1:
        return True
  return False


def named_verbosity(argv: list[str]) -> list[str]:
  """argv with --verbosity=debug|info|warning|error turned into absl's numbers (1, 0, -1, -2)."""
  out = []
  for a in argv:
    if a.startswith('--verbosity=') and a.split('=', 1)[1] in LEVELS:
      a = f'--verbosity={LEVELS[a.split("=", 1)[1]]}'
    out.append(a)
  return out


def fail(message: str) -> None:
  """Print `error: message` to stderr and exit with status 2."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def guard(fn, *args, **kwargs):
  """fn(*args, **kwargs); a user error ends the command as one line (exit 2) unless debugging."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # user errors are printed, the rest re-raised
    if debug_requested() or not is_user_error(e):
      raise
    fail(clean_message(e))


class _Stderr(logging.StreamHandler):
  """A handler that writes to sys.stderr as it is at each record, not as it was when the handler was made: a
  notebook cell, contextlib.redirect_stderr or pytest's capsys may replace it, and closes what it replaced
  (writing there printed logging's own traceback instead of the line)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value  # StreamHandler.__init__ and setStream assign it: always the current sys.stderr


def quiet_logs(verbosity: int | None = None) -> None:
  """zoo's own log lines plain on stderr at INFO; other libraries' INFO lines only from --verbosity=info up."""
  zoo_log = logging.getLogger('zoo')
  if not any(getattr(h, '_zoo', False) for h in zoo_log.handlers):
    handler = _Stderr()
    handler.setFormatter(logging.Formatter('%(message)s'))
    handler._zoo = True
    zoo_log.addHandler(handler)
  zoo_log.setLevel(logging.DEBUG if (verbosity or 0) >= 1 else logging.INFO)
  zoo_log.propagate = False
  if verbosity is None or verbosity < 0:
    for name in ('absl', 'jax', 'orbax', 'grain', 'tensorflow', 'etils', 'flax', 'tensorstore'):
      logging.getLogger(name).setLevel(logging.WARNING)


def flags_parser(argv: list[str]) -> list[str]:
  """An absl flags parser for app.run: names for --verbosity, 'warning' by default, and a bad flag (an unknown
  config field, a value of the wrong type, a missing config file) as one line with exit status 2."""
  from absl import flags
  argv = named_verbosity(argv)
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS['verbosity'].using_default_value:  # absl would raise it to INFO
      flags.FLAGS.verbosity = LEVELS['warning']
    for name in flags.FLAGS:  # a config file that did not load raises only when first read: say so now
      error = getattr(flags.FLAGS[name].value, '_error', None)
      if isinstance(error, Exception):
        fail(f'--{name}: {clean_message(error)}\n{_usage_hint(argv)}')
    return rest
  except Exception as e:
    if debug_requested(argv):
      raise
    message = clean_message(e)
    if isinstance(e, (AttributeError, KeyError)):  # an unknown field: name the flag that asked for it
      key = message.split(':', 1)[0].strip()
      bad = [a.split('=', 1)[0] for a in argv[1:] if a.split('=', 1)[0].endswith('.' + key)]
      message = f'{bad[0]}: no field {key!r} in this config' + (
          f' ({message.split(":", 1)[1].strip()})' if ':' in message else '') if bad else message
    fail(f'{message}\n{_usage_hint(argv)}')


def _usage_hint(argv) -> str:
  return f'(run `{os.path.basename(argv[0])} --helpfull` for every flag; --verbosity=debug shows the traceback)'

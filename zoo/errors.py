"""User errors: a mistake in what the user gave (a config field, a value, a file, a mesh), told as one line.

>>> is_user_error(ValueError('train.steps=-5 must be positive'))
True
>>> clean_message(AttributeError('\\'stpes\\'\\nDid you mean "steps" instead of "stpes"?'))
'stpes: Did you mean "steps" instead of "stpes"?'
"""
from __future__ import annotations

import os
import re

_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, FloatingPointError)
_ZOO_DIR = os.path.dirname(os.path.abspath(__file__))  # the package, in a checkout or in site-packages
_REPO_DIR = os.path.dirname(_ZOO_DIR)  # a checkout's configs/ and train.py


class UserError(Exception):
  """A mistake in what the user gave, wherever it is found: printed as one line."""


def _raised_in_zoo(e: BaseException) -> bool:
  """Whether the innermost frame that raised e is zoo's own code (the zoo package wherever it is installed; a
  checkout's configs/ and train.py), not a library's."""
  tb = e.__traceback__
  if tb is None:
    return True
  while tb.tb_next is not None:
    tb = tb.tb_next
  path = os.path.abspath(tb.tb_frame.f_code.co_filename)
  if path.startswith(_ZOO_DIR + os.sep):  # zoo installed as a package lives in site-packages too
    return True
  return path.startswith(_REPO_DIR + os.sep) and 'site-packages' not in path


def is_user_error(e: BaseException) -> bool:
  """A UserError, or a ValueError / TypeError / KeyError / OSError / FloatingPointError that zoo's own code raised
  (a check of the config or the input). The same types raised inside a library are bugs: they keep a traceback."""
  return isinstance(e, UserError) or (isinstance(e, _USER_ERRORS) and _raised_in_zoo(e))


def clean_message(e: BaseException) -> str:
  """The exception's text on one line: ml_collections' quoted '\\'field\\'\\nDid you mean ...' made readable."""
  text = str(e.args[0]) if len(e.args) == 1 else str(e)
  if 'Traceback (most recent call last)' in text or 'Attempted [' in text:  # a config file that raised, or is missing
    last = text.strip().splitlines()[-1].strip()
    last = re.sub(r'^\[Errno \d+\] ', '', re.sub(r'^[A-Za-z.]*(Error|Exception): ', '', last))
    return f'{text.split(":", 1)[0]}: {last}' if text.startswith('flag --') else last
  if len(text) > 1 and text[0] == text[-1] == "'":  # a repr: ml_collections' KeyError text inside AttributeError
    text = text[1:-1].replace("\\'", "'").replace('\\n', '\n')
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  lines = [line[1:-1] if len(line) > 1 and line[0] == line[-1] == "'" else line for line in lines]
  return ': '.join(lines) if lines else type(e).__name__

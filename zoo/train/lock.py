"""One writer per workdir: training holds <workdir>/LOCK, and a second run on that workdir stops at once, naming
the holder. The lock is a kernel file lock (flock), so a killed run's lock is released with its process and the
next run takes it over; the file only keeps the holder's host, pid and start time for the message. Evaluation and
`zoo.load` read a workdir without it.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with WorkdirLock(d):
...   WorkdirLock(d).acquire()
Traceback (most recent call last):
...
zoo.train.lock.WorkdirLocked: workdir ... is in use by another run: pid ... on ... since ... UTC ...
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket

from zoo.errors import UserError

log = logging.getLogger('zoo')
LOCK_FILE = 'LOCK'


class WorkdirLocked(UserError):
  pass


def _holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    return json.loads(os.read(fd, 4096).decode() or '{}')
  except (ValueError, UnicodeDecodeError):
    return {}


class WorkdirLock:
  """Held while training: `with WorkdirLock(workdir): ...` (or acquire() / release())."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def acquire(self) -> WorkdirLock:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      h = _holder(fd)
      os.close(fd)
      raise WorkdirLocked(
          f'workdir {self.workdir} is in use by another run: pid {h.get("pid", "?")} on {h.get("host", "?")} '
          f'since {h.get("since", "?")} (lock {self.path}). Wait for it to end or stop it, or use another '
          f'--workdir') from None
    previous = _holder(fd)
    if previous.get('pid'):
      log.info('workdir %s: took over the lock of a run that ended without releasing it (pid %s on %s, since %s)',
               self.workdir, previous['pid'], previous.get('host', '?'), previous.get('since', '?'))
    since = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': since}).encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # a clean end: nothing to take over
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

"""One writer per workdir: training holds <workdir>/LOCK, and a second run on that workdir stops at once, naming
the holder. The lock is a kernel file lock (flock), so a killed run's lock is released with its process and the
next run takes it over; the file only keeps the holder's host, pid and start time for the message. Evaluation and
`zoo.load` read a workdir without it.

A workdir on an object store (gs://...) has no file locks: there the LOCK file itself is the lock, best effort.
It is written at the start and removed at the end; a LOCK younger than STALE_HOURS refuses a second run, an older
one (a run killed without cleaning up) is taken over. Two runs that start at the same moment can both take it.

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
import time

from zoo import paths
from zoo.errors import UserError

log = logging.getLogger('zoo')
LOCK_FILE = 'LOCK'
STALE_HOURS = 24  # a gs:// LOCK older than this belongs to a run that was killed: taken over


class WorkdirLocked(UserError):
  pass


def _holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    return json.loads(os.read(fd, 4096).decode() or '{}')
  except (ValueError, UnicodeDecodeError):
    return {}


def _in_use(workdir: str, path: str, h: dict, hint: str = '') -> WorkdirLocked:
  return WorkdirLocked(
      f'workdir {workdir} is in use by another run: pid {h.get("pid", "?")} on {h.get("host", "?")} '
      f'since {h.get("since", "?")} (lock {path}). Wait for it to end or stop it, or use another '
      f'--workdir{hint}')


def _took_over(workdir: str, previous: dict) -> None:
  log.info('workdir %s: took over the lock of a run that ended without releasing it (pid %s on %s, since %s)',
           workdir, previous['pid'], previous.get('host', '?'), previous.get('since', '?'))


def _me() -> dict:
  since = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'since': since}


class WorkdirLock:
  """Held while training: `with WorkdirLock(workdir): ...` (or acquire() / release())."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.local = paths.is_local(workdir)
    self.path = os.path.join(workdir, LOCK_FILE) if self.local else paths.join(workdir, LOCK_FILE)
    self._fd = None
    self._mine = None  # what a non-local lock wrote

  def acquire(self) -> WorkdirLock:
    if not self.local:
      return self._acquire_file()
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      h = _holder(fd)
      os.close(fd)
      raise _in_use(self.workdir, self.path, h) from None
    previous = _holder(fd)
    if previous.get('pid'):
      _took_over(self.workdir, previous)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_me()).encode())
    self._fd = fd
    return self

  def _read_file(self) -> dict:
    try:
      return json.loads(paths.path(self.path).read_text() or '{}')
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
      return {}

  def _acquire_file(self) -> WorkdirLock:
    """The best-effort lock of a non-local workdir: the LOCK file, written with the time it was taken."""
    previous = self._read_file()
    if previous.get('pid'):
      if time.time() - previous.get('time', 0) < STALE_HOURS * 3600:
        raise _in_use(self.workdir, self.path, previous,
                      f' (a run killed without cleaning up leaves it: delete {self.path}, or it is taken over '
                      f'{STALE_HOURS} h after it was written)')
      _took_over(self.workdir, previous)
    mine = {**_me(), 'time': time.time()}
    paths.path(self.path).write_text(json.dumps(mine))
    self._mine = mine
    return self

  def release(self) -> None:
    if self._mine is not None:
      if self._read_file() == self._mine:  # not a lock another run took over meanwhile
        paths.path(self.path).unlink(missing_ok=True)
      self._mine = None
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # a clean end: nothing to take over
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

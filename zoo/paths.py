"""Workdirs and data paths on any filesystem `etils.epath` knows: local paths, and gs:// (TPU VMs), s3://, ...
URIs (gs:// needs gcsfs: `pip install -e '.[gcs]'`; or TensorFlow). Code that reads or writes a workdir or a data
file goes through `path(p)` (an epath.Path); a local path keeps its meaning (`abspath` makes a workdir absolute,
as os.path.abspath does), a URI is left as it is. (epath reads a local path under /gs/, /s3/, /az/ or /hf/ as
that URI: keep workdirs elsewhere.)

>>> abspath('gs://bucket/run'), abspath('/tmp/run/../run'), is_local('gs://bucket/run'), is_local('run')
('gs://bucket/run', '/tmp/run', False, True)
>>> join('gs://bucket/run', 'checkpoints')
'gs://bucket/run/checkpoints'
"""
from __future__ import annotations

import os
import re

from etils import epath

_URI = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def is_local(p) -> bool:
  """Whether p is a path on this machine's filesystem (not a gs://, s3://, ... URI)."""
  return not _URI.match(os.fspath(p))


def path(p) -> epath.Path:
  """p (a str, an os.PathLike or an epath.Path) as an epath.Path: every read and write goes through it."""
  return epath.Path(p)


def abspath(p, expanduser: bool = False) -> str:
  """A local path made absolute (os.path.abspath; `~` expanded with expanduser=True); a URI unchanged."""
  s = os.fspath(p)
  if not is_local(s):
    return s
  return os.path.abspath(os.path.expanduser(s) if expanduser else s)


def join(p, *parts: str) -> str:
  """The str of p / parts: what messages print."""
  return os.fspath(path(p).joinpath(*parts))


def is_file(p) -> bool:
  """Whether p exists and is not a directory (object stores have no is_file)."""
  p = path(p)
  return p.exists() and not p.is_dir()

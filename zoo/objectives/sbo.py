"""SpanBERT's span boundary objective (SBO, Joshi et al. 2020, section 3.2) on the host: where each masked span
token's boundary tokens are.

For a span x_s..x_e the SBO predicts each x_i (s <= i <= e) from the encoder outputs of x_{s-1} and x_{e+1} and a
relative position embedding p_{i-s+1} (zoo.models.bert.SpanBoundaryHead). `boundaries` gives, per chosen position,
the left and right boundary indices and the offset i - s (0 for the span's first token: row i - s of the head's
position table, the paper's p_{i-s+1}).

Edges: a boundary is clipped to the span's document piece, i.e. the run of equal segment_ids around the span (a
row of concat packing may begin or end inside a document, and in a packed row the token before a document is the
previous document's, which attention keeps apart). Where x_{s-1} is outside the piece the left boundary is x_s (the
nearest valid position: the span's own first token, an input the model sees as [MASK], random or kept, as MLM
does); where x_{e+1} is, the right boundary is x_e. Elsewhere boundaries may be special tokens ([CLS], [SEP],
[EOS]) or tokens of a neighbouring span, as in SpanBERT.

>>> left, right, offsets = boundaries(np.array([2, 3, 4, 7]), np.array([0, 0, 0, 1]), np.ones(8, np.int32))
>>> left.tolist(), right.tolist(), offsets.tolist()
([1, 1, 1, 6], [5, 5, 5, 7], [0, 1, 2, 0])
"""
from __future__ import annotations

import numpy as np


def pieces(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per position of one row: the first and last index of the run of equal segment ids that holds it."""
  t = len(segment_ids)
  idx = np.arange(t)
  if not t:
    return idx, idx
  change = segment_ids[1:] != segment_ids[:-1]
  first = np.maximum.accumulate(np.where(np.concatenate([[True], change]), idx, 0))
  last = np.minimum.accumulate(np.where(np.concatenate([change, [True]]), idx, t - 1)[::-1])[::-1]
  return first, last


def boundaries(positions: np.ndarray, group: np.ndarray,
               segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(left, right, offset) per chosen position of one row.

  positions: the chosen token positions, each span's contiguous and in order; group: each position's span index,
  non-decreasing (what `Mlm.choose` returns under masking='span'; spans that touch stay separate spans, as their
  indices differ); segment_ids: the row's [T] segment ids. left / right: the indices of the tokens just outside
  the span, clipped to its document piece (see the module docstring); offset: the position's index in its span."""
  positions, group = np.asarray(positions, np.int64), np.asarray(group, np.int64)
  if not len(positions):
    return positions, positions, positions
  if (np.diff(group) < 0).any():
    raise ValueError('boundaries: group must be non-decreasing (each span one run of positions)')
  s = positions[np.searchsorted(group, group, side='left')]
  e = positions[np.searchsorted(group, group, side='right') - 1]
  first, last = pieces(np.asarray(segment_ids))
  left = np.maximum(s - 1, first[s])
  right = np.minimum(e + 1, last[e])
  return left, right, positions - s

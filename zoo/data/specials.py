"""The special ids of the tokenizer in use: what the objectives, tasks and the packing put into rows.

zoo's own SentencePiece tokenizer has fixed ids (0 [PAD] .. 8 [eop], then the sentinels); a HuggingFace
tokenizer (`zoo.data.hf_tokenizer.HFTokenizer`: BERT's [MASK] = 103, T5's <extra_id_0> = 32099 counting down,
GPT-2's one <|endoftext|>) has its own. `of(tokenizer)` gives either as one `Specials`, and `Specials.need` refuses,
in one line, an objective or task that needs a token the tokenizer lacks.

>>> import numpy as np
>>> s = zoo_specials(vocab_size=20, num_sentinels=2)
>>> s.mask, s.cls, s.end, s.sentinels, int(s.special.sum())
(6, 4, 3, (9, 10), 11)
>>> bool(s.random_tokens(np.random.default_rng(0), 1000).min() >= 11)
True
"""
from __future__ import annotations

import dataclasses
import re
import weakref

import numpy as np

_UNUSED = re.compile(r'^(\[unused\d+\]|<unused\d+>)$')
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
NAMES = ('pad', 'unk', 'bos', 'eos', 'cls', 'sep', 'mask', 'sop', 'eop')


@dataclasses.dataclass(frozen=True, eq=False)
class Specials:
  """Special ids (None where the tokenizer has no such token) and which ids are special."""
  vocab_size: int
  special: np.ndarray  # bool [vocab_size]: never masked or corrupted, never drawn as a random replacement
  pad: int = 0
  unk: int | None = None
  bos: int | None = None
  eos: int | None = None
  cls: int | None = None
  sep: int | None = None
  mask: int | None = None
  sop: int | None = None
  eop: int | None = None
  sentinels: tuple[int, ...] = ()  # T5's <extra_id_0>, <extra_id_1>, ...
  decoder_start: int | None = None  # an encoder-decoder's first decoder input (zoo: [BOS]; BART: </s>; T5: <pad>)
  source: str = 'zoo'  # for messages: 'zoo' or the HF tokenizer's directory

  def __post_init__(self):
    ordinary = np.flatnonzero(~self.special)
    object.__setattr__(self, '_ordinary', ordinary)
    # zoo's own ids are contiguous: a random token is one integer draw, as before HF tokenizers were read
    contiguous = len(ordinary) and ordinary[-1] - ordinary[0] + 1 == len(ordinary)
    object.__setattr__(self, '_range', (int(ordinary[0]), int(ordinary[-1]) + 1) if contiguous else None)

  @property
  def first_ordinary(self) -> int:
    """The lowest id that is no special token (zoo's: the count of special ids and sentinels)."""
    return int(self._ordinary[0])

  @property
  def end(self) -> int | None:
    """What ends a document in a packed row: [EOS], else [SEP] (BERT's vocabulary has no end of text)."""
    return self.eos if self.eos is not None else self.sep

  def need(self, name: str, who: str) -> int:
    """The id of token `name`, or one error naming `who` (the objective or task) and the token."""
    value = self.end if name == 'end' else getattr(self, name)
    if name == 'sentinels':  # T5's <extra_id_i>: how many there are
      value = len(self.sentinels) or None
    if value is None:
      what = 'sentinel tokens (<extra_id_0>, ...)' if name == 'sentinels' else f'a {name} token'
      raise ValueError(f'{who} needs {what}, and the tokenizer {self.source} has none: use an objective that does '
                       f'not, or a tokenizer with them')
    return int(value)

  def is_special(self, ids) -> np.ndarray:
    ids = np.asarray(ids)
    return np.where(ids < self.vocab_size, self.special[np.minimum(ids, self.vocab_size - 1)], True)

  def random_token(self, rng: np.random.Generator) -> int:
    """One id drawn uniformly from the non-special ones."""
    if self._range is not None:
      return int(rng.integers(self._range[0], self._range[1]))
    return int(self._ordinary[rng.integers(0, len(self._ordinary))])

  def random_tokens(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """n ids drawn uniformly from the non-special ones (BERT's 10% random replacement)."""
    if self._range is not None:
      return rng.integers(self._range[0], self._range[1], n)
    return self._ordinary[rng.integers(0, len(self._ordinary), n)]


def zoo_specials(vocab_size: int, num_sentinels: int) -> Specials:
  """zoo's fixed ids: [PAD] [UNK] [BOS] [EOS] [CLS] [SEP] [MASK] [sop] [eop], then the sentinels."""
  n = len(NAMES) + num_sentinels
  return Specials(vocab_size=vocab_size, special=np.arange(vocab_size) < n, sentinels=tuple(range(len(NAMES), n)),
                  decoder_start=NAMES.index('bos'), **{name: i for i, name in enumerate(NAMES)})


def of(tokenizer) -> Specials:
  """The Specials of zoo's Tokenizer or of an HFTokenizer (computed once per tokenizer)."""
  if tokenizer in _CACHE:
    return _CACHE[tokenizer]
  if not hasattr(tokenizer, 'all_special_ids'):  # zoo's own
    sentinels = getattr(tokenizer, 'num_sentinels', 0)  # a stand-in with encode() only: zoo's ids
    out = zoo_specials(getattr(tokenizer, 'vocab_size', len(NAMES) + sentinels + 1), sentinels)
  else:
    n = tokenizer.vocab_size
    sentinels = []
    while (i := tokenizer.token_to_id(f'<extra_id_{len(sentinels)}>')) is not None:
      sentinels.append(i)
    special = np.zeros(n, bool)
    special[[i for i in (*tokenizer.all_special_ids, *sentinels) if 0 <= i < n]] = True
    # BERT's [unused0..]: reserved rows no text produces, so never drawn as a random replacement either
    special |= np.array([bool(_UNUSED.match(tokenizer.id_to_token(i) or '')) for i in range(n)])
    ids = {name: getattr(tokenizer, f'{name}_id', None) for name in NAMES}
    if ids['pad'] is None:
      ids['pad'] = 0  # padding rows are weighted 0 whatever they hold
    start = getattr(tokenizer, 'decoder_start_id', None)
    out = Specials(vocab_size=n, special=special, sentinels=tuple(sentinels), source=str(tokenizer.path),
                   decoder_start=start if start is not None else ids['bos'] if ids['bos'] is not None else ids['pad'],
                   **ids)
  _CACHE[tokenizer] = out
  return out


def frame(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The ids a document is framed with in a packed row: as the tokenizer frames one text (BERT's [CLS] text [SEP],
  RoBERTa's <s> text </s>, T5's text </s>), or the text then its end of text where the tokenizer adds nothing
  (zoo's [EOS], GPT-2's <|endoftext|>). Each document of a row then looks as it does to the model's users."""
  end = of(tokenizer).need('end', 'packing documents into rows')
  if not hasattr(tokenizer, 'all_special_ids'):
    return (), (end,)
  probe = 'a b'
  bare, framed = tokenizer.encode(probe), tokenizer.encode(probe, add_special_tokens=True)
  for i in range(len(framed) - len(bare) + 1):
    if framed[i:i + len(bare)] == bare:
      prefix, suffix = tuple(framed[:i]), tuple(framed[i + len(bare):])
      return prefix, suffix or (end,)
  return (), (end,)

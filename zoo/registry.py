"""Making a registered object by name: what `objectives.make` and `tasks.make` share.

>>> import dataclasses
>>> @dataclasses.dataclass
... class Lm:
...   vocab_size: int
>>> make({'lm': Lm}, 'lm', 'objective', vocab_size=10)
Lm(vocab_size=10)
>>> make({'lm': Lm}, 'lm', 'objective', vocab=10)
Traceback (most recent call last):
ValueError: objective lm has no field(s) ['vocab']; its fields are ['vocab_size']
"""
from __future__ import annotations

import dataclasses


def make(registry: dict[str, type], name: str, what: str, **fields):
  """registry[name](**fields), refusing an unknown name or field with a message that names the config field
  `<what>.name`."""
  if name not in registry:
    article = 'an' if what[0] in 'aeiou' else 'a'
    raise ValueError(f'{what}.name={name!r} is not {article} {what}; choose one of {sorted(registry)}')
  cls = registry[name]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'{what} {name} has no field(s) {unknown}; its fields are {sorted(known)}')
  return cls(**fields)


def check_family(obj, family: str, field: str, verb: str = 'trains', pretraining: bool = False) -> None:
  """Refuse model family `family` unless `obj` (an objective or task) trains it: `obj.kinds` lists the kinds it
  trains (empty: any), `obj.recurrent` says whether the RNN families are among them, and `obj.families` (if set)
  names the only families it trains. pretraining: `obj` is a pretraining objective, and a family whose registry
  entry names its `objectives` (ELECTRA: rtd) takes only those."""
  from zoo import models

  def fits(name, entry):
    return ((not obj.kinds or entry.kind in obj.kinds) and (obj.recurrent or not entry.recurrent)
            and (not getattr(obj, 'families', ()) or name in obj.families)
            and (not pretraining or not entry.objectives or obj.name in entry.objectives))
  if not fits(family, models.get_family(family)):
    fitting = sorted(n for n, e in models.FAMILIES.items() if fits(n, e))
    raise ValueError(f'{field} {verb} {fitting}, not model.family={family!r}: pick a matching recipe from configs/')

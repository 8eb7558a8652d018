"""Translation: fine-tuning on parallel text, records with a `source` and a `target` field. It is supervised
fine-tuning (`zoo.tasks.sft`) with those columns, laid out as the family's contract says: an encoder-decoder (the
Transformer, T5, BART) encodes source + [EOS] and decodes the target from its start token; a decoder-only model
reads source + target + [EOS] and learns the target. Decode with `zoo.generate` (greedy, or `num_beams` for beam
search).

>>> from zoo import contract, tasks
>>> task = tasks.make('translation', vocab_size=100, num_special=9, seq_len=16, contract=contract.of('transformer'))
>>> task.name, task.input_field, task.target_field, task.contract.encoder_decoder
('translation', 'source', 'target', True)
"""
from __future__ import annotations

import dataclasses

from zoo.tasks.sft import Sft


@dataclasses.dataclass
class Translation(Sft):
  """Columns: input_field (the source sentence) and target_field (its translation)."""
  input_field: str = 'source'
  target_field: str = 'target'

  name = 'translation'

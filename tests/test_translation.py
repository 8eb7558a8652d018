"""Translation (zoo.tasks.translation): SFT on `source` / `target` columns, laid out as the family's contract says,
on the offline demo:translation set."""
import importlib
import pathlib
import sys

import pytest

from zoo import contract, finetune, tasks
from zoo.data import tokenizer as tk

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def test_translation_encodes_source_eos_and_decodes_from_the_start_token(tokenizer_path):
  tok = tk.Tokenizer.load(tokenizer_path)
  rec = tasks.read_records('demo:translation:validation')[:1]
  source, target = tok.encode(rec[0]['source']), tok.encode(rec[0]['target'])
  task = tasks.make('translation', vocab_size=tok.vocab_size, num_special=9, seq_len=32,
                    contract=contract.of('transformer', 'denoising'))
  a, host = task.featurize(rec, tok, 'x')
  assert a['tokens'][0, :len(source) + 2].tolist() == source + [tk.EOS, 0]
  assert a['decoder_tokens'][0, :len(target) + 2].tolist() == [tk.BOS] + target + [0]
  assert list(a['targets'][0][a['weights'][0] > 0]) == target + [tk.EOS] and host == [target + [tk.EOS]]


def test_finetune_recipe_gives_translation_its_family_contract(tokenizer_path):
  c = importlib.import_module('configs.finetune').get_config('translation')
  c.task.pretrained_objective = 'denoising'
  assert (c.task.train, c.task.init_from) == ('demo:translation:train', 'workdir/transformer')
  tok = tk.Tokenizer.load(tokenizer_path)
  task, records = finetune.make_task(c, tok, 'transformer')
  assert isinstance(task, tasks.Translation) and task.contract == contract.of('transformer', 'denoising')
  assert task.label_smoothing == 0.1 and len(records['train']) == 800 and set(records['train'][0]) == {'source', 'target'}
  with pytest.raises(ValueError, match=r"task.name='translation' fine-tunes .*'transformer'.*not model.family='bert'"):
    finetune.make_task(c, tok, 'bert')

"""Starting from a published checkpoint (`init_from`): a random HuggingFace BERT saved with save_pretrained, with a
vocab.txt laid out as BERT's ([PAD] 0, [unused*] 1-99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), is further
pretrained and fine-tuned by train.py with its own tokenizer and special ids; zoo's loss at step 0 is
transformers' on the same masked batch; mistakes are one line."""
import importlib
import json
import os
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from zoo import config as config_lib
from zoo import train
from zoo.data import specials

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytest.importorskip('safetensors')
pytest.importorskip('tokenizers')

ANIMALS = {'cat': 'fish', 'dog': 'meat', 'cow': 'grass', 'bird': 'seeds', 'horse': 'hay', 'bear': 'honey'}
PLACES = ['garden', 'house', 'field', 'forest', 'barn', 'city', 'park', 'valley']
HELD_OUT = {(p, a) for i, p in enumerate(PLACES) for j, a in enumerate(ANIMALS) if (i + j) % 4 == 0}


def domain_sentences(held_out: bool):
  """A highly regular domain text: what each animal eats decides the masked word."""
  return [f'in the {p} the {a} eats {food} .' for p in PLACES for a, food in ANIMALS.items()
          if ((p, a) in HELD_OUT) == held_out]


BERT_VOCAB = (['[PAD]'] + [f'[unused{i}]' for i in range(99)] + ['[UNK]', '[CLS]', '[SEP]', '[MASK]'] +
              ['in', 'the', 'eats', '.', ','] + sorted(PLACES) + sorted(ANIMALS) + sorted(set(ANIMALS.values())) +
              ['a', 'b', 'c', 'e', 'r', 's', '##s', '##e', '##ed', '##ing', '##a', '##r'])


def _transformers():
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  transformers.logging.set_verbosity_error()
  torch.set_num_threads(1)
  return torch, transformers


@pytest.fixture(scope='module')
def hf_bert(tmp_path_factory):
  """A random BertForPreTraining (2 layers, width 64) and its vocab.txt, as save_pretrained writes them."""
  torch, transformers = _transformers()
  d = tmp_path_factory.mktemp('hf_bert')
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
  transformers.BertForPreTraining(config).eval().save_pretrained(str(d))
  (d / 'vocab.txt').write_text('\n'.join(BERT_VOCAB) + '\n')
  return d


@pytest.fixture(scope='module')
def domain(tmp_path_factory):
  d = tmp_path_factory.mktemp('domain')
  (d / 'train.txt').write_text('\n'.join(domain_sentences(False) * 8) + '\n')
  return d


def mlm_config(init_from, source, **overrides):
  c = importlib.import_module('configs.bert').get_config('tiny')
  return config_lib.override(c, {'init_from': str(init_from), 'data.source': f'text:{source}',
                                 'train.seq_len': 32, 'train.batch_size': 16, 'train.eval_batches': 1,
                                 'log.every': 1, 'log.tensorboard': False, 'mesh.devices': 2,
                                 'optimizer.warmup_steps': 2, 'model.dropout_rate': 0.0, **overrides})


def test_special_ids_are_the_tokenizers(hf_bert, domain, tmp_path):
  """The rows hold BERT's [MASK] and [SEP] and none of zoo's own ids (1-99 are [unused*] here)."""
  run = train.build(mlm_config(hf_bert, domain / 'train.txt'), str(tmp_path))
  ids = specials.of(run.tokenizer)
  assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask, ids.eos, ids.end) == (0, 100, 101, 102, 103, None, 102)
  batch = next(iter(run.inputs.train_dataset(run)))
  example = run.objective.example(batch, np.random.default_rng(0))
  tokens, real = example['tokens'], example['segment_ids'] > 0
  assert 103 in tokens[real] and 102 in tokens[real]  # [MASK]; [SEP] closes each document
  assert not np.isin(tokens[real], np.arange(1, 100)).any()  # zoo's [UNK] 1 .. [eop] 8, random draws of [unused*]
  labels = example['mlm_labels'][example['mlm_weights'] > 0]
  assert not np.isin(labels, [0, 100, 101, 102, 103]).any()  # special tokens are never chosen
  assert run.model.vocab_size == len(BERT_VOCAB)


def test_loss_at_step_0_is_transformers_on_the_same_masked_batch(hf_bert, domain, tmp_path):
  torch, transformers = _transformers()
  run = train.build(mlm_config(hf_bert, domain / 'train.txt'), str(tmp_path))
  params = jax.device_get(train.init_state(run).params)
  rows = [run.tokenizer.encode(s) + [102] for s in domain_sentences(False)[:16]]
  t = 32
  tokens = np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  seg = (tokens > 0).astype(np.int32)
  batch = {'tokens': tokens, 'segment_ids': seg, 'positions': np.arange(t, dtype=np.int32)[None] * seg}
  example = run.objective.example(batch, np.random.default_rng(3))
  outputs = run.model.apply({'params': params}, **run.objective.inputs(example), deterministic=True)
  loss_sum, _ = run.objective.terms(outputs, example)['mlm']
  ours = float(loss_sum) / float(run.objective.counts(example)['mlm'])
  labels = np.full(tokens.shape, -100, np.int64)
  for i in range(len(rows)):
    w = example['mlm_weights'][i] > 0
    labels[i, example['mlm_positions'][i][w]] = example['mlm_labels'][i][w]
  hf = transformers.BertForMaskedLM.from_pretrained(str(hf_bert)).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(example['tokens'], dtype=torch.long),
                attention_mask=torch.tensor(seg, dtype=torch.long), labels=torch.tensor(labels)).loss.item()
  print(f'step-0 MLM loss: zoo {ours:.6f}, transformers {theirs:.6f}')
  assert (labels >= 0).sum() > 10
  assert abs(ours - theirs) < 1e-4


@pytest.mark.slow
def test_further_pretraining_then_fill_mask_with_the_original_vocab(hf_bert, domain, tmp_path):
  """Further pretraining learns the domain (the loss falls); the export, with the original vocab.txt, fills the
  masked word of held-out sentences in transformers' fill-mask pipeline."""
  torch, transformers = _transformers()
  work = tmp_path / 'dapt'
  out = train.train_and_evaluate(mlm_config(hf_bert, domain / 'train.txt', **{
      'train.steps': 400, 'optimizer.learning_rate': 2e-3, 'checkpoint.every': 400}), str(work))
  rows = [json.loads(line) for line in open(work / 'metrics.jsonl')]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
  assert out['step'] == 400
  from zoo.convert import cli
  exported = tmp_path / 'exported'
  assert cli.main(['export', '--workdir', str(work), '--out', str(exported)]) == 0
  assert (exported / 'vocab.txt').read_text() == (hf_bert / 'vocab.txt').read_text()
  held = domain_sentences(True)

  def right(model_dir):
    fill = transformers.pipeline('fill-mask', model=str(model_dir), tokenizer=str(model_dir), device='cpu')
    foods = [s.split()[-2] for s in held]
    return sum(fill(s.replace(f' {f} ', ' [MASK] '), top_k=1)[0]['token_str'] == f for s, f in zip(held, foods))
  before, hits = right(hf_bert), right(exported)
  print(f'fill-mask on {len(held)} held-out sentences: {before} right before, {hits} after')
  assert before <= 0.25 * len(held)
  assert hits >= 0.9 * len(held)


@pytest.mark.slow
@pytest.mark.parametrize('task', ['classification', 'tagging', 'qa'])
def test_tasks_fine_tune_from_an_hf_directory(hf_bert, task, tmp_path):
  """No pretraining workdir: the HF directory itself; rows are [CLS] ... [SEP] in BERT's ids."""
  overrides = {}
  if task == 'classification':
    data = tmp_path / 'train.jsonl'
    data.write_text('\n'.join(json.dumps({'sentence': s, 'label': 'meat' if 'dog' in s else 'other'})
                              for s in domain_sentences(False)) + '\n')
    overrides = {'task.train': f'jsonl:{data}', 'task.validation': f'jsonl:{data}'}
  c = importlib.import_module('configs.finetune').get_config(task)
  c = config_lib.override(c, {'init_from': str(hf_bert), 'task.init_from': '', 'train.seq_len': 64,
                              'train.batch_size': 8, 'train.steps': 3, 'log.every': 1, 'log.tensorboard': False,
                              'mesh.devices': 2, 'train.eval_batches': 1, **overrides})
  run = train.build(c, str(tmp_path / task))
  arrays, _ = run.objective.featurize(run.records['train'][:2], run.tokenizer, 'x')
  assert arrays['tokens'][0][0] == 101 and 102 in arrays['tokens'][0]
  assert not np.isin(arrays['tokens'], np.arange(1, 100)).any()
  out = train.train_and_evaluate(c, str(tmp_path / task))
  assert out['step'] == 3


def test_mistakes_are_one_line(hf_bert, domain, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"^init_from='/nowhere/bert' does not exist: give a train.py workdir"):
    train.build(mlm_config('/nowhere/bert', domain / 'train.txt'), str(tmp_path / 'a'))
  llama = tmp_path / 'llama'
  llama.mkdir()
  (llama / 'config.json').write_text(json.dumps({'model_type': 'llama', 'architectures': ['LlamaForCausalLM']}))
  with pytest.raises(Exception, match='llama') as e:
    train.build(mlm_config(llama, domain / 'train.txt'), str(tmp_path / 'b'))
  assert '\n' not in str(e.value)
  no_mask = tmp_path / 'no_mask'
  no_mask.mkdir()
  for f in os.listdir(hf_bert):
    (no_mask / f).write_bytes((hf_bert / f).read_bytes())
  (no_mask / 'vocab.txt').write_text('\n'.join(t if t != '[MASK]' else '[unused99]' for t in BERT_VOCAB) + '\n')
  with pytest.raises(ValueError, match=re.escape("objective.name='mlm' needs a mask token, and the tokenizer")):
    train.build(mlm_config(no_mask, domain / 'train.txt'), str(tmp_path / 'c'))

"""Fine-tuning from a pretraining checkpoint: classification and tagging beat the majority class, QA spans decode
right, SFT scores only the target, LoRA and prefix tuning leave the base weights bit-identical."""
import importlib
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from zoo import checkpoint as ckpt
from zoo import config as config_lib
from zoo import api as zoo_api
from zoo import contract, tasks, train
from zoo.data import tokenizer as tk
from zoo.layers import adapters as ad_lib
from zoo.tasks import demo, qa

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_train import one_layer_per_stack  # noqa: E402


@pytest.fixture
def pretrained(pretrained_bert):
  return pretrained_bert


def finetune_config(task, init_from, **overrides):
  c = importlib.import_module('configs.finetune').get_config(task)
  c.task.init_from = init_from
  return config_lib.override(c, {'train.seq_len': 32, 'train.batch_size': 16, 'train.eval_every': 0, 'log.every': 5,
                  'log.tensorboard': False, 'mesh.devices': 2, **overrides})


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def _restore_all(workdir):
  state_dir, _ = ckpt.find_state(workdir)
  shapes = ckpt.saved_params(state_dir)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(v, jnp.float32, sharding=one) for k, v in shapes.items()})
  return traverse_util.flatten_dict(jax.device_get(ckpt.restore_params(state_dir, abstract)))


def test_pretrained_weights_arrive_bit_for_bit(pretrained, tmp_path):
  """On another topology (2 devices instead of 8); only the classification head is new."""
  run = train.build(finetune_config('classification', pretrained), str(tmp_path / 'probe'))
  state = jax.device_get(train.init_state(run))
  saved = _restore_all(pretrained)
  flat = traverse_util.flatten_dict(state.params)
  backbone = [k for k in flat if k in saved]
  assert len(backbone) > 30 and {k[0] for k in flat if k not in saved} == {'classifier'}
  for k in backbone:
    np.testing.assert_array_equal(flat[k], saved[k])


@pytest.mark.slow
def test_classification_from_checkpoint_beats_majority(pretrained, tmp_path):
  # the accuracy leaves the majority class in a jump: by step 100 at 0.985-0.99 for seeds 0-3 (at step 60, one seed
  # of four had jumped)
  metrics = train.train_and_evaluate(finetune_config('classification', pretrained, **{'train.steps': 100}),
                                       str(tmp_path / 'cls'))
  assert metrics['accuracy'] > metrics['majority_accuracy'] + 0.2, metrics
  assert 0.0 <= metrics['f1'] <= 1.0 and metrics['examples'] == 200


@pytest.mark.slow
def test_tagging_beats_all_o(pretrained, tmp_path):
  metrics = train.train_and_evaluate(finetune_config('tagging', pretrained, **{'train.steps': 150, 'optimizer.learning_rate': 5e-3}),
                                       str(tmp_path / 'ner'))
  assert metrics['entity_f1'] > 0.6, metrics  # predicting all 'O' (the majority tag) scores 0
  assert metrics['word_accuracy'] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['lora', 'prefix'])
def test_adapters_train_only_themselves(tmp_path, kind, tokenizer_path):
  """SFT of a GPT whose base is frozen: only the adapters train (no head), so a falling loss is their doing."""
  workdir = str(tmp_path / kind)
  # prefix keys/values act through the frozen attention output projection, which starts at GPT-2's
  # 0.02 / sqrt(2 layers): a high rate moves them (at 3e-2 after 5 warm-up steps, seeds 0-2 lower the loss by
  # 0.21-0.25 in 60 steps; at the adapters' default 1e-2 after 30, by 0.13-0.19 in 80)
  prefix = {'train.steps': 60, 'optimizer.learning_rate': 3e-2, 'optimizer.warmup_steps': 5}
  cfg = finetune_config(f'sft,{kind}', '', **{'train.steps': 40, 'train.seq_len': 24, 'data.vocab_size': 1000,
                                               'data.tokenizer': tokenizer_path, 'mesh.devices': 2,
                                               **(prefix if kind == 'prefix' else {})})
  config_lib.set_model(cfg, 'gpt', 'tiny')
  run = train.build(cfg, workdir)
  initial = traverse_util.flatten_dict(jax.device_get(train.init_state(run).params))
  trainable = {k for k, f in traverse_util.flatten_dict(run.frozen).items() if not f}
  sizes = {k: int(np.prod(v.shape)) for k, v in traverse_util.flatten_dict(run.abstract_state.params).items()}
  n = sum(sizes[k] for k in trainable)
  if kind == 'lora':  # layers x (query, value) x rank x (in + out)
    assert n == ad_lib.lora_param_count(run.model) == 2 * 2 * 8 * (64 + 64)
  else:  # layers x prefix length x (keys + values) x width
    assert n == 2 * 8 * 2 * 64
  # the optimizer keeps Adam's two moments for the trainable parameters only
  opt_sizes = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.abstract_state.opt_state) if x.ndim)
  assert opt_sizes == 2 * n
  metrics = train.train_and_evaluate(cfg, workdir)
  rows = [r for r in _metrics(workdir) if 'loss' in r and 'eval_loss' not in r]
  last = np.mean([r['loss'] for r in rows[-3:]])  # the last three logged losses (every 5 steps): less noisy
  assert last < rows[0]['loss'] - 0.15, rows  # the adapters alone lower the loss
  after = _restore_all(workdir)
  base = {k: v for k, v in after.items() if not ad_lib.is_adapter(k)}
  assert len(base) == len(initial) - len(trainable) > 20
  for k, v in base.items():  # the base weights are bit-identical to where they started
    np.testing.assert_array_equal(v, initial[k])
  assert any(not np.array_equal(after[k], initial[k]) for k in trainable)
  if kind == 'lora':  # the merged weights give the adapted model's outputs
    params = traverse_util.unflatten_dict(after)
    batch = run.objective.featurize(run.records['validation'][:8], run.tokenizer, 'v')[0]
    inputs = run.objective.inputs(batch)
    adapted = run.model.apply({'params': params}, **inputs)
    merged = run.model.clone(adapters=None).apply({'params': ad_lib.merge_lora(params, run.model.adapters)}, **inputs)
    np.testing.assert_allclose(merged, adapted, atol=1e-5)
  assert metrics['examples'] == 200


def _brute_span(s, e, mask, max_len):
  best, arg = -np.inf, None
  for i in range(len(s)):
    for j in range(i, min(len(s), i + max_len)):
      if mask[i] and mask[j] and s[i] + e[j] > best:
        best, arg = s[i] + e[j], (i, j)
  return arg


def test_qa_span_decoding_on_constructed_logits():
  rng = np.random.default_rng(0)
  for max_len in (1, 3, 30):
    s, e = rng.normal(size=(64, 20)), rng.normal(size=(64, 20))
    mask = np.zeros((64, 20), np.int32)
    mask[:, 5:18] = 1
    starts, ends = qa.best_span(s, e, mask, max_len)
    for row in range(64):
      assert (int(starts[row]), int(ends[row])) == _brute_span(s[row], e[row], mask[row], max_len)
  # the highest end before the best start, or outside the context, or too far, is never chosen
  s = np.full((1, 10), -50.0)
  e = np.full((1, 10), -50.0)
  s[0, 6], e[0, 2], e[0, 9], e[0, 7] = 9.0, 20.0, 30.0, 1.0
  mask = np.array([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
  assert [int(x[0]) for x in qa.best_span(s, e, mask, 3)] == [6, 7]


def test_qa_features_and_metrics(tokenizer_path):
  tok = tk.Tokenizer.load(tokenizer_path)
  records = demo.qa(np.random.default_rng(0), 20)
  task = tasks.make('qa', vocab_size=tok.vocab_size, num_special=9, seq_len=96)
  arrays, host = task.featurize(records, tok, 'demo')
  assert arrays['weights'].sum() == 20
  for row, info in enumerate(host):  # the gold token span reads back as the answer
    assert task.answer_text(info, arrays['start'][row], arrays['end'][row]) == records[row]['answers']['text'][0]
    assert arrays['context_mask'][row, arrays['start'][row]] == 1
  perfect = task.score({'span_start': arrays['start'], 'span_end': arrays['end']}, arrays, host)
  assert perfect['exact_match'] == perfect['f1'] == 1.0
  assert qa.exact_match('The  Eiffel tower!', 'eiffel Tower') == 1.0
  assert qa.token_f1('in Paris today', 'Paris') == pytest.approx(0.5)


def test_tagging_entities():
  assert tasks.bio_entities(['B-PER', 'I-PER', 'I-LOC', 'O', 'B-LOC']) == {('PER', 0, 1), ('LOC', 2, 2),
                                                                           ('LOC', 4, 4)}
  task = tasks.make('tagging', vocab_size=10, num_special=9, labels=('O', 'B-PER', 'I-PER'))
  gold = [['B-PER', 'I-PER', 'O']]
  arrays = {'word_index': np.array([[-1, 0, 1, -1, 2, -1]])}  # word 1 has two pieces
  half = task.score({'tags': np.array([[0, 1, 0, 0, 0, 0]])}, arrays, gold)  # predicts PER (0, 0): wrong end
  assert half['entity_f1'] == 0.0 and half['word_accuracy'] == pytest.approx(2 / 3)
  right = task.score({'tags': np.array([[0, 1, 2, 0, 0, 0]])}, arrays, gold)
  assert right['entity_f1'] == 1.0


def test_sft_lays_out_each_kind_as_its_contract_says(tokenizer_path):
  """The loss covers the target (and its stop token) only; encoder-decoders read the context + [EOS] and decode
  from their start token; GLM reads context + [MASK] as part A and fills it after [sop] at the [MASK]'s position,
  ending with [eop], as in its pretraining and in zoo.generate."""
  tok = tk.Tokenizer.load(tokenizer_path)
  rec = [{'input': 'reverse: red cat', 'target': 'cat red'}]
  target = tok.encode('cat red')
  context = tok.encode('reverse: red cat')
  causal = tasks.make('sft', vocab_size=tok.vocab_size, num_special=9, seq_len=24, contract=contract.of('gpt'))
  a, _ = causal.featurize(rec, tok, 'x')
  w = a['weights'][0] > 0
  assert list(a['targets'][0][w]) == target + [tk.EOS]  # exactly the target tokens (and [EOS]) are predicted
  assert w.sum() == len(target) + 1 and a['tokens'][0, :len(context)].tolist() == context
  s2s = tasks.make('sft', vocab_size=tok.vocab_size, num_special=9, seq_len=24,
                   contract=contract.of('t5', 'span_corruption'))
  b, _ = s2s.featurize(rec, tok, 'x')
  assert b['tokens'][0, :len(context) + 2].tolist() == context + [tk.EOS, 0]
  assert list(b['targets'][0][b['weights'][0] > 0]) == target + [tk.EOS]
  assert b['decoder_tokens'][0, :len(target) + 2].tolist() == [tk.PAD] + target + [0]
  glm = tasks.make('sft', vocab_size=tok.vocab_size, num_special=9, seq_len=24, contract=contract.of('glm'))
  g, _ = glm.featurize(rec, tok, 'x')
  n_a, n = len(context) + 1, len(context) + 1 + len(target) + 1
  assert g['tokens'][0, :n].tolist() == context + [tk.MASK, tk.SOP] + target and g['context_length'][0] == n_a
  assert list(g['targets'][0][g['weights'][0] > 0]) == target + [tk.EOP]
  assert (g['weights'][0, :n_a] == 0).all() and (g['weights'][0, n_a:n] == 1).all()
  assert g['positions'][0, :n].tolist() == list(range(n_a)) + [n_a - 1] * (n - n_a)  # at the [MASK]
  assert g['block_positions'][0, :n].tolist() == [0] * n_a + list(range(1, n - n_a + 1))


# one-piece words of the test tokenizer: the pairs are short, so the tiny models memorize them in few steps
COPY = ['new file', 'data type', 'user name', 'system path', 'test value', 'time line', 'module list', 'set the']


@pytest.mark.slow
@pytest.mark.parametrize('family', ['gpt', 't5', 'bart', 'glm', 'transformer', 'rnn_lm', 'rnn_seq2seq'])
def test_sft_then_generate_reproduces_a_copy_task(family, tokenizer_path, tmp_path):
  """The train/inference contract end to end: fine-tuned (from scratch) on eight 'copy: X' -> 'X' pairs, greedy
  zoo.generate answers every prompt with its target exactly. A family whose generation lays out the prompt
  otherwise than fine-tuning did (GLM's [MASK] / [sop] / 2-D positions, a missing source [EOS], another start or
  stop token) fails here, however low its training loss."""
  data = tmp_path / 'copy.jsonl'
  data.write_text(''.join(json.dumps({'input': f'copy: {x}', 'target': x}) + '\n' for x in COPY))
  # the fewest steps with a margin: GPT, T5, BART and GLM reach a training loss of 0.001-0.03 by step 60 and
  # 0.0007-0.012 by step 80 (seeds 0-2); the post-LN Transformer learns slower, at a lower rate (one layer per
  # stack at 5e-3: 0.03-0.05 by step 150, seeds 0-2; at 3e-3, 0.16-0.38)
  optimizer = {'optimizer.learning_rate': 5e-3, 'train.steps': 150} if family == 'transformer' else {
      'optimizer.learning_rate': 1e-2, 'train.steps': 80}
  if family.startswith('rnn'):  # the RNN papers' SGD (zoo.optim): Adam saturates these tiny RNNs on 8 pairs
    # at 1.5, seeds 0-2 reach a training loss of 0.016-0.067 by step 200 and answer all 8 (at 1.0, RNN seq2seq was
    # still at 0.07 after 300 steps and could miss one; at 2.0 it diverges)
    optimizer = {'optimizer.name': 'sgd', 'optimizer.learning_rate': 1.5, 'optimizer.clip_norm': 5.0,
                 'optimizer.weight_decay': 0.0, 'optimizer.decay': 'constant', 'train.steps': 250}
  c = finetune_config('sft', '', **{'train.seq_len': 32, 'train.batch_size': 8,
                                    'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000,
                                    'optimizer.warmup_steps': 10, 'task.train': f'jsonl:{data}',
                                    'task.validation': f'jsonl:{data}', 'mesh.devices': 1,
                                    'model.dropout_rate': 0.0, 'log.every': 50, **optimizer})
  config_lib.set_model(c, family, 'tiny')
  # one layer per stack (T5, BART, the Transformer, the RNNs: 8 of 8 answers, seeds 0-2), but two for GPT and GLM:
  # an attention-only decoder copies its prompt through an induction circuit (a previous-token head, then a head
  # that attends to what followed it), where an encoder-decoder's cross-attention reads the source directly and an
  # RNN carries it in its state
  if family not in ('gpt', 'glm'):
    one_layer_per_stack(c)
  workdir = str(tmp_path / family)
  train.train_and_evaluate(c, workdir)
  loaded = zoo_api.load(workdir, devices=1)
  answers = zoo_api.generate(loaded, [f'copy: {x}' for x in COPY], max_new=12)
  assert [a.strip() for a in answers] == COPY, answers


@pytest.mark.slow
@pytest.mark.parametrize('family', ['gpt'])  # on the demo:sft defaults; every family learns the copy task above
def test_sft_learns(family, tmp_path, tokenizer_path):
  c = finetune_config('sft', '', **{'train.steps': 60, 'train.seq_len': 24, 'data.vocab_size': 1000,
                                    'data.tokenizer': tokenizer_path,
                                    'optimizer.learning_rate': 5e-3})
  config_lib.set_model(c, family, 'tiny')
  metrics = train.train_and_evaluate(c, str(tmp_path / family))
  rows = [r for r in _metrics(str(tmp_path / family)) if 'loss' in r and 'eval_loss' not in r]
  assert rows[-1]['loss'] < rows[0]['loss'] - 1.0
  assert metrics['loss'] < rows[0]['loss'] - 1.0 and 0.0 < metrics['token_accuracy'] <= 1.0, metrics


def test_bad_task_configs_are_refused(pretrained, tmp_path):
  with pytest.raises(ValueError, match='task.fields|task.text_field'):
    c = finetune_config('classification', pretrained, **{'task.fields.text_field': 'text'})
    train.build(c, str(tmp_path / 'a'))
  with pytest.raises(FileNotFoundError, match='no file'):
    train.build(finetune_config('classification', pretrained, **{'task.train': 'tsv:/nonexistent.tsv'}),
                  str(tmp_path / 'b'))
  with pytest.raises(FileNotFoundError, match='config.json'):
    train.build(finetune_config('classification', str(tmp_path)), str(tmp_path / 'c'))
  with pytest.raises(ValueError, match='fine-tunes'):  # before a tokenizer is trained into the workdir
    train.build(finetune_config('qa', '', **{'model.family': 'gpt'}), str(tmp_path / 'd'))
  assert not (tmp_path / 'd').exists()


def test_sentence_pairs_cut_the_longer_text_first():
  class Tok:
    def encode(self, text):
      return [10 + len(w) for w in text.split()]
  ids, types = tasks.classification.encode_pair(Tok(), 'a bb ccc dddd', 'x y', seq_len=8)
  # [CLS] a a a [SEP] b b [SEP]: 5 budget tokens; the first text (4 words) is cut to 3, the pair keeps 2
  assert ids == [tk.CLS, 11, 12, 13, tk.SEP, 11, 11, tk.SEP]
  assert types == [0, 0, 0, 0, 0, 1, 1, 1]
  single, t1 = tasks.classification.encode_pair(Tok(), 'a bb', None, seq_len=8)
  assert single == [tk.CLS, 11, 12, tk.SEP] and t1 == [0] * 4


def test_tfds_examples_come_back_with_label_names(tmp_path):
  """A prepared TFDS dataset (array_record, no TensorFlow) with ClassLabel features, read by name and by its
  directory alone (how glue / conll2003 are read when their builder code needs TensorFlow)."""
  import tensorflow_datasets as tfds

  class ToyNer(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'sentence': tfds.features.Text(), 'label': tfds.features.ClassLabel(names=['neg', 'pos']),
          'tokens': tfds.features.Sequence(tfds.features.Text()),
          'ner': tfds.features.Sequence(tfds.features.ClassLabel(names=['O', 'B-PER', 'I-PER']))}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      yield 0, {'sentence': 'good', 'label': 1, 'tokens': ['Anna', 'Smith', 'ran'], 'ner': [1, 2, 0]}
      yield 1, {'sentence': 'bad', 'label': 0, 'tokens': ['it', 'rained'], 'ner': [0, 0]}

  ToyNer(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  want = [{'sentence': 'good', 'label': 'pos', 'tokens': ['Anna', 'Smith', 'ran'], 'ner': ['B-PER', 'I-PER', 'O']},
          {'sentence': 'bad', 'label': 'neg', 'tokens': ['it', 'rained'], 'ner': ['O', 'O']}]
  got = sorted(tasks.read_records('tfds:toy_ner', data_dir=str(tmp_path)), key=lambda r: r['sentence'], reverse=True)
  assert got == want
  from zoo.tasks import records
  builder = records._prepared_builder('toy_ner', str(tmp_path))  # no builder code needed
  assert sorted(records._plain(builder.as_data_source(split='train')[i], builder.info.features)['label']
                for i in range(2)) == ['neg', 'pos']
  with pytest.raises(FileNotFoundError, match='no file'):
    tasks.read_records('jsonl:/nonexistent.jsonl')
  with pytest.raises(ValueError, match='TFDS cannot find'):
    tasks.read_records('tfds:no_such_dataset_here', data_dir=str(tmp_path))


def test_task_rows_are_read_without_threads():
  """A task's rows are in memory: its batches come without grain's reading threads (16 of them, 500 batches ahead,
  contended for the GIL with the step: a tiny GPT fine-tuning run traced its step in 5 s instead of 0.4 s), shuffled
  anew each epoch, every row once per epoch."""
  import threading

  from zoo.tasks import base
  arrays = {'tokens': np.arange(64).reshape(16, 4), 'weights': np.ones((16, 4), np.float32)}
  before = threading.active_count()
  it = iter(base.dataset(arrays, 4, seed=0))
  batches = [next(it) for _ in range(8)]  # two epochs
  assert threading.active_count() == before
  firsts = [b['tokens'][:, 0] // 4 for b in batches]
  assert sorted(np.concatenate(firsts[:4])) == list(range(16)) == sorted(np.concatenate(firsts[4:]))
  assert not np.array_equal(np.concatenate(firsts[:4]), np.concatenate(firsts[4:]))
  state = it.get_state()  # a restored iterator goes on with the same batches
  later = [next(it)['tokens'] for _ in range(3)]
  again = iter(base.dataset(arrays, 4, seed=0))
  again.set_state(state)
  np.testing.assert_array_equal(np.stack([next(again)['tokens'] for _ in range(3)]), np.stack(later))
  # each process reads its own rows; a finite run ends after its epochs, every row once per epoch, in order
  halves = [list(base.dataset(arrays, 2, seed=0, num_epochs=1, shard_index=i, shard_count=2)) for i in (0, 1)]
  assert [len(h) for h in halves] == [4, 4]
  assert sorted(np.concatenate([b['tokens'][:, 0] // 4 for b in halves[0]])) == list(range(0, 16, 2))
  ordered = list(base.dataset(arrays, 4, seed=0, shuffle=False, num_epochs=2))
  assert [b['tokens'][0, 0] // 4 for b in ordered] == [0, 4, 8, 12] * 2

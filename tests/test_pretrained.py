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


def zoo_loss(run, example) -> float:
  """The run's step-0 loss on `example` (its initial parameters, no dropout): each term's sum over its count."""
  params = jax.device_get(train.init_state(run).params)
  outputs = run.model.apply({'params': params}, **run.objective.inputs(example), deterministic=True)
  terms, counts = run.objective.terms(outputs, example), run.objective.counts(example)
  return sum(float(terms[k][0]) / float(counts[k]) for k in terms)


def mlm_labels(example) -> np.ndarray:
  """transformers' MLM labels of a zoo example: the original token where one is predicted, -100 elsewhere."""
  labels = np.full(example['tokens'].shape, -100, np.int64)
  for i in range(len(labels)):
    w = example['mlm_weights'][i] > 0
    labels[i, example['mlm_positions'][i][w]] = example['mlm_labels'][i][w]
  return labels


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
  rows = [run.tokenizer.encode(s) + [102] for s in domain_sentences(False)[:16]]
  t = 32
  tokens = np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  seg = (tokens > 0).astype(np.int32)
  batch = {'tokens': tokens, 'segment_ids': seg, 'positions': np.arange(t, dtype=np.int32)[None] * seg}
  example = run.objective.example(batch, np.random.default_rng(3))
  ours, labels = zoo_loss(run, example), mlm_labels(example)
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
  with pytest.raises(Exception, match=r"^init_from=.*llama: config.json model_type='llama' is not supported") as e:
    train.build(mlm_config(llama, domain / 'train.txt'), str(tmp_path / 'b'))
  assert '\n' not in str(e.value)
  no_mask = tmp_path / 'no_mask'
  no_mask.mkdir()
  for f in os.listdir(hf_bert):
    (no_mask / f).write_bytes((hf_bert / f).read_bytes())
  (no_mask / 'vocab.txt').write_text('\n'.join(t if t != '[MASK]' else '[unused99]' for t in BERT_VOCAB) + '\n')
  with pytest.raises(ValueError, match=re.escape("objective.name='mlm' needs a mask token, and the tokenizer")):
    train.build(mlm_config(no_mask, domain / 'train.txt'), str(tmp_path / 'c'))


# ------------------------------------------------------------------------------------------ T5 and GPT-2

def _t5_dir(d, transformers):
  import io

  import sentencepiece as spm
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(domain_sentences(False) * 4), model_writer=model,
                                 vocab_size=40, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  (d / 'spiece.model').write_bytes(model.getvalue())  # T5's layout: <pad> 0, </s> 1, <unk> 2, 100 sentinels after
  config = transformers.T5Config(vocab_size=140, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                 num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                 decoder_start_token_id=0, feed_forward_proj='gated-gelu', tie_word_embeddings=False)
  return transformers.T5ForConditionalGeneration(config)


def _gpt2_dir(d, transformers):
  import tokenizers
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(domain_sentences(False) * 4, vocab_size=300, min_frequency=2, show_progress=False)
  bpe.save_model(str(d))
  vocab = json.loads((d / 'vocab.json').read_text())
  vocab['<|endoftext|>'] = len(vocab)  # last, as GPT-2's 50256
  (d / 'vocab.json').write_text(json.dumps(vocab))
  config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1)
  return transformers.GPT2LMHeadModel(config)


RECIPES = {'t5': ('t5', _t5_dir, {}), 'gpt2': ('gpt', _gpt2_dir, {'data.packing': 'pad'})}


@pytest.fixture(scope='module', params=sorted(RECIPES))
def hf_model(request, tmp_path_factory):
  torch, transformers = _transformers()
  d = tmp_path_factory.mktemp(request.param)
  torch.manual_seed(0)
  RECIPES[request.param][1](d, transformers).eval().save_pretrained(str(d))
  return request.param, d


def _config(kind, hf_dir, source, **overrides):
  recipe, _, fixed = RECIPES[kind]
  c = importlib.import_module(f'configs.{recipe}').get_config('tiny')
  return config_lib.override(c, {'init_from': str(hf_dir), 'data.source': f'text:{source}', 'train.seq_len': 32,
                                 'train.batch_size': 16, 'train.eval_batches': 1, 'log.every': 1,
                                 'log.tensorboard': False, 'mesh.devices': 2, 'optimizer.warmup_steps': 2,
                                 'model.dropout_rate': 0.0, **fixed, **overrides})


def test_t5_and_gpt2_rows_hold_their_own_ids_and_score_as_transformers(hf_model, domain, tmp_path):
  """T5: the sentinels are its <extra_id_i> (counting down from the top) and </s> closes each target; GPT-2:
  <|endoftext|> closes each document. zoo's loss at step 0 is transformers' on the same example."""
  torch, transformers = _transformers()
  kind, hf_dir = hf_model
  run = train.build(_config(kind, hf_dir, domain / 'train.txt'), str(tmp_path))
  tok, ids = run.tokenizer, specials.of(run.tokenizer)
  example = run.objective.example(next(iter(run.inputs.train_dataset(run))), np.random.default_rng(0))
  ours = zoo_loss(run, example)
  tensor = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)  # noqa: E731
  if kind == 't5':
    assert ids.sentinels[:3] == (tok.vocab_size - 1, tok.vocab_size - 2, tok.vocab_size - 3)
    assert tok.id_to_token(ids.sentinels[0]) == '<extra_id_0>' and ids.eos == 1
    targets = example['targets']
    assert ids.sentinels[0] in example['tokens'] and ids.sentinels[0] in targets
    assert all(row[row > 0][-1] == 1 for row in targets)  # </s> ends every target
    labels = np.where(example['weights'] > 0, targets, -100)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():
      theirs = hf(input_ids=tensor(example['tokens']), attention_mask=tensor(example['tokens'] > 0),
                  decoder_input_ids=tensor(example['decoder_tokens']), labels=tensor(labels)).loss.item()
  else:
    eot = tok.vocab_size - 1
    assert ids.eos == eot and tok.id_to_token(eot) == '<|endoftext|>'
    seg, tokens = example['segment_ids'], example['tokens']
    last = (seg > 0) & (np.roll(seg, -1, axis=1) != seg)  # each row's last real token: a document ends there
    assert eot in tokens[last] and not np.isin(tokens[seg > 0], np.arange(len(specials.NAMES))).any()
    labels = np.where(seg > 0, tokens, -100)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():
      theirs = hf(input_ids=tensor(tokens), attention_mask=tensor(seg > 0), position_ids=tensor(example['positions']),
                  labels=tensor(labels)).loss.item()
  print(f'{kind} step-0 loss: zoo {ours:.6f}, transformers {theirs:.6f}')
  assert abs(ours - theirs) < 1e-4


@pytest.mark.slow
def test_t5_and_gpt2_further_pretraining_learns_the_domain(hf_model, domain, tmp_path):
  kind, hf_dir = hf_model
  work = tmp_path / kind
  train.train_and_evaluate(_config(kind, hf_dir, domain / 'train.txt', **{
      'train.steps': 60, 'optimizer.learning_rate': 3e-3, 'checkpoint.every': 60}), str(work))
  losses = [json.loads(line)['loss'] for line in open(work / 'metrics.jsonl') if '"loss"' in line]
  print(f'{kind}: loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f}')
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
  # exported with its original vocabulary, transformers loads it unchanged and decodes greedily as zoo does
  import zoo
  from zoo.convert import cli
  torch, transformers = _transformers()
  exported = tmp_path / 'exported'
  assert cli.main(['export', '--workdir', str(work), '--out', str(exported)]) == 0
  loaded = zoo.load(str(work), devices=1)
  tok = transformers.AutoTokenizer.from_pretrained(str(exported))
  if kind == 't5':  # the span a sentinel stands for, as pretrained: its ids (the sentinels are special)
    prompt = 'in the garden the cat eats <extra_id_0> .'
    from zoo import generation
    ours = generation.generate_ids(loaded, [prompt], max_new=4)[0]
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(exported)).eval()
    with torch.no_grad():
      theirs = model.generate(tok(prompt, return_tensors='pt')['input_ids'], max_new_tokens=4,
                              do_sample=False)[0].tolist()[1:]  # after the decoder's start
    assert ours[0] == tok.convert_tokens_to_ids('<extra_id_0>')
  else:
    prompt = 'in the garden the cat eats'
    ours = zoo.generate(loaded, [prompt], max_new=4)[0]
    pipe = transformers.pipeline('text-generation', model=str(exported), tokenizer=str(exported), device='cpu')
    theirs = pipe(prompt, max_new_tokens=4, do_sample=False, return_full_text=False)[0]['generated_text']
    assert ours.strip()
  print(f'{kind} greedy continuation: zoo {ours!r}, transformers {theirs!r}')
  assert ours == theirs


def test_a_hub_name_is_read_from_the_cache_offline(hf_bert, tmp_path):
  """init_from=hf:<name> with HF_HUB_OFFLINE=1: huggingface_hub's cache, laid out here as a download leaves it."""
  pytest.importorskip('huggingface_hub')
  cache, revision = tmp_path / 'hub', 'a' * 40
  snapshot = cache / 'models--zoo-test--tiny-bert' / 'snapshots' / revision
  snapshot.mkdir(parents=True)
  for f in os.listdir(hf_bert):
    (snapshot / f).write_bytes((hf_bert / f).read_bytes())
  (cache / 'models--zoo-test--tiny-bert' / 'refs').mkdir()
  (cache / 'models--zoo-test--tiny-bert' / 'refs' / 'main').write_text(revision)
  env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache))
  code = ('import sys; from zoo import pretrained\n'
          'for name in sys.argv[2:]:\n'
          '  try:\n'
          '    s = pretrained.resolve(name, sys.argv[1]); print(s.kind, s.meta["family"], s.meta["source"]["hf_dir"])\n'
          '  except Exception as e: print(type(e).__name__, e)')
  import subprocess
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'work'), 'hf:zoo-test/tiny-bert',
                        'hf:zoo-test/absent'], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  lines = out.stdout.strip().splitlines()
  assert lines[0] == f'zoo bert {snapshot}', out.stderr
  assert lines[1].startswith('FileNotFoundError init_from=hf:zoo-test/absent: the Hub gave no such model') \
      and 'HF_HUB_OFFLINE=1 it must be in the cache' in lines[1]


def test_chinese_whole_words_of_a_character_vocabulary_follow_the_segmenter(tmp_path):
  """BERT-Chinese has one token per character; with data.word_segmenter=jieba all characters of one segmented word
  are one unit, as Chinese BERT-wwm masks them; WordPiece '##' pieces stay inside their word."""
  jieba = pytest.importorskip('jieba')
  from zoo import objectives
  from zoo.data import hf_tokenizer
  text = '自然语言处理很重要 tokenizing'
  chars = sorted(set(text) - {' '})
  (tmp_path / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'token', '##izing']
                                                + chars) + '\n')
  tok = hf_tokenizer.HFTokenizer.load(str(tmp_path))
  ids, starts = tok.encode_words(text, 'jieba')
  pieces = [tok.id_to_token(i) for i in ids]
  words, unit = [], ''
  for p, s in zip(pieces, starts):
    if s and unit:
      words.append(unit)
      unit = ''
    unit += p.replace('##', '')
  words.append(unit)
  jieba.setLogLevel(60)
  assert words == [w for w, _, _ in jieba.tokenize(text) if w.strip()]
  assert not tok.word_starts(ids).all()  # by the vocabulary alone '##izing' continues a word too
  mlm = objectives.make('mlm', vocab_size=tok.vocab_size, num_special=5, specials=specials.of(tok),
                        masking='whole_word', word_starts=tok.word_starts(np.arange(tok.vocab_size)))
  lo, hi = mlm.units(np.asarray(ids), np.ones(len(ids), bool), starts=starts)
  assert [''.join(pieces[a:b]).replace('##', '') for a, b in zip(lo, hi)] == words


def test_further_pretraining_reads_a_corpus_prepared_with_the_models_tokenizer(hf_bert, domain, tmp_path):
  """A large domain corpus is prepared once with the HF model's vocabulary (python -m zoo.data.prepare
  --tokenizer=<HF dir>); init_from then trains on its shards, each document framed [CLS] ... [SEP]."""
  from zoo.data import prepare
  out = tmp_path / 'prepared'
  prepare.prepare(f'text:{domain}/train.txt', str(out), tokenizer=str(hf_bert), workers=1, progress=False)
  c = mlm_config(hf_bert, domain / 'train.txt', **{'data.source': f'prepared:{out}', 'train.steps': 3})
  run = train.build(c, str(tmp_path / 'w'))
  batch = next(iter(run.inputs.train_dataset(run)))
  assert batch['tokens'][0][0] == 101 and 102 in batch['tokens'][0]
  assert train.train_and_evaluate(c, str(tmp_path / 'w'))['step'] == 3
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'vocab.txt').write_text('\n'.join(BERT_VOCAB[:-1]) + '\n')
  with pytest.raises(ValueError, match=r'data.tokenizer=.* is not the tokenizer prepared:.* was made with'):
    train.build(config_lib.override(c, {'data.tokenizer': str(other)}), str(tmp_path / 'x'))


def test_roberta_further_pretrains_with_its_own_ids_and_scores_as_transformers(domain, tmp_path):
  """RoBERTa (dynamic MLM): <s> text </s> rows, its <mask>, its positions past the padding id; zoo's MLM loss at
  step 0 is transformers' on the same masked batch."""
  torch, transformers = _transformers()
  import tokenizers
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(domain_sentences(False) * 4, vocab_size=300, min_frequency=2, show_progress=False,
                          special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
  bpe.save_model(str(tmp_path))
  hf_dir = tmp_path / 'roberta'
  tok = transformers.RobertaTokenizer.from_pretrained(str(tmp_path))  # vocab.json + merges.txt
  tok.save_pretrained(str(hf_dir))
  torch.manual_seed(0)
  config = transformers.RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                                      pad_token_id=1, bos_token_id=0, eos_token_id=2)
  transformers.RobertaForMaskedLM(config).eval().save_pretrained(str(hf_dir))
  run = train.build(mlm_config(hf_dir, domain / 'train.txt'), str(tmp_path / 'w'))
  ids = specials.of(run.tokenizer)
  assert run.config.model.family == 'roberta'
  assert (ids.cls, ids.pad, ids.sep, ids.unk, ids.mask, ids.end) == (0, 1, 2, 3, 4, 2)
  batch = next(iter(run.inputs.train_dataset(run)))
  assert batch['tokens'][0][0] == 0 and 2 in batch['tokens'][0]  # each document framed <s> ... </s>
  rows = [tok(s)['input_ids'] for s in domain_sentences(False)[:16]]
  tokens = np.ones((len(rows), 32), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  seg = (tokens != 1).astype(np.int32)
  example = run.objective.example({'tokens': tokens, 'segment_ids': seg, 'positions': np.arange(32)[None] * seg},
                                  np.random.default_rng(1))
  assert 4 in example['tokens']
  ours, labels = zoo_loss(run, example), mlm_labels(example)
  hf = transformers.RobertaForMaskedLM.from_pretrained(str(hf_dir)).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(example['tokens'], dtype=torch.long),
                attention_mask=torch.tensor(seg, dtype=torch.long), labels=torch.tensor(labels)).loss.item()
  print(f'roberta step-0 MLM loss: zoo {ours:.6f}, transformers {theirs:.6f}')
  assert abs(ours - theirs) < 1e-4


@pytest.mark.slow
def test_an_hf_electra_discriminator_fine_tunes_and_further_pretrains(tmp_path, domain):
  """ELECTRA's published discriminator (with BERT's vocab.txt): classification starts from it directly, and RTD
  further pretraining gets a fresh generator of ELECTRA's proportions beside it."""
  torch, transformers = _transformers()
  hf_dir = tmp_path / 'electra'
  torch.manual_seed(0)
  transformers.ElectraForPreTraining(transformers.ElectraConfig(
      vocab_size=len(BERT_VOCAB), embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_position_embeddings=64)).eval().save_pretrained(str(hf_dir))
  (hf_dir / 'vocab.txt').write_text('\n'.join(BERT_VOCAB) + '\n')
  data = tmp_path / 'train.jsonl'
  data.write_text('\n'.join(json.dumps({'sentence': s, 'label': 'meat' if 'dog' in s else 'other'})
                            for s in domain_sentences(False)) + '\n')
  c = config_lib.override(importlib.import_module('configs.finetune').get_config('classification'), {
      'init_from': str(hf_dir), 'task.init_from': '', 'task.train': f'jsonl:{data}', 'task.validation': f'jsonl:{data}',
      'train.seq_len': 32, 'train.batch_size': 8, 'train.steps': 3, 'log.every': 1, 'log.tensorboard': False,
      'mesh.devices': 2, 'train.eval_batches': 1})
  assert train.train_and_evaluate(c, str(tmp_path / 'cls'))['step'] == 3
  rtd = config_lib.override(importlib.import_module('configs.electra').get_config('tiny'), {
      'init_from': str(hf_dir), 'data.source': f'text:{domain}/train.txt', 'train.seq_len': 32,
      'train.batch_size': 16, 'train.steps': 3, 'train.eval_batches': 1, 'log.tensorboard': False, 'mesh.devices': 2})
  run = train.build(rtd, str(tmp_path / 'rtd'))
  assert run.config.model.generator_embed_dim == 64 and specials.of(run.tokenizer).mask == 103
  assert train.train_and_evaluate(rtd, str(tmp_path / 'rtd'))['step'] == 3


@pytest.mark.parametrize('pair_task', ['nsp', 'sop'])
def test_sentence_pairs_use_the_tokenizers_cls_and_sep_and_score_as_transformers(hf_bert, pair_task, tmp_path):
  """BERT's NSP (ALBERT's SOP the same way): [CLS] A [SEP] B [SEP] in BERT's ids, cut at the sentences of each
  document; zoo's MLM + pair loss at step 0 is BertForPreTraining's on the same example."""
  torch, transformers = _transformers()
  two = domain_sentences(False)
  (tmp_path / 'pairs.txt').write_text('\n'.join(f'{a} {b}' for a, b in zip(two, two[1:] + two[:1])) + '\n')
  c = mlm_config(hf_bert, tmp_path / 'pairs.txt', **{'objective.name': 'nsp' if pair_task == 'nsp' else 'sop'})
  run = train.build(c, str(tmp_path / 'w'))
  example = run.objective.example(next(iter(run.inputs.train_dataset(run))), np.random.default_rng(0))
  tokens, types, seg = example['tokens'], example['token_types'], example['segment_ids']
  assert (tokens[:, 0] == 101).all() and ((tokens == 102).sum(1) == 2).all()
  assert not np.isin(tokens[seg > 0], np.arange(1, 100)).any() and types.max() == 1
  ours, labels = zoo_loss(run, example), mlm_labels(example)
  pair = np.where(example['pair_weights'] > 0, example['pair_labels'], -100)
  hf = transformers.BertForPreTraining.from_pretrained(str(hf_bert)).eval()
  tensor = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)  # noqa: E731
  with torch.no_grad():
    theirs = hf(input_ids=tensor(tokens), attention_mask=tensor(seg), token_type_ids=tensor(types),
                labels=tensor(labels), next_sentence_label=tensor(pair)).loss.item()
  print(f'{pair_task} step-0 loss (MLM + pair): zoo {ours:.6f}, transformers {theirs:.6f}')
  assert abs(ours - theirs) < 1e-4


def test_bart_denoises_with_its_own_mask_and_scores_as_transformers(domain, tmp_path):
  """BART: each document <s> text </s> (the framing is never noised), its <mask> for infilled spans, padding with
  its <pad> (1), the decoder started at its decoder_start_token_id (</s>); step-0 loss is transformers'."""
  torch, transformers = _transformers()
  import tokenizers
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(domain_sentences(False) * 4, vocab_size=300, min_frequency=2, show_progress=False,
                          special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
  bpe.save_model(str(tmp_path))
  hf_dir = tmp_path / 'bart'
  tok = transformers.BartTokenizer.from_pretrained(str(tmp_path))
  tok.save_pretrained(str(hf_dir))
  torch.manual_seed(0)
  config = transformers.BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                   decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                                   eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
  transformers.BartForConditionalGeneration(config).eval().save_pretrained(str(hf_dir))
  c = importlib.import_module('configs.bart').get_config('tiny')
  c = config_lib.override(c, {'init_from': str(hf_dir), 'data.source': f'text:{domain}/train.txt',
                              'train.seq_len': 32, 'train.batch_size': 16, 'train.eval_batches': 1,
                              'log.tensorboard': False, 'mesh.devices': 2, 'model.dropout_rate': 0.0})
  run = train.build(c, str(tmp_path / 'w'))
  ids = specials.of(run.tokenizer)
  assert (ids.mask, ids.pad, ids.decoder_start) == (4, 1, 2)
  example = run.objective.example(next(iter(run.inputs.train_dataset(run))), np.random.default_rng(0))
  inputs, targets = example['tokens'], example['targets']
  assert 4 in inputs and (example['decoder_tokens'][:, 0] == 2).all()
  starts = targets[:, 0] == 0  # rows that begin with a document's <s> (concat packing cuts the others)
  assert starts.any() and (inputs[starts, 0] == 0).all()  # the framing is kept, not noised
  ours = zoo_loss(run, example)
  hf = transformers.BartForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
  tensor = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)  # noqa: E731
  with torch.no_grad():
    theirs = hf(input_ids=tensor(inputs), attention_mask=tensor(inputs != 1),
                decoder_input_ids=tensor(example['decoder_tokens']),
                labels=tensor(np.where(example['weights'] > 0, targets, -100))).loss.item()
  print(f'bart step-0 denoising loss: zoo {ours:.6f}, transformers {theirs:.6f}')
  assert abs(ours - theirs) < 1e-4


@pytest.mark.slow
def test_sft_fine_tunes_t5_and_gpt2_from_their_hf_directories(hf_model, tmp_path):
  """SFT's pairs in the tokenizer's own ids: GPT-2 context target <|endoftext|>; T5 context </s> -> <pad> target
  </s>. Then zoo.generate answers with the fine-tuned model."""
  import zoo
  kind, hf_dir = hf_model
  data = tmp_path / 'sft.jsonl'
  pairs = [json.dumps({'input': f'the {a} eats', 'target': food}) for a, food in ANIMALS.items()] * 2
  data.write_text('\n'.join(pairs) + '\n')
  c = config_lib.override(importlib.import_module('configs.finetune').get_config('sft'), {
      'init_from': str(hf_dir), 'task.init_from': '', 'task.train': f'jsonl:{data}', 'task.validation': f'jsonl:{data}',
      'train.seq_len': 16, 'train.batch_size': 8, 'train.steps': 4, 'log.every': 1, 'log.tensorboard': False,
      'mesh.devices': 2, 'train.eval_batches': 1, 'model.dropout_rate': 0.0})
  run = train.build(c, str(tmp_path / 'sft'))
  tok, ids = run.tokenizer, specials.of(run.tokenizer)
  arrays, _ = run.objective.featurize(run.records['train'][:1], tok, 'x')
  row = arrays['tokens'][0][arrays['segment_ids'][0] > 0].tolist()
  answer = arrays['targets'][0][arrays['weights'][0] > 0].tolist()
  if kind == 't5':
    assert row == tok.encode('the cat eats') + [1] and arrays['decoder_tokens'][0][0] == 0
    assert answer == tok.encode('fish') + [1]
  else:
    assert row == tok.encode('the cat eats') + tok.encode('fish') + [ids.eos]
    assert answer == tok.encode('fish') + [ids.eos]
  assert train.train_and_evaluate(c, str(tmp_path / 'sft'))['step'] == 4
  loaded = zoo.load(str(tmp_path / 'sft'), devices=1)
  assert isinstance(zoo.generate(loaded, ['the dog eats'], max_new=3)[0], str)
  from zoo import contract
  want = (0, 1) if kind == 't5' else (ids.eos, ids.eos)  # few-shot scores choices in the same layout
  assert (contract.for_config(loaded.config, specials.of(loaded.tokenizer)).start_id,
          contract.for_config(loaded.config, specials.of(loaded.tokenizer)).stop_id) == want

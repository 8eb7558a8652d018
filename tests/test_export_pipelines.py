"""A model trained with zoo works in transformers after `python -m zoo.convert export`: its tokenizer (converted
from zoo's SentencePiece model) gives zoo's ids, GPT's text-generation pipeline continues a prompt as
zoo.generate does (also in a process that never imports zoo), T5's text2text generation answers as zoo.generate does,
BERT's fill-mask picks zoo's MLM argmax, and the families transformers cannot express are refused in one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from zoo import convert
from zoo.convert import tokenizer as hf_tok
from zoo.data import tokenizer as tk

transformers = None  # imported by _hf when a test here first runs, not at collection (torch takes 5 s)


@pytest.fixture(scope='module', autouse=True)
def _hf():
  global transformers
  pytest.importorskip('tokenizers')
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  transformers.logging.set_verbosity_error()

SENTENCES = ['hello world', 'The quick brown fox jumps over the lazy dog!', ' a leading space', 'two  spaces, end ',
             '你好，世界。这是一个测试。', 'mixed 中文 and English 🙂 emoji', 'tab\tand\nnew line', '12345 and 3.14',
             'The [MASK] sat on the mat.', 'x<extra_id_3>y <extra_id_0> z', '[CLS] a [SEP] b [SEP]', '']


def _load(out):
  return transformers.AutoTokenizer.from_pretrained(str(out))


@pytest.fixture(scope='module')
def bpe_model(tmp_path_factory):
  """A small BPE zoo tokenizer (the fixture tokenizer_path is unigram)."""
  texts = ['hello world, this is zoo.', 'The quick brown fox jumps over the lazy dog!', '你好，世界。'] * 20
  return tk.train_tokenizer(texts, vocab_size=320, model_type='bpe', num_sentinels=4).__getstate__()['model_proto']


@pytest.mark.parametrize('kind', ['unigram', 'bpe'])
@pytest.mark.parametrize('family', ['gpt', 'bert', 't5'])
def test_tokenizer_gives_zoo_ids(tmp_path, tokenizer_path, bpe_model, kind, family):
  proto = open(tokenizer_path, 'rb').read() if kind == 'unigram' else bpe_model
  zoo_tok = tk.Tokenizer(proto)
  files = hf_tok.write_hf_tokenizer(proto, family, str(tmp_path), model_max_length=64)
  assert sorted(os.listdir(tmp_path)) == sorted(files)
  hf = _load(tmp_path)
  assert type(hf).__name__ in ('PreTrainedTokenizerFast', 'TokenizersBackend')
  assert len(hf) == zoo_tok.vocab_size and hf.model_max_length == 64
  assert [hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.cls_token_id, hf.sep_token_id,
          hf.mask_token_id] == [tk.PAD, tk.UNK, tk.BOS, tk.EOS, tk.CLS, tk.SEP, tk.MASK]
  assert hf.convert_tokens_to_ids(['[sop]', '[eop]', '<extra_id_0>', '<extra_id_3>']) == [7, 8, 9, 12]
  assert set(range(tk.FIRST_SENTINEL + zoo_tok.num_sentinels)) <= set(hf.all_special_ids)
  frame = {'gpt': lambda a: a, 'bert': lambda a: [tk.CLS, *a, tk.SEP], 't5': lambda a: [*a, tk.EOS]}[family]
  for text in SENTENCES:
    ids = zoo_tok.encode(text)
    assert hf(text, add_special_tokens=False)['input_ids'] == ids, text
    assert hf(text)['input_ids'] == frame(ids), text
    if family == 'gpt' and ids and zoo_tok.piece(ids[0]).startswith('▁'):  # GPT keeps the dummy prefix's space
      assert hf.decode(ids) == ' ' + zoo_tok.decode(ids), text
    else:
      assert hf.decode(ids) == zoo_tok.decode(ids), text
  if family == 'gpt':  # a continuation decoded alone, as text-generation does, is what zoo.generate returns
    for prompt, rest in (('The quick brown', ' fox jumps'), ('你好', '，世界'), ('hello', ' world, this is zoo.')):
      ids, whole = zoo_tok.encode(prompt), zoo_tok.encode(prompt + rest)
      assert whole[:len(ids)] == ids
      assert prompt + hf.decode(whole[len(ids):]) == zoo_tok.decode(whole), (prompt, rest)
  assert all(zoo_tok.piece(i).startswith('<0x') for i in zoo_tok.encode('🙂')[1:])  # byte fallback, tested above
  if family == 'bert':  # zoo's sentence pairs: [CLS] a [SEP] b [SEP], token types 0 then 1
    pair = hf('hello world', '你好')
    a, b = zoo_tok.encode('hello world'), zoo_tok.encode('你好')
    assert pair['input_ids'] == [tk.CLS, *a, tk.SEP, *b, tk.SEP]
    assert pair['token_type_ids'] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
  assert hf.decode(hf('hello [MASK] world')['input_ids'], skip_special_tokens=True) == (
      ' hello  world' if family == 'gpt' else 'hello  world')


# ------------------------------------------------------------------------------------------------ GPT

PROMPTS = ['The meaning of', 'Once upon a time']
MAX_NEW = 12


@pytest.fixture(scope='module')
def gpt_export(gpt_workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp('gpt_hf')
  assert convert.main(['export', '--workdir', gpt_workdir, '--out', str(out)]) == 0
  return str(out)


@pytest.fixture(scope='module')
def gpt_zoo_text(gpt_workdir):
  import zoo
  return zoo.generate(zoo.load(gpt_workdir), PROMPTS, max_new=MAX_NEW)


@pytest.mark.slow
def test_gpt_export_files(gpt_export, gpt_workdir):
  files = set(os.listdir(gpt_export))
  assert {'config.json', 'model.safetensors', 'generation_config.json', 'zoo_tokenizer.model'} | set(hf_tok.FILES) \
      <= files
  gen = json.load(open(os.path.join(gpt_export, 'generation_config.json')))
  assert (gen['eos_token_id'], gen['bos_token_id'], gen['pad_token_id']) == (tk.EOS, tk.BOS, tk.PAD)
  vocab = json.load(open(os.path.join(gpt_export, 'config.json')))['vocab_size']
  assert gen['suppress_tokens'] == list(range(1000, vocab)) and vocab > 1000  # the embedding's padding rows
  assert json.load(open(os.path.join(gpt_export, 'tokenizer_config.json')))['tokenizer_class'] == \
      'PreTrainedTokenizerFast'


@pytest.mark.slow
def test_gpt_pipeline_continues_as_zoo_generate(gpt_export, gpt_zoo_text, gpt_workdir):
  import jax.numpy as jnp
  import torch
  import zoo
  loaded = zoo.load(gpt_workdir)
  pipe = transformers.pipeline('text-generation', model=gpt_export, device='cpu')
  for prompt, want in zip(PROMPTS, gpt_zoo_text):
    out = pipe(prompt, do_sample=False, max_new_tokens=MAX_NEW, return_full_text=False)
    if out[0]['generated_text'] != want:
      # a barely trained model has near ties; transformers' greedy choice must then be one of zoo's: at every
      # step its token's logit (zoo's, on the same prefix) is within 1e-4 of zoo's largest
      ids = pipe.tokenizer(prompt)['input_ids']
      with torch.no_grad():
        row = pipe.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_NEW)[0].tolist()
      logits = np.asarray(loaded.model.apply({'params': loaded.params}, jnp.asarray([row])))[0]
      for t in range(len(ids), len(row)):
        step = logits[t - 1, :loaded.tokenizer.vocab_size]
        assert step.max() - step[row[t]] < 1e-4, (prompt, t, step.max() - step[row[t]])
  assert all(len(t) > 0 for t in gpt_zoo_text)  # a continuation, not only the prompt
  # six steps of training greedily continue with new lines: the logits on the transformers tokenizer's ids
  # check the rest
  for prompt in PROMPTS:
    ids = pipe.tokenizer(prompt)['input_ids']
    assert ids == loaded.tokenizer.encode(prompt)
    with torch.no_grad():
      theirs = pipe.model(torch.tensor([ids])).logits[0].numpy()
    ours = np.asarray(loaded.model.apply({'params': loaded.params}, jnp.asarray([ids])))[0]
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


# The "must hold": a process that imports only transformers and torch (zoo cannot be imported there)
_NO_ZOO = r'''
import json, sys
sys.modules['zoo'] = None  # any import of zoo fails
import torch, transformers
out, prompts, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = transformers.AutoTokenizer.from_pretrained(out)
model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
texts = []
for prompt in prompts:
  ids = tok(prompt, return_tensors='pt')
  with torch.no_grad():
    row = model.generate(**ids, do_sample=False, max_new_tokens=max_new)[0].tolist()
  n = ids['input_ids'].shape[1]
  whole = tok.decode(row, skip_special_tokens=True)
  texts.append(whole[len(tok.decode(row[:n], skip_special_tokens=True)):])
print(json.dumps({'texts': texts, 'zoo': [m for m, v in sys.modules.items() if v and m.split('.')[0] == 'zoo']}))
'''


@pytest.mark.slow
def test_gpt_greedy_without_zoo_in_the_process(gpt_export, gpt_zoo_text):
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
  run = subprocess.run([sys.executable, '-c', _NO_ZOO, gpt_export, json.dumps(PROMPTS), str(MAX_NEW)], env=env,
                       cwd=gpt_export, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result['zoo'] == []
  assert result['texts'] == gpt_zoo_text


# ------------------------------------------------------------------------------------------------ BERT

@pytest.mark.slow
def test_bert_fill_mask_matches_zoo_argmax(pretrained_bert, tmp_path):
  import jax.numpy as jnp
  import zoo
  out = str(tmp_path / 'bert_hf')
  assert convert.main(['export', '--workdir', pretrained_bert, '--out', out]) == 0
  loaded = zoo.load(pretrained_bert)
  tok = loaded.tokenizer
  fill = transformers.pipeline('fill-mask', model=out, device='cpu', top_k=1)
  for text in ['The capital of France is [MASK].', 'hello [MASK] world', '你好[MASK]界']:
    before, _, after = text.partition('[MASK]')
    ids = [tk.CLS, *tok.encode(text), tk.SEP]
    at = ids.index(tk.MASK)
    logits = loaded.model.apply({'params': loaded.params}, jnp.asarray([ids]))['mlm_logits'][0, at]
    want = int(np.argmax(np.asarray(logits)[:tok.vocab_size]))
    assert fill(text)[0]['token'] == want, text


# ------------------------------------------------------------------------------------------------ T5

T5_MAX_NEW = 8


@pytest.mark.slow
def test_t5_text2text_matches_zoo_generate(tmp_path, tokenizer_path):
  import contextlib
  import importlib
  import io

  import jax.numpy as jnp
  import torch
  import zoo
  from zoo import config as config_lib
  from zoo import train
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  c = config_lib.override(importlib.import_module('configs.t5').get_config('tiny'), {
      'data.tokenizer': tokenizer_path, 'data.vocab_size': 1000, 'log.tensorboard': False, 'train.steps': 5,
      'train.batch_size': 8, 'train.seq_len': 32, 'train.eval_batches': 1})
  workdir, out = str(tmp_path / 'workdir'), str(tmp_path / 't5_hf')
  with contextlib.redirect_stdout(io.StringIO()):
    train.train_and_evaluate(c, workdir)
  assert convert.main(['export', '--workdir', workdir, '--out', out]) == 0
  loaded = zoo.load(workdir, devices=1)
  want = zoo.generate(loaded, PROMPTS, max_new=T5_MAX_NEW)  # temperature 0: greedy
  assert all(len(t) > 0 for t in want)
  # The pipeline (transformers 4) is generate + decode(skip_special_tokens=True), done by hand on transformers 5,
  # which removed the task. It drops the sentinels <extra_id_N>, which zoo.generate keeps: five steps of training
  # emit none, so the texts can be compared whole.
  try:
    pipe = transformers.pipeline('text2text-generation', model=out, device='cpu')
  except KeyError:  # transformers 5 removed the task
    pipe = None
  hf = _load(out)
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  for prompt, text in zip(PROMPTS, want):
    ids = hf(prompt)['input_ids']
    assert ids == loaded.tokenizer.encode(prompt) + [tk.EOS]
    if pipe is not None:
      got = pipe(prompt, do_sample=False, num_beams=1, max_new_tokens=T5_MAX_NEW)[0]['generated_text']
    else:
      with torch.no_grad():
        row = model.generate(torch.tensor([ids]), do_sample=False, num_beams=1, max_new_tokens=T5_MAX_NEW)[0]
      got = hf.decode(row.tolist(), skip_special_tokens=True)
    assert got == text, prompt
    # the first decoder step (from [PAD]): the logits, since a tiny model's greedy text is degenerate
    with torch.no_grad():
      theirs = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([[tk.PAD]])).logits[0].numpy()
    ours = np.asarray(loaded.model.apply({'params': loaded.params}, jnp.asarray([ids]), jnp.asarray([[tk.PAD]])))[0]
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ refused

@pytest.mark.parametrize('family', ['glm', 'rnn_lm', 'rnn_seq2seq'])
def test_export_refuses_what_transformers_cannot_express(tmp_path, capsys, family):
  from zoo import models
  model = models.get_model(family, 'tiny')
  with pytest.raises(convert.ConversionError, match=f'not {family}: transformers has no architecture'):
    convert.export_hf(model, {}, family, str(tmp_path / 'out'))
  workdir = tmp_path / 'workdir'  # the command line refuses before restoring anything
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'model': {'family': family}}))
  with pytest.raises(SystemExit) as e:
    convert.main(['export', '--workdir', str(workdir), '--out', str(tmp_path / 'out')])
  assert e.value.code != 0
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: zoo converts bert, roberta, albert, electra, gpt, t5, bart') and family in err and '\n' not in err
  assert not (tmp_path / 'out').exists()


def test_export_refuses_the_transformer_naming_the_gap(tmp_path):
  from zoo import models
  with pytest.raises(convert.ConversionError, match='not transformer: zoo has no converter for it yet: .*MarianMT'):
    convert.export_hf(models.get_model('transformer', 'tiny'), {}, 'transformer', str(tmp_path / 'out'))

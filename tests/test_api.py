"""The notebook API: zoo.load restores a checkpoint trained on 8 devices onto 1 device (or another mesh) with the
same eval loss; zoo.evaluate and zoo.generate use it; `python -m zoo.sample` prints prompt + zoo.generate's text;
a continuation keeps its space; ids past the tokenizer are never sampled."""
import dataclasses
import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import zoo
from zoo import api, decoding, generation, sample
from zoo.data import tokenizer as tk

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def test_load_on_one_device_gives_the_recorded_eval_loss(gpt_workdir):
  with open(os.path.join(gpt_workdir, 'eval.json')) as f:
    recorded = json.load(f)
  loaded = zoo.load(gpt_workdir, devices=1)
  assert loaded.step == 6 and loaded.family == 'gpt'
  assert {d for x in jax.tree.leaves(loaded.params) for d in x.devices()} == {jax.devices()[0]}
  np.testing.assert_allclose(zoo.evaluate(loaded)['loss'], recorded['loss'], rtol=1e-5)
  on_mesh = zoo.load(os.path.join(gpt_workdir, 'checkpoints', '6'), mesh={'tensor': 2})  # a checkpoint dir
  np.testing.assert_allclose(zoo.evaluate(on_mesh)['loss'], recorded['loss'], rtol=1e-5)
  prompts = ['The module', 'def f']
  texts = zoo.generate(loaded, prompts, max_new=5)
  assert [_greedy_by_full_passes(loaded, p, 5) for p in prompts] == [p + t for p, t in zip(prompts, texts)]


@functools.lru_cache
def _forward(model):
  """The model's forward pass, compiled once: every call gets a row of _ROW ids."""
  return jax.jit(lambda params, ids: model.apply({'params': params}, ids))


_ROW = 16  # longer than any prompt here plus what it generates


def _greedy_by_full_passes(loaded, prompt, max_new):
  """The reference: greedy decoding by whole forward passes (no cache) over the tokenizer's ids, up to [EOS],
  decoded with the prompt. Each pass reads a row of fixed length (one compilation): a causal model's output at
  t ignores what follows t, so the padding after the ids so far changes nothing."""
  tok = loaded.tokenizer
  ids = tok.encode(prompt)
  assert tok.decode(ids) == prompt  # the prompt round-trips, so prompt + continuation is this decoding
  assert len(ids) + max_new <= _ROW
  for _ in range(max_new):
    row = np.zeros((1, _ROW), np.int32)
    row[0, :len(ids)] = ids
    logits = _forward(loaded.model)(loaded.params, jnp.asarray(row))
    nxt = int(jnp.argmax(logits[0, len(ids) - 1, :tok.vocab_size]))
    if nxt == tk.EOS:
      break
    ids.append(nxt)
  return tok.decode([t for t in ids if t > tk.EOP or t == tk.UNK])


# The sampling tests share prompts of one length (2 tokens) and settings: one compilation of the decoder.
PROMPTS = ['The module', 'The ', 'It is']
SETTINGS = {'max_new': 6, 'temperature': 3.0, 'top_k': 20}


def test_a_model_larger_than_its_tokenizer_never_samples_past_it(gpt_workdir):
  loaded = zoo.load(gpt_workdir, devices=1)
  tok, n = loaded.tokenizer, loaded.tokenizer.vocab_size
  assert loaded.model.vocab_size > n  # rounded up to a multiple of 128: 24 ids past the tokenizer
  # the last hidden state is u (the final norm's scale 0) and the rows past the tokenizer are 4u: their logits
  # (u . 4u = 64) are far above the others (u . e, e a trained row), so an unmasked decoder draws only them
  params = jax.tree.map(lambda x: x, loaded.params)
  u = jnp.full(params['final_norm']['bias'].shape, 0.5)
  params['final_norm'] = {'scale': jnp.zeros_like(u), 'bias': u}
  embed = params['token_embed']['embedding']
  params['token_embed']['embedding'] = embed.at[n:].set(4 * u.astype(embed.dtype))
  prompt = jnp.asarray([tok.encode(p) for p in PROMPTS], jnp.int32)
  out = np.asarray(decoding.sample_lm(loaded.model, params, prompt, jax.random.key(1), SETTINGS['max_new'],
                                      SETTINGS['temperature'], SETTINGS['top_k'], 1.0, vocab_size=n))
  assert out.shape == (3, 6) and out.max() < n
  # zoo.generate passes the tokenizer's size (an id past it would not decode: SentencePiece raises)
  assert len(zoo.generate(dataclasses.replace(loaded, params=params), PROMPTS, **SETTINGS)) == 3


def test_a_continuation_keeps_its_space(tokenizer_path):
  tok = tk.Tokenizer.load(tokenizer_path)
  ids = tok.encode('A dpkg trigger there')
  for prompt, want in (('A dpkg trigger', ' there'), ('A dpkg trigger the', 're')):
    head = tok.encode(prompt)
    assert ids[:len(head)] == head and tok.decode(head) == prompt
    new = ids[len(head):]
    assert tok.decode(new) == want.lstrip()  # decoded alone, SentencePiece drops the word's space
    assert generation.new_text(tok, new + [tk.EOS, 300], tk.EOS, prompt, head) == want
    assert prompt + want == tok.decode(ids)


def _loaded(family):
  config = ml_collections.ConfigDict({'model': {'family': family}})
  return api.Loaded(model=None, params=None, tokenizer=None, config=config, step=0, run=None)


def test_full_text_for_each_kind():
  assert api.full_text(_loaded('gpt'), 'The', ' end') == 'The end'
  assert api.full_text(_loaded('glm'), 'The [MASK] ends.', 'story') == 'The story ends.'
  assert api.full_text(_loaded('glm'), 'The', ' end') == 'The end'
  assert api.full_text(_loaded('t5'), 'Translate: hi', 'salut') == 'Translate: hi -> salut'


def test_load_refuses_what_is_not_a_workdir(gpt_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    zoo.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no checkpoint of step 99'):
    zoo.load(gpt_workdir, step=99)


def test_the_cli_prints_each_prompt_with_what_generate_returns(gpt_workdir, capsys):
  sample.main([f'--workdir={gpt_workdir}', '--devices=1', *[f'--{k}={v}' for k, v in SETTINGS.items()], '--seed=3',
               *[f'--prompt={p}' for p in PROMPTS]])
  printed = capsys.readouterr().out
  texts = zoo.generate(zoo.load(gpt_workdir, devices=1), PROMPTS, **SETTINGS, seed=3)
  assert sum(len(t) for t in texts) > 0  # temperature 3 over 20 tokens: some text, whatever the tiny model learnt
  assert printed == ''.join(f'{p}{t}\n' for p, t in zip(PROMPTS, texts))

"""The notebook API: zoo.load restores a checkpoint trained on 8 devices onto 1 device (or another mesh) with the
same eval loss; zoo.evaluate and zoo.generate use it; `python -m zoo.sample` samples from a workdir."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import zoo
from zoo.data import tokenizer as tk

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def test_load_on_one_device_gives_the_recorded_eval_loss(gpt_workdir):
  recorded = json.load(open(os.path.join(gpt_workdir, 'eval.json')))
  loaded = zoo.load(gpt_workdir, devices=1)
  assert loaded.step == 6 and loaded.family == 'gpt'
  assert {d for x in jax.tree.leaves(loaded.params) for d in x.devices()} == {jax.devices()[0]}
  np.testing.assert_allclose(zoo.evaluate(loaded)['loss'], recorded['loss'], rtol=1e-5)
  on_mesh = zoo.load(os.path.join(gpt_workdir, 'checkpoints', '6'), mesh={'tensor': 2})  # a checkpoint dir
  np.testing.assert_allclose(zoo.evaluate(on_mesh)['loss'], recorded['loss'], rtol=1e-5)
  texts = zoo.generate(loaded, ['The ', 'def f'], max_new=5)
  assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
  assert any(t for t in texts)


def test_ids_past_the_tokenizer_are_not_decoded(gpt_workdir):
  from zoo import api
  loaded = zoo.load(gpt_workdir, devices=1)
  n = loaded.tokenizer.vocab_size
  assert loaded.model.vocab_size > n  # rounded up to a multiple of 128
  ids = loaded.tokenizer.encode('The end')
  assert api._text(loaded.tokenizer, ids + [n, n + 5] + ids, stop=tk.EOS) == loaded.tokenizer.decode(ids + ids)


def test_load_refuses_what_is_not_a_workdir(gpt_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    zoo.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no checkpoint of step 99'):
    zoo.load(gpt_workdir, step=99)


def test_generate_cli(gpt_workdir):
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, '-m', 'zoo.sample', f'--workdir={gpt_workdir}', '--prompt=The ',
                        '--max_new=5', '--temperature=0.8', '--top_k=20'], capture_output=True, text=True, env=env,
                       cwd=str(ROOT), timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().startswith('The ')

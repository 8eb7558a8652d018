"""Every notebook in colab/ runs top to bottom on a CPU (tiny sizes, 8 simulated devices), and its outputs are
checked: the loss falls, a checkpoint restored onto 1 device gives the eval loss recorded at training time,
sampling gives text, and LoRA fine-tuning beats the majority class."""
import json
import pathlib

import nbformat
import pytest

nbclient = pytest.importorskip('nbclient')

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_notebook(name, tmp_path, **parameters):
  """Execute colab/<name>.ipynb with its parameter cell's values overridden; returns its RESULTS dict."""
  nb = nbformat.read(ROOT / 'colab' / f'{name}.ipynb', as_version=4)
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, f'{name}: one cell tagged "parameters"'
  cells[0].source += '\n# overridden by the test\n' + '\n'.join(f'{k} = {v!r}' for k, v in parameters.items())
  env_cwd = str(ROOT)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': env_cwd}})
  client.execute()
  nbformat.write(nb, str(tmp_path / f'{name}.ipynb'))  # executed copy, for a look when a check fails
  for cell in nb.cells:  # a print may reach the notebook in several stream pieces: read the cell's whole stream
    text = ''.join(out.get('text', '') for out in cell.get('outputs', []) if out.get('output_type') == 'stream')
    if 'RESULTS ' in text:
      return json.loads(text.split('RESULTS ', 1)[1].splitlines()[0])
  raise AssertionError(f'{name} printed no RESULTS line')


@pytest.fixture(autouse=True)
def _kernel_env(monkeypatch):
  # the kernel inherits conftest.py's environment (8 simulated CPU devices, tiny-model compile settings) and this
  monkeypatch.setenv('MPLBACKEND', 'Agg')


@pytest.mark.slow
def test_pretrain_then_restore_and_sample(tmp_path):
  workdir = str(tmp_path / 'gpt')
  pre = run_notebook('pretrain', tmp_path, STEPS=24, BATCH=16, SEQ_LEN=32, WORKDIR=workdir)
  assert pre['devices'] == 8 and pre['last_loss'] < pre['first_loss'] - 0.5, pre  # seen 1.2
  ev = run_notebook('evaluate_and_sample', tmp_path, WORKDIR=workdir, DEVICES=1, MAX_NEW=12)
  assert ev['devices'] == 1  # trained on 8 devices, restored onto 1
  assert ev['restored_loss'] == pytest.approx(ev['recorded_loss'], rel=1e-5)
  assert ev['recorded_loss'] == pytest.approx(pre['eval_loss'], rel=1e-6)
  # the notebook's greedy text is what zoo.generate gives for its prompts here (another process, 8 devices present)
  import zoo
  prompts = ['The module', 'def ']
  assert ev['greedy'] == zoo.generate(zoo.load(workdir, devices=1), prompts, max_new=12), ev
  assert len(ev['samples']) == 2 and all(isinstance(s, str) for s in ev['samples'])


@pytest.mark.slow
def test_finetune_lora(pretrained_bert, tmp_path):
  # from the suite's shared tiny BERT (pretrained once per session): the notebook's pretrain-if-missing cell is
  # train_and_evaluate on configs/bert.py, which the pretraining notebook and tests/test_train.py run
  out = run_notebook('finetune_lora', tmp_path, PRETRAINED=pretrained_bert, WORKDIR=str(tmp_path / 'lora'),
                     STEPS=120, DROPOUT=0.0)
  # the adapters make the model read the text: below what the label frequencies alone allow
  assert out['eval_loss'] < out['label_entropy'] - 0.01 and out['accuracy'] >= out['majority'], out
  assert out['merge_error'] < 1e-5
  assert out['lora_params'] == 2 * 2 * 8 * (64 + 64)  # layers x (query, value) x rank x (in + out)


@pytest.mark.slow
def test_finetune_lora_from_a_huggingface_bert(tmp_path):
  """The same notebook from a published checkpoint: PRETRAINED names a HuggingFace BERT directory (its vocab.txt,
  BERT's ids); nothing is pretrained first, and the adapters train on it."""
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  import torch
  from tests import test_pretrained
  hf_dir = tmp_path / 'hf_bert'
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(test_pretrained.BERT_VOCAB), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
  transformers.BertForPreTraining(config).eval().save_pretrained(str(hf_dir))
  (hf_dir / 'vocab.txt').write_text('\n'.join(test_pretrained.BERT_VOCAB) + '\n')
  out = run_notebook('finetune_lora', tmp_path, PRETRAINED=str(hf_dir), WORKDIR=str(tmp_path / 'lora'), STEPS=10,
                     DROPOUT=0.0)
  assert not (hf_dir / 'checkpoints').exists()  # nothing pretrained into the published model's directory
  assert out['merge_error'] < 1e-5 and out['lora_params'] == 2 * 2 * 8 * (64 + 64)
  assert json.loads((tmp_path / 'lora' / 'config.json').read_text())['data']['tokenizer'].endswith('init_model')

"""Writes the colab/ notebooks (edit here, then run: python colab/make_notebooks.py)."""
import os

import nbformat as nbf

INSTALL = '''# Install zoo. On Colab: clone the repository and install it (with the TPU extra when a TPU is attached).
# Elsewhere (a laptop, a TPU VM, the test suite) zoo is expected to be installed already: `pip install -e .`
import os, subprocess, sys
ZOO_GIT = 'https://github.com/zoo-nlp/zoo'  # the repository (or your fork)
if 'google.colab' in sys.modules and not os.path.isdir('zoo'):
    tpu = any(k in os.environ for k in ('COLAB_TPU_ADDR', 'TPU_NAME')) or os.path.exists('/dev/accel0')
    subprocess.check_call(['git', 'clone', '--depth=1', ZOO_GIT, 'zoo'])
    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', '-e', 'zoo' + ('[tpu]' if tpu else '')])
# the recipes (configs/) live in the repository, next to the package
ROOT = next(p for p in ('.', '..', 'zoo') if os.path.isdir(os.path.join(p, 'configs')))
sys.path.insert(0, os.path.abspath(ROOT))'''

DEVICES = '''import jax
import zoo
from zoo import notebook, parallel
info = notebook.describe_devices()
print(f"{info['count']} {info['platform'].upper()} device(s) ({info['kind']}), {info['processes']} process(es)")
mesh = parallel.make_mesh(data=-1, fsdp=1, tensor=1)
print('device mesh:', dict(mesh.shape))
print(mesh.devices)'''


def nb(cells):
  n = nbf.v4.new_notebook()
  n.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
  n.metadata['accelerator'] = 'TPU'
  out = []
  for kind, src, *tags in cells:
    c = nbf.v4.new_markdown_cell(src) if kind == 'md' else nbf.v4.new_code_cell(src)
    if tags:
      c.metadata['tags'] = tags
    out.append(c)
  n.cells = out
  return n


pretrain = nb([
    ('md', '# Pretraining a GPT or BERT with zoo\n\nRuns on a Colab TPU, a GPU or a CPU. The parameter cell picks '
           'the recipe and the size: `tiny` trains in a few minutes on a CPU; on a TPU try `small` with '
           '`DTYPE = "bfloat16"`. Checkpoints go to Google Drive when it is mounted (`drive.mount(...)`), so a '
           'preempted session resumes where it stopped: rerun the notebook.'),
    ('code', INSTALL),
    ('code', DEVICES),
    ('code', '''# Parameters
RECIPE = 'gpt'  # gpt, bert, t5, bart, glm, lstm, ... (configs/<RECIPE>.py)
SIZE = 'tiny'  # tiny (CPU), small, base, ...
STEPS = 300
BATCH = 16
SEQ_LEN = 128
DTYPE = 'float32'  # 'bfloat16' on TPU / GPU
WORKDIR = notebook.default_workdir(f'{RECIPE}_{SIZE}')''', 'parameters'),
    ('code', '''import importlib
config = importlib.import_module(f'configs.{RECIPE}').get_config(SIZE)
config.train.steps, config.train.batch_size, config.train.seq_len = STEPS, BATCH, SEQ_LEN
config.model.dtype = DTYPE
config.log.every = max(1, STEPS // 50)
config.train.eval_every = max(1, STEPS // 3)
print(config.model)'''),
    ('code', '''progress = notebook.LiveProgress()
metrics = zoo.train_and_evaluate(config, WORKDIR, callback=progress)
progress.close()
metrics'''),
    ('code', '''import zoo.plot
zoo.plot.plot([WORKDIR]);'''),
    ('code', '''import json
RESULTS = {'first_loss': progress.losses[0], 'last_loss': progress.losses[-1], 'eval_loss': metrics['loss'],
           'devices': info['count'], 'workdir': WORKDIR}
print('RESULTS', json.dumps(RESULTS))'''),
])

evaluate = nb([
    ('md', '# Restoring a checkpoint: evaluation and sampling\n\nRestores a pretraining run onto the devices '
           'here, whatever topology trained it (8 TPU cores, a GPU, 1 CPU device), checks that the evaluation '
           'loss is the one recorded at the end of training, and samples text. Without a checkpoint in '
           '`WORKDIR`, a tiny GPT is trained first.'),
    ('code', INSTALL),
    ('code', DEVICES),
    ('code', '''# Parameters
WORKDIR = notebook.default_workdir('gpt_tiny')  # a workdir train.py (or the pretraining notebook) wrote
DEVICES = 1  # restore onto this many devices (-1: all)
PROMPTS = ['The module', 'def ']
MAX_NEW = 40
TEMPERATURE = 0.8
TOP_P = 0.9''', 'parameters'),
    ('code', '''import importlib, os
if not os.path.isdir(os.path.join(WORKDIR, 'checkpoints')):
    print('no checkpoint yet: training a tiny GPT on every device first')
    config = importlib.import_module('configs.gpt').get_config('tiny')
    config.train.steps, config.log.every = 60, 10
    zoo.train_and_evaluate(config, WORKDIR)'''),
    ('code', '''import json
loaded = zoo.load(WORKDIR, devices=DEVICES)
placed = {d for x in jax.tree.leaves(loaded.params) for d in x.devices()}
print(f'{loaded.family}:{loaded.config.model.size}, step {loaded.step}, parameters on {len(placed)} device(s)')
recorded = json.load(open(os.path.join(WORKDIR, 'eval.json')))
restored = zoo.evaluate(loaded)
print(f"eval loss recorded at training time {recorded['loss']:.6f}, after restoring {restored['loss']:.6f}")'''),
    ('code', '''samples = zoo.generate(loaded, PROMPTS, max_new=MAX_NEW, temperature=TEMPERATURE, top_p=TOP_P)
for prompt, text in zip(PROMPTS, samples):
    print(repr(prompt + text))
greedy = zoo.generate(loaded, PROMPTS, max_new=MAX_NEW)  # temperature 0: greedy
print(greedy)'''),
    ('code', '''RESULTS = {'recorded_loss': recorded['loss'], 'restored_loss': restored['loss'], 'devices': len(placed),
           'samples': samples, 'greedy': greedy}
print('RESULTS', json.dumps(RESULTS))'''),
])

lora = nb([
    ('md', '# Fine-tuning a classifier with LoRA\n\nStarts from a pretrained BERT: a workdir (a tiny one is '
           'pretrained first if there is none), or a published checkpoint with its own vocabulary (a HuggingFace '
           'directory, or `PRETRAINED = "hf:bert-base-uncased"`), adds a classification head and trains only LoRA adapters on the '
           'attention projections and the head; the base weights stay frozen. The data is zoo\'s offline '
           '`demo:sentiment` set; point `TRAIN` / `VALIDATION` at your own `tsv:` / `csv:` / `jsonl:` files or '
           'a prepared `tfds:glue/sst2`.'),
    ('code', INSTALL),
    ('code', DEVICES),
    ('code', '''# Parameters
PRETRAINED = notebook.default_workdir('bert_tiny')  # a BERT workdir, a HuggingFace directory, or 'hf:<name>'
WORKDIR = notebook.default_workdir('sentiment_lora')
TRAIN, VALIDATION = 'demo:sentiment:train', 'demo:sentiment:validation'
PRETRAIN_STEPS = 100  # only if PRETRAINED has no checkpoint yet
STEPS = 300
RANK = 8
LEARNING_RATE = 1e-2  # LoRA takes a higher rate than full fine-tuning
DROPOUT = 0.1''', 'parameters'),
    ('code', '''import importlib, os
published = PRETRAINED.startswith('hf:') or os.path.isfile(os.path.join(PRETRAINED, 'config.json')) and not \\
    os.path.isdir(os.path.join(PRETRAINED, 'checkpoints'))  # a HuggingFace model: its own weights and vocabulary
if not published and not os.path.isdir(os.path.join(PRETRAINED, 'checkpoints')):
    print('no pretrained BERT yet: pretraining a tiny one first')
    config = importlib.import_module('configs.bert').get_config('tiny')
    config.train.steps, config.log.every = PRETRAIN_STEPS, 10
    zoo.train_and_evaluate(config, PRETRAINED)'''),
    ('code', '''config = importlib.import_module('configs.finetune').get_config('classification,lora')
config.init_from, config.task.init_from = PRETRAINED, ''
config.task.train, config.task.validation = TRAIN, VALIDATION
config.adapters.lora_rank = RANK
config.optimizer.learning_rate, config.model.dropout_rate = LEARNING_RATE, DROPOUT
config.train.steps, config.log.every, config.train.eval_every = STEPS, 5, 0
config.train.batch_size, config.train.seq_len = 16, 32
progress = notebook.LiveProgress()
metrics = zoo.train_and_evaluate(config, WORKDIR, callback=progress)
progress.close()
# a model that ignores the text can do no better than the entropy of the labels
import math
p = metrics['majority_accuracy']
label_entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
print(f"accuracy {metrics['accuracy']:.3f} (majority class {p:.3f}); eval loss {metrics['loss']:.4f} "
      f"(label entropy {label_entropy:.4f})")'''),
    ('code', '''# Only the adapters and the head trained; fold the adapters into the base weights for export.
import numpy as np
from zoo.layers import adapters
loaded = zoo.load(WORKDIR)
batch = loaded.run.objective.featurize(loaded.run.records['validation'][:8], loaded.tokenizer, 'validation')[0]
inputs = loaded.run.objective.inputs(batch)
adapted = loaded.model.apply({'params': loaded.params}, **inputs)['logits']
merged_params = adapters.merge_lora(loaded.params, loaded.model.adapters)
merged = loaded.model.clone(adapters=None).apply({'params': merged_params}, **inputs)['logits']
merge_error = float(np.abs(np.asarray(adapted) - np.asarray(merged)).max())
trainable = adapters.lora_param_count(loaded.model)
print(f'LoRA parameters: {trainable:,}; merged vs adapted logits differ by {merge_error:.2e}')'''),
    ('code', '''import json
RESULTS = {'accuracy': metrics['accuracy'], 'majority': metrics['majority_accuracy'],
           'eval_loss': metrics['loss'], 'label_entropy': label_entropy,
           'first_loss': progress.losses[0], 'last_loss': progress.losses[-1], 'merge_error': merge_error,
           'lora_params': trainable}
print('RESULTS', json.dumps(RESULTS))'''),
])

for name, n in (('pretrain', pretrain), ('evaluate_and_sample', evaluate), ('finetune_lora', lora)):
  nbf.write(n, os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.ipynb'))
print('ok')

"""Fine-tuning a pretrained zoo model on a task: classification, tagging, qa (BERT / ALBERT), sft (GPT, GLM,
the RNN LMs, T5, BART, the Transformer) or translation (sft on `source` / `target` columns: the Transformer,
T5, BART, ...). The model, its size and its tokenizer come from the pretraining workdir.

  python train.py --config=configs/bert.py:tiny --workdir=workdir/bert          # pretrain first
  python train.py --config=configs/finetune.py:classification --workdir=workdir/cls
  python train.py --config=configs/finetune.py:classification,lora --workdir=workdir/cls_lora
  python train.py --config=configs/finetune.py:tagging --config.task.init_from=workdir/bert --workdir=workdir/ner
  python train.py --config=configs/finetune.py:sft --config.task.init_from=workdir/gpt --workdir=workdir/sft
  python train.py --config=configs/transformer.py:tiny --workdir=workdir/transformer
  python train.py --config=configs/finetune.py:translation --workdir=workdir/translation

The argument is the task, optionally followed by ',lora' or ',prefix'. Data defaults to zoo's offline demo sets
(zoo.tasks.demo); point task.train / task.validation at your own (tsv:, csv:, jsonl:, tfds:glue/sst2) and
name the columns in task.fields (e.g. --config.task.fields.text_field=sentence).
"""
from zoo.config import base_config

DEFAULTS = {
    'classification': dict(init_from='workdir/bert', data='demo:sentiment',
                           fields=dict(text_field='sentence', text_pair_field='', label_field='label',
                                       pooling='cls')),
    'tagging': dict(init_from='workdir/bert', data='demo:names', fields=dict(tokens_field='tokens', tags_field='tags')),
    'qa': dict(init_from='workdir/bert', data='demo:qa',
               fields=dict(question_field='question', context_field='context', answers_field='answers',
                           max_answer_len=30, doc_stride=16)),  # 16 of the 64-token windows (HF: 128 of 384)
    'sft': dict(init_from='workdir/gpt', data='demo:sft', fields=dict(input_field='input', target_field='target')),
    # 600 steps: the toy words are spelled in pieces of the English tokenizer (300 steps: sequence accuracy 0.005)
    'translation': dict(init_from='workdir/transformer', data='demo:translation', steps=600,
                        fields=dict(input_field='source', target_field='target', label_smoothing=0.1)),
}


def get_config(arg: str = 'classification'):
  task, *options = (arg or 'classification').split(',')
  if task not in DEFAULTS:
    raise ValueError(f'configs/finetune.py:{arg}: the task is one of {sorted(DEFAULTS)} (then ,lora or ,prefix)')
  d = DEFAULTS[task]
  c = base_config()
  c.task.name = task
  c.task.init_from = d['init_from']  # the pretraining workdir: model, tokenizer and weights
  c.task.train = d['data'] + ':train'
  c.task.validation = d['data'] + ':validation'
  c.task.fields.update(d['fields'])
  c.model.dropout_rate = 0.1
  c.train.steps = d.get('steps', 300)
  c.train.batch_size = 32
  c.train.seq_len = 64
  c.train.eval_every = 100
  c.optimizer.learning_rate = -1.0  # -1: 2e-3 for a tiny pretrained model, 3e-5 for the real sizes
  c.optimizer.warmup_steps = 30
  c.optimizer.decay = 'linear'
  c.optimizer.end_lr_fraction = 0.0
  c.optimizer.weight_decay = 0.01
  c.checkpoint.every = 1000
  if 'lora' in options:
    c.adapters.lora_rank = 8
    c.adapters.lora_alpha = 16.0
    c.adapters.lora_targets = 'query,value'
  if 'prefix' in options:
    c.adapters.prefix_length = 8
  if options and task == 'classification':
    # a frozen backbone's [CLS] holds only what pretraining put there (MLM alone leaves it nearly constant):
    # with adapters, classify from the mean of the token states
    c.task.fields.pooling = 'mean'
  unknown = set(options) - {'lora', 'prefix'}
  if unknown:
    raise ValueError(f'configs/finetune.py:{arg}: unknown option(s) {sorted(unknown)}; use lora or prefix')
  return c

"""The fields every recipe shares, with their defaults, and the checks made before anything compiles.

A recipe (`configs/<name>.py`) starts from `base_config()` and sets the model, the objective and the sizes.
Every field can be overridden on the command line: `--config.train.steps=500 --config.mesh.fsdp=4`.
"""
from __future__ import annotations

import ml_collections

from zoo import parallel


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, data order, masks and dropout all derive from it
  # start from: a train.py workdir, a zoo model directory, a HuggingFace model directory or hf:<name> (zoo.pretrained)
  c.init_from = ''

  c.model = ml_collections.ConfigDict()
  c.model.family = 'gpt'  # a family of zoo.models: bert, roberta, albert, electra, gpt, t5, bart, transformer, glm, ...
  c.model.size = 'tiny'  # a size of that family (python -m zoo.models lists them)
  c.model.vocab_size = -1  # -1: the tokenizer's size rounded up to a multiple of 128
  c.model.dtype = 'float32'  # compute dtype: 'bfloat16' on TPU/GPU; parameters stay float32
  c.model.dropout_rate = 0.1

  c.objective = ml_collections.ConfigDict()
  c.objective.name = 'causal_lm'  # mlm, causal_lm or span_corruption (zoo.objectives)
  c.objective.label_smoothing = 0.0  # smooth every cross-entropy target by this (optax.smooth_labels; 0.1: Vaswani)

  c.task = ml_collections.ConfigDict()
  c.task.name = ''  # '' : pretraining (objective.*); or fine-tuning: classification, tagging, qa, sft, translation
  c.task.init_from = ''  # the same as init_from (older recipes name it here)
  c.task.train = ''  # examples: tsv:<path>, csv:<path>, jsonl:<path> or tfds:<name>[:<split>]
  c.task.validation = ''  # the same kinds; scored with the task's metric
  c.task.data_dir = ''  # TFDS data_dir for tfds: examples
  c.task.fields = ml_collections.ConfigDict()  # the task's columns and options (zoo.tasks), e.g. label_field
  c.task.pretrained_objective = ''  # filled in from task.init_from (decides T5's decoder start token)

  c.adapters = ml_collections.ConfigDict()
  c.adapters.lora_rank = 0  # > 0: LoRA on the projections below; the base weights freeze
  c.adapters.lora_alpha = 8.0  # LoRA updates are scaled by alpha / rank
  c.adapters.lora_dropout = 0.0  # dropout on the LoRA branch's input
  c.adapters.lora_targets = 'query,value'  # of query, key, value, out, mlp
  c.adapters.prefix_length = 0  # > 0: prefix tuning with this many keys/values per layer; the base freezes
  c.adapters.prefix_hidden = 0  # > 0: prefixes through an MLP of this width (reparameterisation)

  c.data = ml_collections.ConfigDict()
  c.data.source = 'default'  # default, text:<glob>, jsonl:<glob>:<field>, tfds:<name>[:<field>], prepared:<dir>, mix:...
  c.data.data_dir = ''  # TFDS data_dir ('' = TFDS's default)
  c.data.text_mode = 'line'  # text sources: a document per 'line' or per blank-line 'paragraph'
  c.data.tokenizer = 'train'  # 'train' (on data.source, kept in the workdir), a SentencePiece .model or HF tokenizer dir
  c.data.vocab_size = 8000  # pieces of a trained tokenizer
  c.data.tokenizer_sample_chars = 10_000_000  # a trained tokenizer learns from a uniform sample this large
  c.data.prepare = False  # True: tokenize data.source once into a cache of token shards (zoo.data.cache), read those
  c.data.prepared_dir = ''  # that cache ('': $ZOO_CACHE/prepared); a multi-process run needs one all processes see
  c.data.tokenizer_type = 'unigram'  # or 'bpe'
  c.data.num_sentinels = 100  # T5 sentinels a trained tokenizer reserves
  c.data.packing = 'concat'  # concat (no padding), first_fit or pad
  c.data.validation_fraction = 0.01  # held-out documents when the source has no validation split
  c.data.num_workers = 0  # grain worker processes (0: a prefetch thread)
  c.data.max_doc_chars = 100_000  # longer documents are cut into pieces
  c.data.word_segmenter = ''  # 'jieba': Chinese word boundaries for whole-word / span masking (pip: .[zh])

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # optimizer steps in all
  c.train.batch_size = 32  # global batch, in sequences (split over processes and devices)
  c.train.seq_len = 128  # tokens per sequence
  c.train.microbatches = 1  # gradient accumulation: the batch is run in this many pieces per step
  c.train.eval_every = 0  # evaluate every N steps (0: at the end only)
  c.train.eval_batches = 20  # batches of the validation split per evaluation (0: all of it)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'  # 'lamb' (ALBERT's), 'adafactor' (T5's), 'sgd' (the RNN papers'); b1, b2, eps: Adam's
  c.optimizer.learning_rate = 1e-3  # peak learning rate
  c.optimizer.warmup_steps = 100  # linear warm-up from 0
  c.optimizer.decay = 'cosine'  # cosine, linear or constant after warm-up; rsqrt: the Transformer's; rsqrt_hold: T5's
  c.optimizer.decay_steps = -1  # where the decay ends (-1: train.steps); fix it to split one run in parts
  c.optimizer.end_lr_fraction = 0.1  # final learning rate / peak
  c.optimizer.weight_decay = 0.01  # AdamW decay, not applied to biases and norm scales
  c.optimizer.b1 = 0.9  # Adam's first-moment decay
  c.optimizer.b2 = 0.98  # Adam's second-moment decay (0.95-0.999)
  c.optimizer.eps = 1e-8  # Adam's epsilon
  c.optimizer.clip_norm = 1.0  # clip gradients to this global norm (0: no clipping)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500  # save every N steps (and always at the end and on SIGTERM)
  c.checkpoint.keep = 3  # newest checkpoints kept
  c.checkpoint.async_save = True  # write in the background while training goes on

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel size (-1: whatever the other axes leave)
  c.mesh.fsdp = 1  # parameter/optimizer sharding (ZeRO-3 style)
  c.mesh.tensor = 1  # tensor (Megatron) parallelism
  c.mesh.devices = -1  # use the first N devices (-1: all); single-process runs only
  c.mesh.rules = parallel.LOGICAL_RULES  # logical axis name -> mesh axis
  c.parallelism = 'jit'  # 'jit' (sharded over the mesh) or 'pmap' (data-parallel, replicated)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''  # host:port of process 0 ('' : TPU pods detect themselves)
  c.distributed.num_processes = 0  # with coordinator_address
  c.distributed.process_id = -1  # with coordinator_address

  c.log = ml_collections.ConfigDict()
  c.log.every = 10  # progress line and metrics.jsonl row every N steps
  c.log.tensorboard = True  # event files in the workdir (no TensorFlow needed)
  c.log.peak_flops = 0.0  # per device, for MFU (0: looked up from the device kind)
  return c


def set_model(c: ml_collections.ConfigDict, family: str, size: str) -> None:
  """Name the model and copy its size's fields into config.model, so each can be overridden on the command
  line (--config.model.num_layers=4). Pick the size itself with the recipe argument (configs/gpt.py:small)."""
  from zoo import models  # models import nothing from here
  if family not in models.FAMILIES:
    raise ValueError(f'model.family={family!r}: choose one of {sorted(models.FAMILIES)}')
  sizes = models.FAMILIES[family].sizes
  if size not in sizes:
    raise ValueError(f'no size {size!r} for {family}: choose one of {list(sizes)}')
  c.model.family, c.model.size = family, size
  for key, value in sizes[size].items():
    if key != 'vocab_size':  # model.vocab_size follows the tokenizer unless set
      c.model[key] = value


def override(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Set dotted fields in place, as --config.<field>=<value> does on the command line; returns c.

  >>> c = base_config()
  >>> override(c, {'train.steps': 50, 'model.dropout_rate': 0.0}).train.steps
  50
  """
  for key, value in overrides.items():
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return c


# What each shared field may hold, checked before anything is read or compiled: (kind, low, high) with kind
# 'int' or 'float' and inclusive bounds (None: unbounded), or a tuple of the allowed strings.
_INT, _FLOAT = 'int', 'float'
RULES = {
    'seed': (_INT, 0, None),
    'model.dropout_rate': (_FLOAT, 0.0, 0.99), 'model.dtype': ('float32', 'bfloat16', 'float16'),
    'objective.label_smoothing': (_FLOAT, 0.0, 0.99),
    'data.vocab_size': (_INT, 1, None), 'data.num_sentinels': (_INT, 0, None),
    'data.tokenizer_sample_chars': (_INT, 1, None),
    'data.packing': ('concat', 'first_fit', 'pad'), 'data.text_mode': ('line', 'paragraph'),
    'data.tokenizer_type': ('unigram', 'bpe'), 'data.validation_fraction': (_FLOAT, 0.0, 0.5),
    'data.num_workers': (_INT, 0, None), 'data.max_doc_chars': (_INT, 1, None),
    'data.word_segmenter': ('', 'jieba'),
    'train.steps': (_INT, 1, None), 'train.batch_size': (_INT, 1, None), 'train.seq_len': (_INT, 1, None),
    'train.microbatches': (_INT, 1, None), 'train.eval_every': (_INT, 0, None),
    'train.eval_batches': (_INT, 0, None),
    'optimizer.learning_rate': (_FLOAT, 0.0, 10.0), 'optimizer.warmup_steps': (_INT, 0, None),
    'optimizer.name': ('adamw', 'lamb', 'adafactor', 'sgd'),
    'optimizer.decay': ('cosine', 'linear', 'constant', 'rsqrt', 'rsqrt_hold'), 'optimizer.end_lr_fraction': (_FLOAT, 0.0, 1.0),
    'optimizer.weight_decay': (_FLOAT, 0.0, 10.0), 'optimizer.b1': (_FLOAT, 0.0, 0.9999),
    'optimizer.b2': (_FLOAT, 0.0, 0.99999), 'optimizer.eps': (_FLOAT, 0.0, 1.0),
    'optimizer.clip_norm': (_FLOAT, 0.0, None),
    'checkpoint.every': (_INT, 1, None), 'checkpoint.keep': (_INT, 1, None),
    'mesh.fsdp': (_INT, 1, None), 'mesh.tensor': (_INT, 1, None), 'parallelism': ('jit', 'pmap'),
    'adapters.lora_rank': (_INT, 0, None), 'adapters.lora_alpha': (_FLOAT, 0.0, None),
    'adapters.lora_dropout': (_FLOAT, 0.0, 0.99), 'adapters.prefix_length': (_INT, 0, None),
    'adapters.prefix_hidden': (_INT, 0, None),
    'log.every': (_INT, 1, None), 'log.peak_flops': (_FLOAT, 0.0, None),
}


_MISSING = object()


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


def _check_field(field: str, value, rule) -> None:
  if isinstance(rule[0], str) and rule[0] in (_INT, _FLOAT):
    kind, low, high = rule
    types = (int,) if kind == _INT else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
      raise ValueError(f'{field}={value!r} must be {"an integer" if kind == _INT else "a number"}')
    if value != value or (low is not None and value < low) or (high is not None and value > high):
      where = (f'at least {low}' if high is None else f'between {low} and {high}') if low is not None else ''
      if low == 1 and high is None:
        where = 'positive'
      raise ValueError(f'{field}={value!r} must be {where}')
  elif value not in rule:
    raise ValueError(f'{field}={value!r}: use one of {", ".join(repr(r) for r in rule)}')


def check(config: ml_collections.ConfigDict, num_processes: int = 1) -> None:
  """Refuse, before anything compiles, a configuration that cannot run, naming the field and the fix.

  >>> c = base_config(); c.optimizer.b1 = 1.5
  >>> check(c)
  Traceback (most recent call last):
  ...
  ValueError: optimizer.b1=1.5 must be between 0.0 and 0.9999
  """
  for field, rule in RULES.items():
    value = _get(config, field)
    if value is not _MISSING:
      _check_field(field, value, rule)
  for field in ('mesh.data', 'mesh.devices'):
    value = _get(config, field)
    if value is not _MISSING and (isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1)):
      raise ValueError(f'{field}={value!r} must be -1 (fill the rest) or a positive integer')
  t = config.train
  if t.batch_size % (num_processes * t.microbatches):
    raise ValueError(f'train.batch_size={t.batch_size} does not split over {num_processes} process(es) x '
                     f'train.microbatches={t.microbatches}: make it a multiple of {num_processes * t.microbatches}')


def check_batch(config: ml_collections.ConfigDict, data_ways: int, where: str) -> None:
  """The batch (each micro-batch) must split evenly over the data-parallel devices."""
  t = config.train
  per_micro = t.batch_size // t.microbatches
  if per_micro % data_ways:
    raise ValueError(
        f'train.batch_size={t.batch_size} (per micro-batch {per_micro}) does not divide over the {data_ways} '
        f'data-parallel devices ({where}): make train.batch_size a multiple of {data_ways * t.microbatches}')

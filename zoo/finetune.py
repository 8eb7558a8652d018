"""Fine-tuning from a pretraining workdir: the model and tokenizer it was trained with, the task and its data,
the parameters restored onto the new run's devices, and which parameters train (all of them; or, with LoRA or
prefix tuning, only the adapters and the new head).

A fine-tuning recipe sets `task.name`, `task.init_from` (a workdir train.py pretrained, or one of its
checkpoints/<step> directories, trained on any topology), `task.train` / `task.validation` and the task's
columns (`task.fields`); see configs/finetune_classify.py.
"""
from __future__ import annotations

import logging

import jax
import ml_collections
from flax import traverse_util

from zoo import contract as contract_lib
from zoo import paths, pretrained, registry, tasks
from zoo.data import specials
from zoo.data import tokenizer as tk
from zoo.layers import adapters as adapters_lib

log = logging.getLogger('zoo')

HEADS = ('classifier', 'qa_outputs', 'tagger', 'pooler')  # a task's head (always trained; the pooler feeds it)
_KEEP = ('dtype', 'dropout_rate')  # model fields the fine-tuning config keeps; the rest come from the checkpoint


def prepare_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` whose model (and tokenizer) are those of `init_from` (zoo.pretrained) when it is set,
  for pretraining and fine-tuning alike. Idempotent; a config without init_from comes back unchanged but for a
  fine-tuning run's automatic learning rate."""
  if not pretrained.spec_of(config) and not config.task.name:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  if pretrained.spec_of(config):
    _inherit(config, workdir)
  if config.task.name and config.optimizer.learning_rate <= 0:  # auto: high for tiny CPU models, BERT's 3e-5 else
    adapters = config.adapters.lora_rank > 0 or config.adapters.prefix_length > 0  # these want more
    config.optimizer.learning_rate = (1e-2 if adapters else 2e-3) if config.model.size == 'tiny' else \
        (1e-3 if adapters else 3e-5)
  return config


def _inherit(config, workdir: str | None) -> None:
  """The source's model fields (but this config's dtype and dropout_rate) and tokenizer."""
  field = pretrained.field_name(config)
  source = pretrained.resolve(pretrained.spec_of(config), workdir, field)
  keep = {k: config.model[k] for k in _KEEP}
  if source.kind == 'zoo':  # imported from HuggingFace: its own tokenizer, nothing pretrained by zoo before
    config.model = ml_collections.ConfigDict(pretrained.model_config(source))
    config.model.update(keep)
    if config.data.tokenizer == 'train':
      spec = pretrained.tokenizer_spec(source)
      if spec is None:
        raise FileNotFoundError(f'{field}: {source.path} has no tokenizer files (hf_tokenizer/): set data.tokenizer '
                                f'to the tokenizer directory the model was trained with')
      config.data.tokenizer = spec
    config.task.pretrained_objective = ''
    return
  saved = source.config
  config.model = ml_collections.ConfigDict(saved.model.to_dict())
  config.model.update(keep)
  if config.data.tokenizer == 'train':
    if saved.data.tokenizer != 'train':
      config.data.tokenizer = saved.data.tokenizer
    else:
      home = paths.path(source.path)
      home = home if paths.is_file(paths.join(home, 'config.json')) else home.parent.parent
      config.data.tokenizer = paths.join(home, 'tokenizer.model')
      if not paths.is_file(config.data.tokenizer):
        raise FileNotFoundError(f'{field}: {config.data.tokenizer} is missing; the tokenizer the model was '
                                f'pretrained with is needed (or set data.tokenizer to it)')
  config.data.vocab_size = saved.data.vocab_size
  # a fine-tuned run passes on what its own model was pretrained with
  config.task.pretrained_objective = (saved.task.get('pretrained_objective', '') if saved.task.get('name', '')
                                      else saved.objective.name)


def make_adapters(config) -> adapters_lib.Adapters | None:
  a = config.adapters
  ad = adapters_lib.Adapters(lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                             lora_targets=tuple(t.strip() for t in a.lora_targets.split(',') if t.strip()),
                             prefix_length=a.prefix_length, prefix_hidden=a.prefix_hidden)
  return ad if ad.active else None


def check_task_family(config, family: str) -> None:
  """Refuse a task that does not fine-tune model.family (build asks before a tokenizer is trained)."""
  task = tasks.TASKS.get(config.task.name)
  if task is not None:
    registry.check_family(task, family, f'task.name={config.task.name!r}', 'fine-tunes')


def make_task(config, tokenizer: tk.Tokenizer, family: str) -> tuple[tasks.Task, dict]:
  """The task object (labels read from the training set) and its records {'train': [...], 'validation': [...]}."""
  t = config.task
  check_task_family(config, family)
  if not t.train:
    raise ValueError(f'task.name={t.name!r} needs task.train: tsv:<path>, csv:<path>, jsonl:<path> or '
                     f'tfds:<name>[:<split>]')
  fields = dict(t.fields.to_dict()) if t.fields else {}
  for key in ('labels', 'lora_targets'):
    if isinstance(fields.get(key), str):
      fields[key] = tuple(x.strip() for x in fields[key].split(',') if x.strip())
  if issubclass(tasks.TASKS.get(t.name, tasks.Task), tasks.Sft):  # sft, translation: the family's layout
    fields['contract'] = contract_lib.of(family, t.get('pretrained_objective', ''), specials.of(tokenizer))
  ids = specials.of(tokenizer)
  if ids.source != 'zoo' and not getattr(tasks.TASKS.get(t.name), 'any_tokenizer', False):
    raise ValueError(f'task.name={t.name!r} with the HuggingFace tokenizer {ids.source}: zoo fine-tunes '
                     f'{", ".join(sorted(n for n, c in tasks.TASKS.items() if c.any_tokenizer))} with a model\'s own '
                     f'tokenizer so far; {t.name} lays out its rows with zoo\'s special ids')
  task = tasks.make(t.name, vocab_size=tokenizer.vocab_size, num_special=ids.first_ordinary, specials=ids,
                    seq_len=config.train.seq_len, **fields)
  data_dir = t.data_dir or None
  records = {'train': tasks.read_records(t.train, field='task.train', data_dir=data_dir, default_split='train')}
  records['validation'] = (tasks.read_records(t.validation, field='task.validation', data_dir=data_dir,
                                              default_split='validation') if t.validation else [])
  if hasattr(task, 'set_labels'):
    task.set_labels(records['train'], t.train)
  for split in ('train', 'validation'):  # the columns are right: fail now, not after compiling
    if records[split]:
      task.featurize(records[split][:1], tokenizer, f'task.{split}={t[split]!r}')
  return task, records


def frozen_mask(abstract_params, adapters) -> object | None:
  """True for parameters that stay frozen: with adapters, everything but them and the task head; else None."""
  if adapters is None:
    return None
  return jax.tree_util.tree_map_with_path(
      lambda p, _: not (adapters_lib.is_adapter(p) or any(getattr(k, 'key', None) in HEADS for k in p)),
      abstract_params)


def load_pretrained(config, workdir: str, params, shardings=None, scan_layers: bool = False):
  """`params` with every parameter the source of `init_from` also holds (same path, same shape) replaced by
  the saved one, placed as `shardings` says (or as the current leaves are). The others (a new head, adapters)
  keep their initial values. Returns (params, report dict)."""
  field = pretrained.field_name(config)
  source = pretrained.resolve(pretrained.spec_of(config), workdir, field)
  saved, where, read = pretrained.open_params(source, scan_layers)
  flat = traverse_util.flatten_dict(params)
  flat_sh = traverse_util.flatten_dict(shardings) if shardings is not None else {k: v.sharding for k, v in flat.items()}
  wanted = {}
  for k, v in flat.items():
    if k in saved:
      if saved[k] != tuple(v.shape):
        raise ValueError(f"{field}: parameter {'/'.join(k)} is {saved[k]} in {where} but {tuple(v.shape)} "
                         f'in this model: the model fields must be those of the source')
      wanted[k] = jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_sh[k])
  if not wanted:
    raise ValueError(f'{field}: no parameter of this model is in {where}: was it trained with another model '
                     f'family or with scan_layers set otherwise?')
  restored = read(wanted)
  flat.update(restored)
  report = {'where': where, 'restored': len(restored), 'new': sorted('/'.join(k) for k in flat if k not in wanted),
            'unused': sorted('/'.join(k) for k in saved if k not in flat)}
  return traverse_util.unflatten_dict(flat), report

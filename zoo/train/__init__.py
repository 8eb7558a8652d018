"""The one trainer every recipe runs, from `train.py` or a notebook.

>>> from configs import gpt  # doctest: +SKIP
>>> config = gpt.get_config('tiny'); config.train.steps = 50  # doctest: +SKIP
>>> metrics = train_and_evaluate(config, '/tmp/zoo-gpt')  # doctest: +SKIP

One concern a module:
- `build`: config -> `Run` (tokenizer, model, objective or task, optimizer, placement, the state's shape and
  shardings); nothing compiles.
- `inputs`: where batches come from (`CorpusInputs` for pretraining, `TaskInputs` for fine-tuning).
- `state`: `TrainState`, its initialization (shape first, then sharded) and its restoration on any topology.
- `placement` / `pmap`: jit over a ('data', 'fsdp', 'tensor') mesh, or data-parallel pmap, behind one interface.
- `steps`: the pure train and eval steps (losses over the global counts, micro-batches, frozen parameters).
- `evaluate`: the validation split through the eval step.
- `metrics`: metrics.jsonl, TensorBoard, the progress line, FLOPs and MFU.
- `loop`: `train_and_evaluate`: preemption, resume checks, checkpoints, the loop.
"""
from zoo.train.build import Run, build, load_tokenizer, make_objective, maybe_initialize_distributed, read, source
from zoo.train.evaluate import evaluate
from zoo.train.loop import check_same_run, train_and_evaluate
from zoo.train.state import TrainState, init_state, restore_state
from zoo.train.steps import example_rng, make_eval_step, make_train_step

__all__ = ['Run', 'TrainState', 'build', 'check_same_run', 'evaluate', 'example_rng', 'init_state',
           'load_tokenizer', 'make_eval_step', 'make_objective', 'make_train_step', 'maybe_initialize_distributed',
           'read', 'restore_state', 'source', 'train_and_evaluate']

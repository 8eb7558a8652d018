"""Few-shot evaluation: zero-, one- and few-shot prompts built from a task's examples; multiple-choice tasks
scored by the total log-likelihood of each choice, generation tasks by exact match of the greedy answer.

  python -m zoo.fewshot --workdir=workdir/gpt --data=demo:sentiment:validation --shots=3 \\
      --template='Review: {sentence}\\nSentiment:' --target_field=label --choices=positive,negative

A prompt is `shots` demonstrations (drawn from `demos`, never the question itself), each the template filled
with an example and followed by its answer, then the question's filled template. A choice's score is
sum_t log p(choice_t | prompt, choice_<t) under the model, with the prompt and the choice laid out as in
fine-tuning (`zoo.contract`): one sequence for GPT and the RNN LMs; the prompt + [EOS] encoded and the choice
decoded for the encoder-decoders; the prompt + [MASK] as GLM's part A and the choice as its blank.

>>> build_prompt({'q': '2+2'}, [{'q': '1+1', 'a': '2'}], '{q} =', 'a')
'1+1 = 2\\n\\n2+2 ='
"""
from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import contract as contract_lib
from zoo.data import specials
from zoo.tasks.qa import normalize_answer


def build_prompt(example: dict, demos: Sequence[dict], template: str, target_field: str,
                 separator: str = '\n\n') -> str:
  """The demonstrations (template + ' ' + answer) and then the example's template, joined by `separator`."""
  parts = [template.format(**d) + ' ' + str(d[target_field]) for d in demos]
  return separator.join(parts + [template.format(**example)])


def pick_demos(records: Sequence[dict], shots: int, seed: int, exclude: int | None = None) -> list[dict]:
  """`shots` examples drawn without replacement (the same for a seed), never the one at index `exclude`."""
  if shots <= 0:
    return []
  pool = [i for i in range(len(records)) if i != exclude]
  if len(pool) < shots:
    raise ValueError(f'{shots} shots need {shots} demonstrations; there are {len(pool)}')
  idx = np.random.default_rng(seed).choice(pool, shots, replace=False)
  return [records[i] for i in idx]


def _bucket(n: int, multiple: int = 16) -> int:
  return multiple * -(-n // multiple)


@functools.partial(jax.jit, static_argnames=('model',))
def _logp(model, params, inputs, targets, weights):
  logp = jax.nn.log_softmax(model.apply({'params': params}, **inputs).astype(jnp.float32), -1)
  return (jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum(-1)


def _batch(rows: list[dict], keys: Sequence[str], length: int) -> dict[str, np.ndarray]:
  """Rows of `contract.pair` lists, zero-padded to `length` (a multiple of 16: few compiles)."""
  out = {}
  for k in keys:
    out[k] = np.zeros((len(rows), length), np.float32 if k == 'weights' else np.int32)
    for i, r in enumerate(rows):
      out[k][i, :len(r[k])] = r[k]
  return out


def choice_tokens(tokenizer, prompt: str, choice: str) -> tuple[list[int], list[int]]:
  """(prompt ids, choice ids) as the prompt and the choice, after a space, encode together: the tokens a model saw
  in training. Encoded apart, ' positive' would start with a lone '▁' that the joint text never has. Where the
  joint encoding changes the prompt's last tokens, the common prefix is the prompt.

  >>> class Words:  # a word per id, the space before it included (as SentencePiece's '▁word')
  ...   def encode(self, text):
  ...     return [len(w) for w in text.replace(' ', ' _').split(' ')]
  >>> choice_tokens(Words(), 'It was', 'good')
  ([2, 4], [5])
  """
  full = tokenizer.encode(prompt + ('' if choice.startswith(' ') else ' ') + choice)
  p = tokenizer.encode(prompt)
  n = 0
  while n < min(len(p), len(full) - 1) and p[n] == full[n]:
    n += 1
  return full[:n], full[n:]


def choice_loglik(model, params, tokenizer, family: str | contract_lib.Contract, prompt: str,
                  choices: Sequence[str]) -> np.ndarray:
  """Total log-likelihood of each choice after the prompt: [len(choices)] float. `family` is a family name or
  its `zoo.contract.Contract` (which says how the prompt and the choice are laid out, as in fine-tuning)."""
  c = contract_lib.of(family) if isinstance(family, str) else family
  pairs = [choice_tokens(tokenizer, prompt, ch) for ch in choices]
  cs = [x for _, x in pairs]
  length = _bucket(max(len(p) for p, _ in pairs) + 2 + max(len(x) for x in cs))
  rows = [contract_lib.pair(c, p, x, length, close=False) for p, x in pairs]  # the choice's tokens, no stop token
  if c.encoder_decoder:
    src = _batch(rows, ['tokens'], _bucket(max(len(p) for p, _ in pairs) + 1))['tokens']
    dec = _batch(rows, ['decoder_tokens', 'targets', 'weights'], _bucket(max(len(x) for x in cs)))
    inputs = {'tokens': src, 'decoder_tokens': dec['decoder_tokens']}
    return np.asarray(_logp(model, params, inputs, dec['targets'], dec['weights']))
  keys = ['tokens', 'targets', 'weights'] + (['positions', 'block_positions'] if c.blank_infilling else [])
  b = _batch(rows, keys, length)
  inputs = {k: b[k] for k in keys if k not in ('targets', 'weights')}
  inputs['segment_ids'] = (np.arange(length)[None] < np.array([len(r['tokens']) for r in rows])[:, None]).astype(
      np.int32)
  if c.blank_infilling:
    inputs['context_length'] = np.array([r['context_length'] for r in rows], np.int32)
  return np.asarray(_logp(model, params, inputs, b['targets'], b['weights']))


def evaluate_choices(model, params, tokenizer, family: str | contract_lib.Contract, records: Sequence[dict], *,
                     template: str, target_field: str, choices: Sequence[str] | str, shots: int = 0, demos: Sequence[dict] = (),
                     seed: int = 0) -> dict:
  """Multiple choice: accuracy of picking the choice with the highest total log-likelihood. `choices` is the
  list of answers every example shares, or the name of a field holding each example's own list. `family` is a
  family name or its `zoo.contract.Contract`."""
  correct, picks = 0, []
  for i, r in enumerate(records):
    options = list(r[choices]) if isinstance(choices, str) else list(choices)
    pool = demos or records
    prompt = build_prompt(r, pick_demos(pool, shots, seed + i, None if demos else i), template, target_field)
    scores = choice_loglik(model, params, tokenizer, family, prompt, [str(o) for o in options])
    pick = int(np.argmax(scores))
    picks.append(pick)
    correct += str(options[pick]) == str(r[target_field])
  return {'accuracy': correct / max(len(records), 1), 'examples': len(records), 'shots': shots, 'picks': picks}


def evaluate_generation(loaded, records: Sequence[dict], *, template: str, target_field: str, shots: int = 0,
                        demos: Sequence[dict] = (), seed: int = 0, max_new: int = 20) -> dict:
  """Generation: exact match (SQuAD normalisation, first line) of the greedy answer with the target."""
  from zoo import api
  prompts = [build_prompt(r, pick_demos(demos or records, shots, seed + i, None if demos else i), template,
                          target_field) for i, r in enumerate(records)]
  answers = api.generate(loaded, prompts, max_new=max_new)
  answers = [a.strip().split('\n')[0] for a in answers]
  em = [normalize_answer(a) == normalize_answer(str(r[target_field])) for a, r in zip(answers, records)]
  return {'exact_match': float(np.mean(em)) if em else 0.0, 'examples': len(records), 'shots': shots,
          'answers': answers}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(prog='python -m zoo.fewshot', description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data', required=True, help='examples: tsv:, csv:, jsonl:, tfds:, demo:<set>[:<split>]')
  parser.add_argument('--demos', default='', help='where demonstrations come from (default: the other examples)')
  parser.add_argument('--template', required=True, help="e.g. 'Q: {question}\\nA:' (fields in braces)")
  parser.add_argument('--target_field', required=True)
  parser.add_argument('--choices', default='', help='comma-separated answers, or @field for per-example lists; '
                      'empty: a generation task scored by exact match')
  parser.add_argument('--shots', type=int, default=0)
  parser.add_argument('--limit', type=int, default=200, help='examples scored (0: all)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--max_new', type=int, default=20)
  args = parser.parse_args(argv)
  from zoo import api
  from zoo.tasks import read_records
  loaded = api.load(args.workdir)
  records = read_records(args.data, field='--data', default_split='validation')
  records = records[:args.limit] if args.limit > 0 else records
  demos = read_records(args.demos, field='--demos') if args.demos else []
  template = args.template.encode().decode('unicode_escape')
  if args.choices:
    choices = args.choices[1:] if args.choices.startswith('@') else [c for c in args.choices.split(',')]
    ids = specials.of(loaded.tokenizer)  # the run's tokenizer's start and stop ids (a HuggingFace model's own)
    out = evaluate_choices(loaded.model, loaded.params, loaded.tokenizer, contract_lib.for_config(loaded.config, ids),
                           records, template=template, target_field=args.target_field, choices=choices,
                           shots=args.shots, demos=demos, seed=args.seed)
  else:
    out = evaluate_generation(loaded, records, template=template, target_field=args.target_field, shots=args.shots,
                              demos=demos, seed=args.seed, max_new=args.max_new)
  summary: dict[str, Any] = {k: v for k, v in out.items() if k not in ('picks', 'answers')}
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  main()

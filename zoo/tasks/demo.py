"""Small offline datasets for trying the fine-tuning recipes (and for the tests): made from templates, so a
model must read the words to do better than the majority class, and no download is needed.

  python -m zoo.tasks.demo --out=data/demo     # writes sentiment_{train,validation}.tsv, names_*.jsonl, qa_*.jsonl,
                                               # sft_*.jsonl, translation_*.jsonl

- sentiment (classification, TSV: sentence, label): a review whose verdict word is positive or negative,
  among neutral filler; 60% of the examples are positive, so the majority baseline is 0.6.
- names (tagging, JSONL: tokens, tags): sentences with person names (B-PER I-PER) and places (B-LOC).
- qa (JSONL: question, context, answers): "Where does X live?" over a context that names several people.
- sft (JSONL: input, target): "reverse: a b c" -> "c b a" over small words.
- translation (JSONL: source, target): English sentences "the big dog sees a cat" into a toy language, word for
  word but with each adjective after its noun ("lo kan gran vidas na gato"): the reordering needs attention.

>>> import tempfile
>>> paths = write_demo(tempfile.mkdtemp(), n_train=20, n_validation=10)
>>> sorted(paths)
['names', 'qa', 'sentiment', 'sft', 'translation']
>>> translation(np.random.default_rng(0), 1)
[{'source': 'a blue child sees the cat', 'target': 'na nino azur vidas lo gato'}]
"""
from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np

POSITIVE = ['great', 'wonderful', 'excellent', 'delightful', 'superb', 'charming', 'brilliant', 'moving']
NEGATIVE = ['awful', 'boring', 'terrible', 'dreadful', 'clumsy', 'tedious', 'bland', 'painful']
FILLER = ['the', 'film', 'story', 'was', 'really', 'quite', 'and', 'acting', 'music', 'plot', 'ending', 'we',
          'thought', 'it', 'felt', 'at', 'times', 'overall', 'very', 'this', 'movie', 'characters', 'scenes']
FIRST = ['Anna', 'Peter', 'Maria', 'John', 'Lena', 'Omar', 'Yuki', 'Carlos', 'Ines', 'David']
LAST = ['Smith', 'Garcia', 'Muller', 'Tanaka', 'Rossi', 'Novak', 'Khan', 'Silva', 'Berg', 'Olsen']
PLACES = ['Paris', 'Lagos', 'Tokyo', 'Lima', 'Oslo', 'Cairo', 'Dublin', 'Quito', 'Seoul', 'Riga']
WORDS = ['visited', 'met', 'called', 'saw', 'from', 'in', 'near', 'with', 'today', 'yesterday', 'and', 'then']
SMALL = ['red', 'blue', 'cat', 'dog', 'sun', 'tree', 'box', 'cup', 'hat', 'map', 'pen', 'key']
# demo:translation's toy language: one word for each English word
DETERMINERS = {'the': 'lo', 'a': 'na'}
ADJECTIVES = {'red': 'roso', 'blue': 'azur', 'big': 'gran', 'small': 'peti', 'tall': 'alta', 'happy': 'feli'}
NOUNS = {'cat': 'gato', 'dog': 'kan', 'bird': 'avi', 'child': 'nino', 'farmer': 'agro', 'teacher': 'meso'}
VERBS = {'sees': 'vidas', 'likes': 'amas', 'follows': 'sekas', 'helps': 'juvas', 'finds': 'trovas'}


def sentiment(rng, n):
  rows = []
  for _ in range(n):
    label = 'positive' if rng.random() < 0.6 else 'negative'
    words = list(rng.choice(FILLER, rng.integers(4, 9)))
    words.insert(rng.integers(0, len(words) + 1), rng.choice(POSITIVE if label == 'positive' else NEGATIVE))
    rows.append({'sentence': ' '.join(words), 'label': label})
  return rows


def names(rng, n):
  rows = []
  for _ in range(n):
    tokens, tags = [], []
    for _ in range(rng.integers(3, 7)):
      r = rng.random()
      if r < 0.25:
        tokens += [rng.choice(FIRST), rng.choice(LAST)]
        tags += ['B-PER', 'I-PER']
      elif r < 0.4:
        tokens.append(rng.choice(PLACES))
        tags.append('B-LOC')
      else:
        tokens.append(rng.choice(WORDS))
        tags.append('O')
    rows.append({'tokens': tokens, 'tags': tags})
  return rows


def qa(rng, n):
  rows = []
  for _ in range(n):
    people = rng.choice(FIRST, 3, replace=False)
    places = rng.choice(PLACES, 3, replace=False)
    context = ' '.join(f'{p} lives in {c}.' for p, c in zip(people, places))
    k = rng.integers(3)
    answer = str(places[k])
    rows.append({'question': f'Where does {people[k]} live?', 'context': context,
                 'answers': {'text': [answer], 'answer_start': [context.index(f'{people[k]} lives in') +
                                                                len(f'{people[k]} lives in ')]}})
  return rows


def sft(rng, n):
  rows = []
  for _ in range(n):
    words = list(rng.choice(SMALL, rng.integers(2, 5)))
    rows.append({'input': 'reverse: ' + ' '.join(words), 'target': ' '.join(words[::-1])})
  return rows


def translation(rng, n):
  rows = []
  for _ in range(n):
    source, target = [], []
    for phrase in range(2):  # subject verb object; each noun phrase: determiner [adjective] noun
      det, noun = str(rng.choice(list(DETERMINERS))), str(rng.choice(list(NOUNS)))
      adj = [str(rng.choice(list(ADJECTIVES)))] if rng.random() < 0.5 else []
      source += [det, *adj, noun]
      target += [DETERMINERS[det], NOUNS[noun], *(ADJECTIVES[a] for a in adj)]
      if phrase == 0:
        verb = str(rng.choice(list(VERBS)))
        source.append(verb)
        target.append(VERBS[verb])
    rows.append({'source': ' '.join(source), 'target': ' '.join(target)})
  return rows


# name -> (maker, file kind): what write_demo writes and `demo:<name>` (zoo.tasks.records) reads
SETS = {'sentiment': (sentiment, 'tsv'), 'names': (names, 'jsonl'), 'qa': (qa, 'jsonl'), 'sft': (sft, 'jsonl'),
        'translation': (translation, 'jsonl')}


def write_demo(out: str, n_train: int = 800, n_validation: int = 200, seed: int = 0) -> dict[str, dict[str, str]]:
  """Write the demo sets (SETS) under `out`; returns {set: {'train': spec, 'validation': spec}} (task specs)."""
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(seed)
  paths = {}
  for name, (make, kind) in SETS.items():
    paths[name] = {}
    for split, n in (('train', n_train), ('validation', n_validation)):
      path = os.path.join(out, f'{name}_{split}.{kind}')
      rows = make(rng, n)
      with open(path + '.tmp', 'w', encoding='utf-8', newline='') as f:
        if kind == 'tsv':
          w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter='\t', quoting=csv.QUOTE_NONE)
          w.writeheader()
          w.writerows(rows)
        else:
          for r in rows:
            f.write(json.dumps(r) + '\n')
      os.replace(path + '.tmp', path)
      paths[name][split] = f'{kind}:{path}'
  return paths


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='data/demo')
  parser.add_argument('--n_train', type=int, default=800)
  parser.add_argument('--n_validation', type=int, default=200)
  args = parser.parse_args(argv)
  for name, specs in write_demo(args.out, args.n_train, args.n_validation).items():
    print(f'{name}: --config.task.train={specs["train"]} --config.task.validation={specs["validation"]}')


if __name__ == '__main__':
  main()

"""Few-shot evaluation: prompts from a task's examples, multiple choice by total log-likelihood (against a model
whose likelihoods are known), generation by exact match."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import fewshot


class Bigram(nn.Module):
  """Next-token logits depend on the current token only: log p(b | a) = log_softmax(W[a])[b]."""
  vocab: int

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, deterministic=True):
    return self.param('w', nn.initializers.normal(2.0), (self.vocab, self.vocab))[tokens]


class CharTokenizer:
  """One id per character (offset past the special ids); ' ' is id 9."""

  def encode(self, text):
    return [9 + ord(c) - ord(' ') for c in text]


def _expected(w, ids):
  logp = np.asarray(jax.nn.log_softmax(w, -1))
  return sum(logp[a, b] for a, b in zip(ids[:-1], ids[1:]))


def test_prompts_are_built_from_other_examples():
  records = [{'q': f'q{i}', 'a': f'a{i}'} for i in range(5)]
  assert fewshot.build_prompt(records[0], [], 'Q: {q} A:', 'a') == 'Q: q0 A:'  # zero-shot
  one = fewshot.pick_demos(records, 1, seed=3, exclude=2)
  assert fewshot.build_prompt(records[2], one, 'Q: {q} A:', 'a') == f"Q: {one[0]['q']} A: {one[0]['a']}\n\nQ: q2 A:"
  for seed in range(20):  # never the question itself; deterministic per seed
    demos = fewshot.pick_demos(records, 3, seed, exclude=1)
    assert records[1] not in demos and len({d['q'] for d in demos}) == 3
    assert demos == fewshot.pick_demos(records, 3, seed, exclude=1)
  with pytest.raises(ValueError, match='shots'):
    fewshot.pick_demos(records, 5, 0, exclude=0)


def test_choice_scores_are_total_log_likelihoods():
  model = Bigram(vocab=128)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  w = params['w']
  tok = CharTokenizer()
  prompt, choices = 'ab', ['cd', 'x', 'efgh']
  got = fewshot.choice_loglik(model, params, tok, 'gpt', prompt, choices)
  p = tok.encode(prompt)
  want = [_expected(w, p[-1:] + tok.encode(' ' + c)) for c in choices]  # p(choice | prompt): after prompt's end
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  records = [{'text': prompt, 'label': choices[int(np.argmax(want))]}]
  out = fewshot.evaluate_choices(model, params, tok, 'gpt', records, template='{text}', target_field='label',
                                 choices=choices)
  assert out['picks'] == [int(np.argmax(want))] and out['accuracy'] == 1.0


def test_the_pick_is_the_highest_total_not_per_token_likelihood():
  model = Bigram(vocab=128)
  tok = CharTokenizer()
  choices = ['abcd', 'ba', 'c']
  disagree = 0
  for seed in range(30):
    params = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))['params']
    scores = fewshot.choice_loglik(model, params, tok, 'gpt', 'zz', choices)
    per_token = scores / np.array([len(c) + 1 for c in choices])
    out = fewshot.evaluate_choices(model, params, tok, 'gpt', [{'t': 'zz', 'y': 'c'}], template='{t}',
                                   target_field='y', choices=choices)
    assert out['picks'] == [int(np.argmax(scores))]
    assert out['accuracy'] == float(choices[int(np.argmax(scores))] == 'c')
    disagree += int(np.argmax(per_token) != np.argmax(scores))
  assert disagree > 0  # some draws where the per-token average would have picked another choice


def test_generation_is_scored_by_exact_match(gpt_workdir):
  """The greedy answer of a trained GPT, set as the target for half the examples: exact match 0.5."""
  from zoo import api
  loaded = api.load(gpt_workdir, devices=1)
  records = [{'q': f'item {i}', 'a': 'placeholder'} for i in range(4)]
  prompts = [fewshot.build_prompt(r, [], '{q} =', 'a') for r in records]
  greedy = [a.strip().split('\n')[0] for a in api.generate(loaded, prompts, max_new=6)]
  for r, g in zip(records[:2], greedy[:2]):
    r['a'] = g
  for r in records[2:]:
    r['a'] = 'certainly not this'
  out = fewshot.evaluate_generation(loaded, records, template='{q} =', target_field='a', max_new=6)
  assert out['answers'] == greedy
  assert out['exact_match'] == 0.5


def test_choices_are_scored_as_the_prompt_and_choice_encode_together():
  """With zoo's SentencePiece tokenizer, ' positive' encoded alone starts with a lone '▁' that the prompt and the
  choice encoded together never have: the choice's tokens are those of the joint text after the prompt."""
  from zoo.data import tokenizer as tk
  texts = [f'Review: the film was {w}. Sentiment: {s}' for w, s in
           [('great', 'positive'), ('awful', 'negative'), ('fine', 'positive'), ('dull', 'negative')]] * 30
  tok = tk.train_tokenizer(texts, vocab_size=300, num_sentinels=0)
  prompt, choices = 'Review: the film was great. Sentiment:', ['positive', 'negative']
  for choice in choices:
    full = tok.encode(f'{prompt} {choice}')
    p, x = fewshot.choice_tokens(tok, prompt, choice)
    assert p + x == full and p == tok.encode(prompt)
    apart = tok.encode(' ' + choice)  # what scoring the choice apart used: one '▁' more, a space never trained on
    assert [tok.piece(i) for i in apart] == ['▁'] + [tok.piece(i) for i in x]
  model = Bigram(vocab=tok.vocab_size)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  got = fewshot.choice_loglik(model, params, tok, 'gpt', prompt, choices)
  want = [_expected(params['w'], tok.encode(prompt)[-1:] + fewshot.choice_tokens(tok, prompt, c)[1]) for c in choices]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

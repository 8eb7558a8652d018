"""Objectives: MLM statistics within binomial bounds, never special tokens or padding; causal LM targets;
span corruption reconstructs its input at the promised rates."""
import numpy as np
import pytest

from zoo import objectives
from zoo.data import tokenizer as tk

V, SPECIAL = 1000, 19  # ids below SPECIAL are special tokens and sentinels (10 of them)


def random_batch(rng, b=32, t=128):
  """Packed rows: documents of random lengths, each closed by [EOS], some rows padded at the end."""
  tokens = rng.integers(SPECIAL, V, (b, t)).astype(np.int32)
  seg = np.zeros((b, t), np.int32)
  for row in range(b):
    pos, s = 0, 1
    end = t - (rng.integers(0, 40) if row % 3 == 0 else 0)
    while pos < end:
      n = min(int(rng.integers(5, 60)), end - pos)
      seg[row, pos:pos + n] = s
      tokens[row, pos + n - 1] = tk.EOS
      pos, s = pos + n, s + 1
    tokens[row, end:] = 0
  tokens[:, 0] = tk.CLS
  positions = np.zeros_like(seg)
  return {'tokens': tokens, 'segment_ids': seg, 'positions': positions}


def within(count, n, p, sigmas=5.0):
  """count ~ Binomial(n, p): within `sigmas` standard deviations of n p."""
  return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


def test_mlm_statistics_and_what_is_never_masked():
  obj = objectives.make('mlm', vocab_size=V, num_special=SPECIAL)
  rng = np.random.default_rng(0)
  maskable = chosen = masked = randomized = kept = 0
  for step in range(40):
    batch = random_batch(rng)
    ex = obj.example(batch, np.random.default_rng(step))
    tokens, seg = batch['tokens'], batch['segment_ids']
    ok = (seg > 0) & (tokens >= SPECIAL)
    maskable += ok.sum()
    for row in range(tokens.shape[0]):
      w = ex['mlm_weights'][row] > 0
      pos = ex['mlm_positions'][row][w]
      assert ok[row, pos].all()  # never a special token, never padding
      assert len(set(pos)) == len(pos)
      np.testing.assert_array_equal(ex['mlm_labels'][row][w], tokens[row, pos])
      new = ex['tokens'][row, pos]
      masked += (new == tk.MASK).sum()
      kept += (new == tokens[row, pos]).sum()
      randomized += ((new != tk.MASK) & (new != tokens[row, pos])).sum()
      assert (new[new != tk.MASK] >= SPECIAL).all()
      untouched = np.ones(tokens.shape[1], bool)
      untouched[pos] = False
      np.testing.assert_array_equal(ex['tokens'][row, untouched], tokens[row, untouched])
    chosen += (ex['mlm_weights'] > 0).sum()
  assert within(chosen, maskable, 0.15), chosen / maskable
  assert within(masked, chosen, 0.8), masked / chosen
  # a random replacement can draw the original token (1 in V - SPECIAL): count it with the kept ones
  p_random = 0.1 * (1 - 1 / (V - SPECIAL))
  assert within(randomized, chosen, p_random), randomized / chosen
  assert within(kept, chosen, 1 - 0.8 - p_random), kept / chosen


def test_mlm_masks_are_fresh_each_draw_and_repeat_with_the_seed():
  obj = objectives.make('mlm', vocab_size=V, num_special=SPECIAL)
  batch = random_batch(np.random.default_rng(1))
  a = obj.example(batch, np.random.default_rng([0, 5]))
  b = obj.example(batch, np.random.default_rng([0, 5]))
  c = obj.example(batch, np.random.default_rng([0, 6]))
  assert np.array_equal(a['mlm_positions'], b['mlm_positions'])
  assert not np.array_equal(a['mlm_positions'], c['mlm_positions'])


def test_causal_lm_targets_stay_inside_documents():
  obj = objectives.make('causal_lm', vocab_size=V, num_special=SPECIAL)
  batch = random_batch(np.random.default_rng(2))
  ex = obj.example(batch, None)
  tokens, seg = batch['tokens'], batch['segment_ids']
  for row in range(tokens.shape[0]):
    for t in range(tokens.shape[1]):
      predicts = t + 1 < tokens.shape[1] and seg[row, t] > 0 and seg[row, t + 1] == seg[row, t]
      assert ex['weights'][row, t] == predicts
      if predicts:
        assert ex['targets'][row, t] == tokens[row, t + 1]


def test_span_corruption_reconstructs_and_matches_its_rates():
  n_sentinels = 100  # enough for every span of a 256-token row
  obj = objectives.make('span_corruption', vocab_size=V + 100, num_special=tk.FIRST_SENTINEL + n_sentinels,
                        num_sentinels=n_sentinels)
  rng = np.random.default_rng(3)
  noise = total = spans = 0
  for step in range(20):
    batch = random_batch(rng, b=16, t=256)
    batch['tokens'] = np.where(batch['tokens'] >= SPECIAL, batch['tokens'] + 100, batch['tokens'])
    ex = obj.example(batch, np.random.default_rng(step))
    for row in range(16):
      real = batch['tokens'][row][batch['segment_ids'][row] > 0]
      inp = ex['tokens'][row][ex['tokens'][row] > 0]
      tgt = list(ex['targets'][row][ex['targets'][row] > 0])
      assert tgt[-1] == tk.EOS
      np.testing.assert_array_equal(ex['decoder_tokens'][row][1:len(tgt)], tgt[:-1])  # shifted right
      assert ex['decoder_tokens'][row][0] == 0
      # fill each sentinel of the input with the tokens that follow it in the target
      fills, current = {}, None
      for tok in tgt[:-1]:
        if tk.FIRST_SENTINEL <= tok < tk.FIRST_SENTINEL + n_sentinels:
          current = tok
          fills[current] = []
        else:
          fills[current].append(tok)
      rebuilt = [x for tok in inp for x in (fills[tok] if tok in fills else [tok])]
      np.testing.assert_array_equal(rebuilt, real)
      noise += sum(len(v) for v in fills.values())
      total += len(real)
      spans += len(fills)
  assert abs(noise / total - 0.15) < 0.01
  assert abs(noise / spans - 3.0) < 0.3
  # with few sentinels, spans get longer instead of running out of sentinels
  few = objectives.make('span_corruption', vocab_size=V, num_special=SPECIAL, num_sentinels=10)
  ex = few.example(random_batch(rng, b=4, t=256), np.random.default_rng(0))
  assert ex['tokens'].max() < V and ((ex['targets'] >= tk.FIRST_SENTINEL) & (ex['targets'] < SPECIAL)).sum(1).max() <= 10


def test_unknown_objective_and_fields():
  with pytest.raises(ValueError, match="objective.name='mlmm' is not an objective"):
    objectives.make('mlmm', vocab_size=V, num_special=SPECIAL)
  with pytest.raises(ValueError, match=r"objective mlm has no field\(s\) \['noise_density'\]"):
    objectives.make('mlm', vocab_size=V, num_special=SPECIAL, noise_density=0.1)

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


def word_batch(rng, b=16, t=128, word_starts=None):
  """Rows whose pieces form words: ids 100.. start a word, ids 20..99 continue one."""
  tokens = np.where(rng.random((b, t)) < 0.6, rng.integers(100, V, (b, t)), rng.integers(20, 100, (b, t)))
  tokens = tokens.astype(np.int32)
  tokens[:, 0] = tk.CLS
  tokens[:, -1] = tk.EOS
  seg = np.ones((b, t), np.int32)
  seg[:2, -20:] = 0
  tokens[:2, -20:] = 0
  return {'tokens': tokens, 'segment_ids': seg, 'positions': np.zeros_like(seg)}


WORD_STARTS = np.arange(V) >= 100


def test_whole_word_masking_never_masks_part_of_a_word():
  obj = objectives.make('mlm', vocab_size=V, num_special=SPECIAL, masking='whole_word', word_starts=WORD_STARTS)
  rng = np.random.default_rng(4)
  chosen_total = maskable_total = 0
  for step in range(20):
    batch = word_batch(rng)
    ex = obj.example(batch, np.random.default_rng(step))
    for row in range(16):
      tokens, seg = batch['tokens'][row], batch['segment_ids'][row]
      ok = (seg > 0) & (tokens >= SPECIAL)
      chosen = set(ex['mlm_positions'][row][ex['mlm_weights'][row] > 0])
      for word in obj.words(tokens, ok):
        inside = [int(i) in chosen for i in word]
        assert all(inside) or not any(inside), word  # all of a word, or none of it
      assert all(ok[i] for i in chosen)
      # every chosen position belongs to a whole word: a continuation piece comes with its word start
      for i in chosen:
        if not WORD_STARTS[tokens[i]]:
          assert i - 1 in chosen or not ok[i - 1]
      chosen_total += len(chosen)
      maskable_total += ok.sum()
  assert abs(chosen_total / maskable_total - 0.15) < 0.01


def truncated_geometric(p, m):
  """SpanBERT's span-length law: Geometric(p) given <= m (resampled, not clipped): pmf, mean and sd."""
  k = np.arange(1, m + 1)
  pmf = p * (1 - p) ** (k - 1) / (1 - (1 - p) ** m)
  mean = (k * pmf).sum()
  return pmf, mean, np.sqrt((k ** 2 * pmf).sum() - mean ** 2)


def test_span_masking_lengths_follow_the_truncated_geometric():
  obj = objectives.make('mlm', vocab_size=V, num_special=SPECIAL, masking='span', word_starts=WORD_STARTS)
  pmf, mean, sd = truncated_geometric(0.2, 10)
  assert abs(mean - 3.79) < 0.01  # the paper's 3.8; clipping at 10 would give (1 - 0.8 ** 10) / 0.2 = 4.46
  rng = np.random.default_rng(5)
  lengths = []
  for step in range(300):
    batch = word_batch(rng, b=1, t=512)
    tokens = batch['tokens'][0]
    ok = tokens >= SPECIAL
    before = len(lengths)
    chosen, group = obj._choose_spans(tokens, ok, int(0.15 * ok.sum()), np.random.default_rng(step),
                                      spans=lengths)
    lo, hi = obj.units(tokens, ok)
    words = []
    for g in range(group.max() + 1):
      span = chosen[group == g]
      assert (np.diff(span) == 1).all() and ok[span].all()  # contiguous text, never a special token
      assert span[0] in lo and span[-1] + 1 in hi  # whole words ...
      words.append(np.searchsorted(lo, span[-1], 'right') - np.searchsorted(lo, span[0]))
    assert sorted(words) == sorted(lengths[before:])  # ... as many as each drawn length (in position order)
  n = len(lengths)
  assert n > 2000 and min(lengths) >= 1 and max(lengths) == 10
  assert abs(np.mean(lengths) - mean) <= 5 * sd / np.sqrt(n), (np.mean(lengths), mean)
  counts = np.bincount(lengths, minlength=11)[1:]
  for k in range(10):  # each length's frequency: 3.0% are 10 words long, not clipping's 13.4%
    assert within(counts[k], n, pmf[k]), (k + 1, counts[k] / n, pmf[k])
  # and through `example`: whole words only, about 15% of the tokens
  batch = word_batch(rng)
  ex = obj.example(batch, np.random.default_rng(0))
  assert abs(ex['mlm_weights'].sum() / ((batch['segment_ids'] > 0) & (batch['tokens'] >= SPECIAL)).sum()
             - 0.15) < 0.02


def test_span_masking_replaces_whole_spans_80_10_10():
  big = 100_000  # a random replacement draws the original token 1 time in 10^5: counted as kept
  obj = objectives.make('mlm', vocab_size=big, num_special=SPECIAL, masking='span',
                        word_starts=np.arange(big) >= 100)
  rng = np.random.default_rng(11)
  kinds = np.zeros(3, int)  # spans all [MASK], all random, all kept
  for step in range(150):
    batch = word_batch(rng, b=1, t=512)
    batch['tokens'] = np.where(batch['tokens'] >= 100, batch['tokens'] * 97, batch['tokens'])
    tokens, ok = batch['tokens'][0], batch['tokens'][0] >= SPECIAL
    ex = obj.example(batch, np.random.default_rng(step))
    # a one-row batch: example draws the row's spans first, from the same generator
    chosen, group = obj.choose(tokens, ok, np.random.default_rng(step))
    w = ex['mlm_weights'][0] > 0
    np.testing.assert_array_equal(ex['mlm_positions'][0][w], chosen)
    new = ex['tokens'][0]
    for g in range(group.max() + 1):
      span = chosen[group == g]
      kind = np.where(new[span] == tk.MASK, 0, np.where(new[span] == tokens[span], 2, 1))
      assert (kind == kind[0]).all(), (new[span], tokens[span])  # every span is one kind
      kinds[kind[0]] += 1
  n = kinds.sum()
  assert n > 1000
  assert within(kinds[0], n, 0.8) and within(kinds[1], n, 0.1) and within(kinds[2], n, 0.1), kinds / n


@pytest.mark.parametrize('masking', ['whole_word', 'token'])
def test_ngram_masking_lengths_are_proportional_to_one_over_n(masking):
  obj = objectives.make('mlm', vocab_size=V, num_special=SPECIAL, masking=masking, ngram_max=3,
                        word_starts=WORD_STARTS)
  rng = np.random.default_rng(12)
  lengths = []
  for step in range(150):
    tokens = word_batch(rng, b=1, t=512)['tokens'][0]
    ok = tokens >= SPECIAL
    before = len(lengths)
    chosen, _ = obj._choose_spans(tokens, ok, int(0.15 * ok.sum()), np.random.default_rng(step), spans=lengths)
    if masking == 'token':
      assert len(chosen) == sum(lengths[before:])  # n-grams of n tokens
  n = len(lengths)
  p = np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3)  # 0.545, 0.273, 0.182
  counts = np.bincount(lengths, minlength=4)[1:]
  assert n > 2000 and counts.sum() == n
  for k in range(3):
    assert within(counts[k], n, p[k]), (k + 1, counts / n, p)
  # through `example`: about 15% of the tokens, whole words with whole_word, the replacement per token
  batch = word_batch(rng)
  ex = obj.example(batch, np.random.default_rng(0))
  maskable = (batch['segment_ids'] > 0) & (batch['tokens'] >= SPECIAL)
  assert abs(ex['mlm_weights'].sum() / maskable.sum() - 0.15) < 0.02
  if masking == 'whole_word':
    for row in range(batch['tokens'].shape[0]):
      chosen = set(ex['mlm_positions'][row][ex['mlm_weights'][row] > 0])
      for word in obj.words(batch['tokens'][row], maskable[row]):
        assert len(chosen & set(word)) in (0, len(word))


def test_albert_recipe_masks_whole_word_ngrams():
  from configs import albert
  c = albert.get_config('tiny').objective
  assert (c.name, c.masking, c.ngram_max) == ('sop', 'whole_word', 3)


def test_static_masking_repeats_per_example():
  static = objectives.make('mlm', vocab_size=V, num_special=SPECIAL, dynamic=False)
  batch = random_batch(np.random.default_rng(6))
  a = static.example(batch, np.random.default_rng(1))
  b = static.example(batch, np.random.default_rng(2))
  np.testing.assert_array_equal(a['tokens'], b['tokens'])
  # the same row in another batch (another position) gets the same mask
  moved = {k: v[::-1].copy() for k, v in batch.items()}
  c = static.example(moved, np.random.default_rng(3))
  np.testing.assert_array_equal(c['tokens'][::-1], a['tokens'])


def doc_batch(rng, b=8, t=128):
  """Packed rows of documents whose tokens name their document and sentence: 1000 + 100 d + 10 s + k."""
  tokens = np.zeros((b, t), np.int32)
  seg = np.zeros((b, t), np.int32)
  sent = np.zeros((b, t), np.int32)
  doc = 0
  for row in range(b):
    pos, s = 0, 1
    while pos < t - 4:
      n_sent = int(rng.integers(1, 6))
      for k in range(1, n_sent + 1):
        n = min(int(rng.integers(2, 8)), t - pos)
        tokens[row, pos:pos + n] = 1000 + 100 * doc + 10 * k + np.arange(n)
        seg[row, pos:pos + n] = s
        sent[row, pos:pos + n] = k
        pos += n
        if pos >= t:
          break
      doc, s = doc + 1, s + 1
  return {'tokens': tokens, 'segment_ids': seg, 'sentence_ids': sent, 'positions': np.zeros_like(seg)}


@pytest.mark.parametrize('task', ['nsp', 'sop'])
def test_sentence_pairs(task):
  obj = objectives.make(task, vocab_size=100_000, num_special=SPECIAL, mask_rate=0.0)
  rng = np.random.default_rng(7)
  positives = total = 0
  for step in range(30):
    ex = obj.example(doc_batch(rng), np.random.default_rng(step))
    for row in range(ex['tokens'].shape[0]):
      tokens, types = ex['tokens'][row], ex['token_types'][row]
      seps = np.flatnonzero(tokens == tk.SEP)
      assert tokens[0] == tk.CLS and len(seps) == 2 and seps[1] == (tokens > 0).sum() - 1
      a, b = tokens[1:seps[0]], tokens[seps[0] + 1:seps[1]]
      assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:seps[1] + 1] == 1).all()
      assert len(a) and len(b)
      doc = lambda x: set((x - 1000) // 100)  # noqa: E731
      order = lambda x: (x - 1000) % 100  # noqa: E731 (10 * sentence + k: increases along a document)
      label = ex['pair_labels'][row]
      if label == 1:  # B follows A in the same document
        assert doc(a) == doc(b) and len(doc(a)) == 1 and order(b).min() > order(a).max()
      elif task == 'nsp':  # B from another document
        assert len(doc(a)) == 1 and not doc(a) & doc(b)
      else:  # SOP: the same document, swapped
        assert doc(a) == doc(b) and order(a).min() > order(b).max()
      positives += label
      total += 1
  assert within(positives, total, 0.5)
  assert ex['pair_weights'].sum() == ex['tokens'].shape[0]


def concat_batch(rng, first_doc=0, b=8, t=128, n_docs=4):
  """concat packing: n_docs long documents (tokens 1000 + 100 d + 10 s + k) in one stream cut every t tokens, so
  a document continues in the next row under a new segment id; document_ids as the pipeline's."""
  toks, sents, ids = [], [], []
  for d in range(first_doc, first_doc + n_docs):
    for k in range(1, 8):
      n = int(rng.integers(2, 9))
      toks += list(1000 + 100 * d + 10 * k + np.arange(n))
      sents += [k] * n
      ids += [d + 1] * n
  toks, sents, ids = (np.resize(np.asarray(x, np.int32), b * t).reshape(b, t) for x in (toks, sents, ids))
  seg = np.ones((b, t), np.int32) + np.concatenate([np.zeros((b, 1), np.int32), np.cumsum(np.diff(ids) != 0, 1)], 1)
  return {'tokens': toks, 'segment_ids': seg, 'sentence_ids': sents, 'document_ids': ids,
          'positions': np.zeros_like(seg)}


def test_nsp_negatives_come_from_another_document_under_concat_packing():
  obj = objectives.make('nsp', vocab_size=100_000, num_special=SPECIAL, mask_rate=0.0)
  rng = np.random.default_rng(13)
  negatives = 0
  for step in range(30):
    batch = concat_batch(rng, b=4, t=64, n_docs=2)  # np.resize repeats the 2 documents: they span rows
    assert len(set(batch['document_ids'][:, 0])) < 4  # rows continue each other's documents
    ex = obj.example(batch, np.random.default_rng(step))
    for row in range(4):
      tokens = ex['tokens'][row]
      seps = np.flatnonzero(tokens == tk.SEP)
      a, b = tokens[1:seps[0]], tokens[seps[0] + 1:seps[1]]
      if ex['pair_labels'][row] == 0:
        assert not set((a - 1000) // 100) & set((b - 1000) // 100)  # never its own document, in any row
        negatives += 1
  assert negatives > 20
  # a batch of one document (in every row): the negative comes from an earlier batch; with none, the pair
  # teaches nothing (weight 0), never a forced positive
  fresh = objectives.make('nsp', vocab_size=100_000, num_special=SPECIAL, mask_rate=0.0, positive_rate=0.0)
  one = concat_batch(rng, first_doc=7, b=2, t=32, n_docs=1)
  alone = fresh.example(one, np.random.default_rng(0))
  assert (alone['pair_weights'] == 0).all() and (alone['pair_labels'] == 0).all()
  fresh.example(concat_batch(rng, b=2, t=32, n_docs=2), np.random.default_rng(1))  # documents 0 and 1
  nine = concat_batch(rng, first_doc=9, b=2, t=32, n_docs=1)
  for _ in range(3 * fresh.earlier):  # a long document fills many batches: it takes one place in the buffer
    fresh.example(nine, np.random.default_rng(3))
  ex = fresh.example(nine, np.random.default_rng(2))
  assert (ex['pair_labels'] == 0).all() and (ex['pair_weights'] == 1).all()
  for row in range(2):
    tokens = ex['tokens'][row]
    seps = np.flatnonzero(tokens == tk.SEP)
    assert set((tokens[1:seps[0]] - 1000) // 100) == {9}
    assert set((tokens[seps[0] + 1:seps[1]] - 1000) // 100) <= {0, 1}  # from the documents seen before it


def test_denoising_with_no_noise_reconstructs_exactly():
  obj = objectives.make('denoising', vocab_size=100_000, num_special=SPECIAL, infill_rate=0.0,
                        permute_rate=0.0)
  batch = doc_batch(np.random.default_rng(8))
  batch['tokens'] = np.where(np.roll(batch['segment_ids'], -1, 1) != batch['segment_ids'],
                             np.where(batch['segment_ids'] > 0, tk.EOS, 0), batch['tokens'])  # docs end in [EOS]
  ex = obj.example(batch, np.random.default_rng(0))
  np.testing.assert_array_equal(ex['tokens'], ex['targets'])
  np.testing.assert_array_equal(ex['targets'], np.where(batch['segment_ids'] > 0, batch['tokens'], 0))
  np.testing.assert_array_equal(ex['decoder_tokens'][:, 1:], ex['targets'][:, :-1])
  assert (ex['decoder_tokens'][:, 0] == tk.BOS).all()


def test_denoising_rates():
  rng = np.random.default_rng(9)
  x = np.arange(100, 100 + 2000, dtype=np.int32)
  deleting = objectives.make('denoising', vocab_size=V, num_special=SPECIAL, delete_rate=0.2, infill_rate=0.0,
                             permute_rate=0.0)
  kept = sum(len(deleting.noise([x], rng)) for _ in range(10))
  assert within(20000 - kept, 20000, 0.2)
  masking = objectives.make('denoising', vocab_size=V, num_special=SPECIAL, mask_rate=0.1, infill_rate=0.0,
                            permute_rate=0.0)
  out = np.concatenate([masking.noise([x], rng) for _ in range(10)])
  assert len(out) == 20000 and within((out == tk.MASK).sum(), 20000, 0.1)
  infilling = objectives.make('denoising', vocab_size=V, num_special=SPECIAL, infill_rate=0.3, permute_rate=0.0)
  spans = []
  for _ in range(10):
    before = len(spans)
    y = infilling.infill(x, rng, spans)
    kept = y[y != tk.MASK]
    assert (np.diff(kept) > 0).all() and set(kept) <= set(x)  # order kept, nothing invented
    assert (y == tk.MASK).sum() == len(spans) - before  # one [MASK] per span
    removed = 2000 - len(kept)
    assert abs(removed / 2000 - 0.3) < 0.01
  assert abs(np.mean(spans) - 3.0) < 0.25  # Poisson(3) span lengths, zero-length insertions included
  permuting = objectives.make('denoising', vocab_size=V, num_special=SPECIAL, infill_rate=0.0, permute_rate=1.0)
  sentences = [np.arange(10 * k, 10 * k + 5, dtype=np.int32) + 100 for k in range(6)]
  y = permuting.noise(sentences, rng)
  assert sorted(y) == sorted(np.concatenate(sentences)) and not np.array_equal(y, np.concatenate(sentences))
  assert {tuple(y[i:i + 5]) for i in range(0, 30, 5)} == {tuple(s) for s in sentences}  # whole sentences moved
  rotating = objectives.make('denoising', vocab_size=V, num_special=SPECIAL, infill_rate=0.0, permute_rate=0.0,
                             rotate_rate=1.0)
  y = rotating.noise([x[:50]], rng)
  start = int(np.flatnonzero(y == x[0])[0])
  np.testing.assert_array_equal(np.roll(y, -start), x[:50])


def test_glm_blank_infilling():
  obj = objectives.make('blank_infilling', vocab_size=V, num_special=SPECIAL)
  rng = np.random.default_rng(10)
  t = 256
  masked = total = 0
  lengths = []
  for step in range(20):
    batch = random_batch(rng, b=8, t=obj.input_length(t))  # rows as the pipeline packs them, padded to t
    batch = {k: np.pad(v, ((0, 0), (0, t - v.shape[1]))) for k, v in batch.items()}
    batch['tokens'] = np.where(batch['segment_ids'] > 0, np.maximum(batch['tokens'], SPECIAL), 0)
    ex = obj.example(batch, np.random.default_rng(step))
    for row in range(8):
      ctx = ex['context_length'][row]
      toks, pos, block, doc = (ex[k][row] for k in ('tokens', 'positions', 'block_positions', 'segment_ids'))
      tgt, w = ex['targets'][row], ex['weights'][row]
      a, n = toks[:ctx], int(ctx + w.sum())
      assert (block[:ctx] == 0).all() and (w[:ctx] == 0).all()
      assert (doc[:n] > 0).all() and (doc[n:] == 0).all()
      assert (np.diff(doc[:ctx]) >= 0).all() and (np.diff(doc[ctx:n]) >= 0).all()  # documents in order, A then B
      for d in np.unique(doc[:ctx]):  # each document's part A counts its positions from 0
        assert (pos[:ctx][doc[:ctx] == d] == np.arange((doc[:ctx] == d).sum())).all()
      # part B: spans opened by [sop], each token predicting the next, closed by [eop]
      fills = {}
      i = ctx
      while i < n:
        assert toks[i] == tk.SOP and block[i] == 1
        j = i
        while j + 1 < n and toks[j + 1] != tk.SOP:
          j += 1
        span = toks[i + 1:j + 1]
        np.testing.assert_array_equal(tgt[i:j + 1], list(span) + [tk.EOP])
        assert (pos[i:j + 1] == pos[i]).all() and (doc[i:j + 1] == doc[i]).all()
        assert a[doc[:ctx] == doc[i]][pos[i]] == tk.MASK  # the [MASK] of its own document
        assert (block[i:j + 1] == np.arange(1, j - i + 2)).all()
        fills[doc[i], pos[i]] = list(span)
        lengths.append(len(span))
        i = j + 1
      seg = batch['segment_ids'][row]
      for d, s in enumerate(np.unique(seg[seg > 0]), 1):  # every document rebuilt whole: nothing dropped
        a_d = a[doc[:ctx] == d]
        rebuilt = [x for k, tok in enumerate(a_d) for x in (fills[d, k] if tok == tk.MASK else [tok])]
        np.testing.assert_array_equal(rebuilt, batch['tokens'][row][seg == s])
        total += len(rebuilt)
      masked += sum(len(v) for v in fills.values())
  assert abs(masked / total - 0.15) < 0.01
  # span lengths: Poisson(3) given >= 1, in documents long enough that the 15% budget rarely trims them (the short
  # documents above have budgets of 1 to 9 tokens, so their spans are mostly trimmed)
  lengths = []
  for step in range(10):
    n = obj.input_length(t)
    batch = {'tokens': np.pad(rng.integers(SPECIAL, V, (8, n)), ((0, 0), (0, t - n))).astype(np.int32),
             'segment_ids': np.pad(np.ones((8, n), np.int32), ((0, 0), (0, t - n)))}
    ex = obj.example(batch, np.random.default_rng(100 + step))
    for row in range(8):  # a span of k tokens: k + 1 targets, the last [eop]
      lengths += list(np.diff([ex['context_length'][row] - 1, *np.flatnonzero(ex['targets'][row] == tk.EOP)]) - 1)
  assert abs(np.mean(lengths) - 3 / (1 - np.exp(-3))) < 0.3  # Poisson(3) given >= 1

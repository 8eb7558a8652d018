"""Text to text with a loaded model (`zoo.load`): `generate` (re-exported as `zoo.generate`), `generate_ids` (an
HF tokenizer's ids) and `full_text`. The decoding under them, on token ids, is `zoo.decoding`; the command line,
`python -m zoo.sample`.

Settings left as None come from the model's generation config, then from zoo's defaults (`DEFAULTS`): a zoo model
directory imported from HuggingFace keeps the HF directory's generation_config.json (`settings_from_hf` reads
max_new_tokens / max_length, do_sample, temperature, top_k, top_p, repetition_penalty and num_beams as transformers
does), and `Loaded.generation` holds the result.

Prompts are padded to length buckets (`zoo.decoding.bucket`), so a stream of prompts of varied lengths compiles
the decoding step a bounded number of times: at most 3 for prompts up to 64 tokens, one per power of two above,
for a given batch size, max_new and sampling settings.

>>> settings_from_hf({'do_sample': True, 'temperature': 0.7, 'top_p': 0.9, 'max_new_tokens': 40})
{'max_new': 40, 'temperature': 0.7, 'top_k': 50, 'top_p': 0.9}
>>> settings_from_hf({'repetition_penalty': 1.3, 'max_length': 30})
{'max_length': 30, 'temperature': 0.0, 'repetition_penalty': 1.3}
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import contract
from zoo import decoding as gen
from zoo import models
from zoo.data import hf_tokenizer as hft
from zoo.data import tokenizer as tk

DEFAULTS = dict(max_new=50, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, num_beams=1, alpha=0.6)


def settings_from_hf(config: dict) -> dict:
  """zoo's generation settings from a HuggingFace generation_config.json, as transformers reads it: greedy unless
  do_sample (then its temperature, top_k (HF's default 50) and top_p), max_new_tokens (else max_length: the whole
  sequence, a decoder's prompt included), repetition_penalty and num_beams. Keys it does not set are left out."""
  out: dict[str, Any] = {}
  if config.get('max_new_tokens') is not None:
    out['max_new'] = int(config['max_new_tokens'])
  elif config.get('max_length') is not None:
    out['max_length'] = int(config['max_length'])
  if config.get('do_sample'):
    out['temperature'] = float(config.get('temperature', 1.0) or 1.0)
    out['top_k'] = int(config.get('top_k', 50) or 0)
    out['top_p'] = float(config.get('top_p', 1.0) or 1.0)
  else:
    out['temperature'] = 0.0
  if config.get('repetition_penalty') not in (None, 1.0):
    out['repetition_penalty'] = float(config['repetition_penalty'])
  if config.get('num_beams') not in (None, 1):
    out['num_beams'] = int(config['num_beams'])
  return out


def resolve(loaded, given: dict) -> dict:
  """The settings of one call: those given (not None), else the model's generation config's, else DEFAULTS."""
  out = {**DEFAULTS, **(getattr(loaded, 'generation', None) or {})}
  out.update({k: v for k, v in given.items() if v is not None})
  if given.get('max_new') is not None:
    out.pop('max_length', None)
  return out


def generate(loaded, prompts: str | Sequence[str], *, max_new: int | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
             num_beams: int | None = None, alpha: float | None = None, seed: int = 0) -> list[str]:
  """Continue each prompt (GPT, the RNN LMs), answer it (T5, BART, the Transformer, the RNN encoder-decoder: beam
  search with num_beams > 1) or fill its blank (GLM: the text's '[MASK]', or one appended at the end).
  temperature 0 is greedy; ids past the tokenizer (the embedding's padding rows) are never drawn;
  repetition_penalty > 1 discourages tokens already in the sequence (CTRL's, as transformers). Settings left None
  come from the model's generation config, then `DEFAULTS` (50 new tokens, greedy).

  Returns the new text of each prompt, without the prompt. A continuation (or a blank) is decoded together with
  the text before it, so it keeps its leading space: `prompt + text` is the decoded prompt and continuation
  (exactly, whenever the prompt's tokens decode back to the prompt), and `full_text` (what `python -m zoo.sample`
  prints) is `prompt + text`. An answer is decoded on its own.

  >>> generate(load('workdir/gpt'), ['def ', 'The '], max_new=10, temperature=0.7, top_k=40)  # doctest: +SKIP
  ['__init__(self', 'value of the']
  """
  s = resolve(loaded, dict(max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                           repetition_penalty=repetition_penalty, num_beams=num_beams, alpha=alpha))
  tok = loaded.tokenizer
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if isinstance(tok, hft.HFTokenizer):
    rows = generate_ids(loaded, prompts, seed=seed, **{k: s[k] for k in DEFAULTS if k in s},
                        **({'max_length': s['max_length']} if 'max_length' in s else {}))
    if models.is_encoder_decoder(loaded.family):
      return [tok.decode(row, skip_special_tokens=True) for row in rows]
    return [continuation(tok.decode, p, tok.encode(p, add_special_tokens=True), row) for p, row in zip(prompts, rows)]
  if tok is None:
    raise ValueError(f'this {loaded.family} model has no tokenizer (its zoo model directory has no '
                     f'hf_tokenizer/ that zoo can read): tokenize yourself and use zoo.decoding.sample_lm / '
                     f'sample_seq2seq on the ids')
  check_family(loaded.family, s['num_beams'])
  c = contract.for_config(loaded.config)  # what the model was trained on: start, stop, source [EOS], GLM's layout
  if c.encoder_decoder:
    rows = _seq2seq(loaded, [contract.source(tok.encode(p)) for p in prompts], s, c.start_id, c.stop_id,
                    tok.vocab_size, seed)
    return [new_text(tok, row, c.stop_id) for row in rows]
  if c.blank_infilling:
    contexts = [glm_context(tok, p) for p in prompts]
    rows = _glm(loaded, contexts, s, c.stop_id, tok.vocab_size, seed)
    return [new_text(tok, row, c.stop_id, p.partition('[MASK]')[0], ids[:at])
            for p, row, (ids, at) in zip(prompts, rows, contexts)]
  encoded = [tok.encode(p) for p in prompts]
  rows = _lm(loaded, encoded, s, c.stop_id, tok.vocab_size, seed)
  return [new_text(tok, row, c.stop_id, p, x) for p, row, x in zip(prompts, rows, encoded)]


def generate_ids(loaded, prompts: str | Sequence[str], *, max_new: int | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float | None = None, num_beams: int | None = None, alpha: float | None = None,
                 max_length: int | None = None, seed: int = 0) -> list[list[int]]:
  """`generate` with a HuggingFace tokenizer, before decoding: the new token ids of each prompt, up to (not
  including) the tokenizer's eos, never an id past the tokenizer. Prompts are encoded as `hf_tokenizer(prompt)`
  does (special tokens added: T5's </s>, appended if the tokenizer does not add it); T5's decoder starts at
  decoder_start_id (pad). max_length (HF's; used when max_new is not set): the whole sequence, a decoder's prompt
  included, an encoder-decoder's start token included."""
  s = resolve(loaded, dict(max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                           repetition_penalty=repetition_penalty, num_beams=num_beams, alpha=alpha,
                           max_length=max_length))
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  tok, model, family = loaded.tokenizer, loaded.model, loaded.family
  check_family(family, s['num_beams'])
  eos = tok.eos_id if tok.eos_id is not None else -1  # -1: never stop early
  encoded = [tok.encode(p, add_special_tokens=True) for p in prompts]
  if models.is_encoder_decoder(family):
    if tok.eos_id is not None:
      encoded = [x if x and x[-1] == tok.eos_id else x + [tok.eos_id] for x in encoded]
    if 'max_length' in s:
      s['max_new'] = max(s.pop('max_length') - 1, 1)
    start = tok.decoder_start_id if tok.decoder_start_id is not None else (tok.pad_id or 0)
    rows = _seq2seq(loaded, encoded, s, start, eos, tok.vocab_size, seed, pad_id=getattr(model, 'pad_id', 0))
    return [_cut(row, eos) for row in rows]
  limits: list[int] = []
  if 'max_length' in s:  # HF's max_length counts the prompt: each row gets what is left of it
    total = s.pop('max_length')
    limits = [max(total - len(x), 0) for x in encoded]
    s['max_new'] = max(max(limits, default=1), 1)
  rows = _lm(loaded, encoded, s, eos, tok.vocab_size, seed)
  return [_cut(row, eos)[:limits[i]] if limits else _cut(row, eos) for i, row in enumerate(rows)]


def _cut(row, eos: int) -> list[int]:
  row = [int(t) for t in row]
  return row[:row.index(eos)] if eos in row else row


def _sampling(s: dict) -> dict:
  return dict(temperature=s['temperature'], top_k=s['top_k'], top_p=s['top_p'],
              repetition_penalty=float(s['repetition_penalty']))


def _lm(loaded, encoded, s, stop: int, vocab: int, seed: int) -> list[np.ndarray]:
  """Decoder prompts (ids) continued by s['max_new'] tokens, grouped by length bucket."""
  if any(len(x) == 0 for x in encoded):
    raise ValueError('an empty prompt: give at least one character')
  rng, out = jax.random.key(seed), [None] * len(encoded)
  for rows, tokens, lengths, prefill in gen.lm_batches(encoded, s['max_new'], getattr(loaded.model, 'max_len', None)):
    rng, key = jax.random.split(rng)
    got = gen.sample_lm(loaded.model, loaded.params, jnp.asarray(tokens), key, s['max_new'], eos_id=stop,
                        vocab_size=vocab, lengths=jnp.asarray(lengths), prefill=prefill, **_sampling(s))
    for i, row in zip(rows, np.asarray(got)):
      out[i] = row
  return out


def _seq2seq(loaded, sources, s, start: int, stop: int, vocab: int, seed: int, pad_id: int = 0) -> np.ndarray:
  """Answers to sources (ids), the sources padded to a length bucket: sampled, or beam search."""
  src = jnp.asarray(gen.pad_rows(sources, pad_id))
  if s['num_beams'] > 1:
    out, _ = gen.beam_search(loaded.model, loaded.params, src, s['max_new'], s['num_beams'], s['alpha'], start, stop,
                             vocab_size=vocab, repetition_penalty=float(s['repetition_penalty']))
  else:
    out = gen.sample_seq2seq(loaded.model, loaded.params, src, jax.random.key(seed), s['max_new'], start_id=start,
                             eos_id=stop, vocab_size=vocab, **_sampling(s))
  return np.asarray(out)


def _glm(loaded, contexts, s, stop: int, vocab: int, seed: int) -> list[np.ndarray]:
  """GLM's blanks filled: the contexts (ids, [MASK] position) padded to length buckets."""
  rng, out = jax.random.key(seed), [None] * len(contexts)
  for rows, tokens, lengths, _ in gen.lm_batches([c[0] for c in contexts], s['max_new'] + 1,
                                                 getattr(loaded.model, 'max_len', None)):
    rng, key = jax.random.split(rng)
    at = jnp.asarray([contexts[i][1] for i in rows], jnp.int32)
    got = gen.sample_glm(loaded.model, loaded.params, jnp.asarray(tokens), key, s['max_new'], at, eos_id=stop,
                         vocab_size=vocab, context_length=jnp.asarray(lengths), **_sampling(s))
    for i, row in zip(rows, np.asarray(got)):
      out[i] = row
  return out


def full_text(loaded, prompt: str, text: str) -> str:
  """A prompt with what `generate` returned for it, as `python -m zoo.sample` prints it: prompt + text for the
  decoders, the prompt with its [MASK] filled for GLM (prompt + text when it has none), 'prompt -> text' for the
  encoder-decoders (an answer, not a continuation)."""
  if models.is_encoder_decoder(loaded.family):
    return f'{prompt} -> {text}'
  if models.kind(loaded.family) == models.BLANK_INFILLING:
    before, _, after = prompt.partition('[MASK]')
    return before + text + after
  return prompt + text


def check_family(family: str, num_beams: int) -> None:
  """Refuse a family that does not generate, and beam search outside the encoder-decoders."""
  if not models.generates(family):
    raise ValueError(f'{family} is an encoder: it does not generate (use a workdir of '
                     f'{", ".join(f for f in models.FAMILIES if models.generates(f))})')
  if num_beams > 1 and not models.is_encoder_decoder(family):
    raise ValueError(f'beam search (num_beams > 1) is for the encoder-decoders '
                     f'({", ".join(models.families_of(models.ENCODER_DECODER))})')


def glm_context(tok, prompt: str) -> tuple[list[int], int]:
  """GLM's part A for a prompt: its text with its '[MASK]' (or one appended), and where the [MASK] is."""
  before, found, after = prompt.partition('[MASK]')
  return contract.glm_prompt(tok.encode(before), tok.encode(after) if found and after else [])


def new_text(tok, row, stop: int, prompt: str = '', prompt_ids: Sequence[int] = ()) -> str:
  """The text of a generated row of zoo ids, up to `stop`, without the special tokens ([UNK] kept), after the
  prompt (see `continuation`). Ids past the tokenizer cannot be here: the decoding functions mask them."""
  row = [int(t) for t in row]
  if stop in row:
    row = row[:row.index(stop)]
  return continuation(tok.decode, prompt, prompt_ids, [t for t in row if t > tk.EOP or t == tk.UNK])


def continuation(decode, prompt: str, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
  """The text `ids` add after `prompt` (whose tokens are prompt_ids): decoded together with the prompt's ids,
  then cut after the prompt, so that a continuation that starts a word keeps its space (SentencePiece drops the
  leading '▁' of a text decoded on its own). prompt + result == decode(prompt_ids + ids) whenever that decoding
  starts with the prompt; otherwise (a prompt that does not round-trip) the text after the decoded prompt."""
  if not len(prompt_ids):
    return decode(list(ids))
  whole = decode([*prompt_ids, *ids])
  if whole.startswith(prompt):
    return whole[len(prompt):]
  head = decode(list(prompt_ids))
  return whole[len(head):] if whole.startswith(head) else decode(list(ids))

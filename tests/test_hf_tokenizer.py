"""zoo.data.hf_tokenizer.HFTokenizer against transformers' own tokenizers, on tiny tokenizers built here
(nothing is downloaded): WordPiece (BERT), SentencePiece (T5) and byte-level BPE (GPT-2), each read from its
vocabulary files and from the tokenizer.json that transformers saves. Then imported HF models generate through
zoo.load / zoo.generate exactly what transformers' greedy `generate` does."""
import json
import os
import shutil

import jax
import pytest

from zoo import convert
from zoo.data.hf_tokenizer import HFTokenizer

pytest.importorskip('tokenizers')
pytest.importorskip('safetensors')

CORPUS = ['the quick brown fox jumps over the lazy dog', 'hello world, a test of tokenizers.',
          'zoo models speak many languages!', 'Hello World: the dog is lazy; the fox is quick.'] * 25

SENTENCES = ['hello world', 'The quick brown fox jumps over the lazy dog!', 'a test of tokenizers, zoo models.',
             'Unknown: xyz Q \u00dc \u2603 99', '  extra   spaces  here ', 'hello\tworld\nnew line']


def _transformers():
  transformers = pytest.importorskip('transformers')
  transformers.logging.set_verbosity_error()
  return transformers


def _compare(ours: HFTokenizer, theirs, sentences, kind):
  assert ours.kind == kind
  assert ours.vocab_size == len(theirs)
  for name in ('pad', 'eos', 'bos', 'unk', 'cls', 'sep', 'mask'):
    assert getattr(ours, f'{name}_id') == getattr(theirs, f'{name}_token_id'), name
  for text in sentences:
    for special in (False, True):
      want = theirs(text, add_special_tokens=special)['input_ids']
      assert ours.encode(text, add_special_tokens=special) == want, (text, special)
    for skip in (True, False):
      assert ours.decode(want, skip_special_tokens=skip) == theirs.decode(want, skip_special_tokens=skip), \
          (text, skip)


def _raw_and_saved(tmp_path, files: dict, load_hf, tokenizer_config: dict | None = None):
  """A directory holding only the vocabulary files (and tokenizer_config.json when given), the HF tokenizer
  transformers builds from it, and what that tokenizer's save_pretrained writes (tokenizer.json)."""
  raw = tmp_path / 'raw'
  raw.mkdir()
  for name, data in files.items():
    (raw / name).write_bytes(data)
  if tokenizer_config is not None:
    (raw / 'tokenizer_config.json').write_text(json.dumps(tokenizer_config))
  hf = load_hf(str(raw))
  saved = tmp_path / 'saved'
  hf.save_pretrained(str(saved))
  assert (saved / 'tokenizer.json').exists()
  return str(raw), hf, str(saved)


# ------------------------------------------------------------------------------------------------ BERT

BERT_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'quick', 'brown', 'fox', 'jump', '##s', '##ed',
              'over', 'lazy', 'dog', 'hello', 'world', ',', '.', '!', ':', ';', 'a', 'test', 'of', 'token', '##izer',
              'zoo', 'model', 'speak', 'many', 'language', 'u', '##nk', '##now', '##n', 'x', '##y', '##z', 'q', 'is',
              'extra', 'space', 'here', 'new', 'line', 'The', 'Hello', 'World', '99', '\u00fc', '\u00dc']


@pytest.mark.parametrize('lower', [True, False])
def test_wordpiece_matches_bert_tokenizer(tmp_path, lower):
  transformers = _transformers()
  vocab = ('\n'.join(BERT_VOCAB) + '\n').encode()
  raw, hf, saved = _raw_and_saved(tmp_path, {'vocab.txt': vocab}, transformers.BertTokenizer.from_pretrained,
                                  None if lower else {'do_lower_case': False, 'tokenizer_class': 'BertTokenizer'})
  sentences = SENTENCES + ['Hello [MASK] world [SEP] [CLS]x', 'tokenizer jumped']
  for path, kind in ((raw, 'wordpiece'), (saved, 'tokenizer.json')):
    ours = HFTokenizer.load(path)
    _compare(ours, hf, sentences, kind)
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id, ours.unk_id) == (2, 3, 0, 4, 1)
    assert ours.eos_id is None and ours.decoder_start_id is None


# ------------------------------------------------------------------------------------------------ T5

def _spiece(tmp_path) -> bytes:
  import io
  import sentencepiece as spm
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=48, pad_id=0,
                                 eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)  # T5's layout
  return model.getvalue()


def test_sentencepiece_matches_t5_tokenizer(tmp_path):
  transformers = _transformers()
  raw, hf, saved = _raw_and_saved(tmp_path, {'spiece.model': _spiece(tmp_path)},
                                  transformers.T5Tokenizer.from_pretrained)
  sentences = SENTENCES + ['a <extra_id_0> test<extra_id_1>', 'hello<extra_id_2>world </s> <pad>x']
  for path, kind in ((raw, 'sentencepiece'), (saved, 'tokenizer.json')):
    ours = HFTokenizer.load(path)
    _compare(ours, hf, sentences, kind)
    assert (ours.pad_id, ours.eos_id, ours.unk_id, ours.bos_id, ours.decoder_start_id) == (0, 1, 2, None, 0)
    assert ours.vocab_size == 148 and ours.token_to_id('<extra_id_0>') == 147  # 100 sentinels, reversed
    assert ours.encode('hello world', add_special_tokens=True)[-1] == 1  # </s> appended, as T5Tokenizer does


# ------------------------------------------------------------------------------------------------ GPT-2

def _byte_level_bpe(tmp_path) -> dict:
  import tokenizers
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=2, special_tokens=['<|endoftext|>'],
                          show_progress=False)
  out = tmp_path / 'bpe_files'
  out.mkdir()
  bpe.save_model(str(out))
  return {name: (out / name).read_bytes() for name in ('vocab.json', 'merges.txt')}


@pytest.fixture(scope='module')
def bpe_files(tmp_path_factory):
  return _byte_level_bpe(tmp_path_factory.mktemp('bpe'))


def test_byte_level_bpe_matches_gpt2_tokenizer(tmp_path, bpe_files):
  transformers = _transformers()
  raw, hf, saved = _raw_and_saved(tmp_path, bpe_files, transformers.GPT2Tokenizer.from_pretrained)
  sentences = SENTENCES + ['<|endoftext|>hello<|endoftext|> world', ' leading space', '\u4f60\u597d\U0001f642']
  eot = hf.convert_tokens_to_ids('<|endoftext|>')
  for path, kind in ((raw, 'bpe'), (saved, 'tokenizer.json')):
    ours = HFTokenizer.load(path)
    _compare(ours, hf, sentences, kind)
    assert ours.eos_id == ours.bos_id == ours.unk_id == eot and ours.pad_id is None
    assert ours.decode(ours.encode('\u4f60\u597d \U0001f642 caf\u00e9')) == '\u4f60\u597d \U0001f642 caf\u00e9'


def test_load_refuses_a_directory_without_tokenizer_files(tmp_path):
  (tmp_path / 'vocab.json').write_text('{}')  # no merges.txt: not a BPE tokenizer
  with pytest.raises(FileNotFoundError, match='no tokenizer.json, spiece.model, vocab.txt'):
    HFTokenizer.load(str(tmp_path))


# ------------------------------------------------------------------------------------------------ end to end

def _torch():
  torch = pytest.importorskip('torch')
  _transformers()
  torch.set_num_threads(1)
  return torch


def _perturb(torch, model, seed, scale):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * scale)
  return model.eval()


def _hf_greedy(torch, hf_model, ids, max_new, eos, decoder_only):
  """transformers' greedy generate for one prompt: the new ids up to (not including) eos."""
  with torch.no_grad():
    out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=max_new, do_sample=False, num_beams=1, pad_token_id=eos)
  new = out[0, len(ids):] if decoder_only else out[0, 1:]  # T5: the decoder start token first
  new = [int(t) for t in new]
  return new[:new.index(eos)] if eos in new else new


PROMPTS = ['hello world', 'the lazy dog jumps', 'zoo models speak']


def test_imported_gpt2_generates_as_transformers(tmp_path, bpe_files):
  torch = _torch()
  import zoo
  from zoo import api
  transformers = _transformers()
  raw, hf_tok, _ = _raw_and_saved(tmp_path, bpe_files, transformers.GPT2Tokenizer.from_pretrained)
  eot = hf_tok.convert_tokens_to_ids('<|endoftext|>')
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(hf_tok), n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                   activation_function='gelu_new', bos_token_id=eot, eos_token_id=eot)
  hf = _perturb(torch, transformers.GPT2LMHeadModel(config), 1, 0.1)
  # Make eos the likeliest token where PROMPTS[1] would emit its second token (eos's output embedding = 1.02 x
  # that token's), so that at least one prompt stops at <|endoftext|> before max_new.
  second = _hf_greedy(torch, hf, hf_tok(PROMPTS[1])['input_ids'], 2, eot, decoder_only=True)[1]
  with torch.no_grad():
    hf.transformer.wte.weight[eot] = 1.02 * hf.transformer.wte.weight[second]
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(str(hf_dir))
  hf_tok.save_pretrained(str(hf_dir))  # tokenizer.json + tokenizer_config.json beside the model
  out = tmp_path / 'zoo'
  assert convert.main(['import', f'--hf_dir={hf_dir}', f'--out={out}']) == 0
  assert json.loads((out / convert.ZOO_CONFIG).read_text())['tokenizer']['hf_tokenizer'] == 'tokenizer.json'

  loaded = zoo.load(str(out))
  assert loaded.family == 'gpt' and loaded.step == 0 and loaded.run is None
  assert isinstance(loaded.tokenizer, HFTokenizer) and loaded.tokenizer.eos_id == eot
  assert {d for x in jax.tree.leaves(loaded.params) for d in x.devices()} == set(jax.devices())
  with pytest.raises(ValueError, match='no evaluation data'):
    zoo.evaluate(loaded)

  max_new = 6
  got = api.generate_ids(loaded, PROMPTS, max_new=max_new)
  texts = zoo.generate(loaded, PROMPTS, max_new=max_new)
  stopped = 0
  for prompt, ids, text in zip(PROMPTS, got, texts):
    want = _hf_greedy(torch, hf, hf_tok(prompt)['input_ids'], max_new, eot, decoder_only=True)
    assert ids == want, prompt
    assert text == hf_tok.decode(want, skip_special_tokens=True)
    stopped += len(want) < max_new
  print(f'gpt2: {len(PROMPTS)} prompts, {stopped} stopped at eos, ids {got} texts {texts}')
  assert stopped >= 1  # eos ended at least one prompt early, in zoo as in transformers

  # The HF directory's generation_config.json becomes zoo.generate's defaults: with a repetition penalty and
  # max_new_tokens there, zoo's ids equal transformers' generate reading the same file.
  hf.generation_config.update(repetition_penalty=1.8, max_new_tokens=8, do_sample=False, pad_token_id=eot)
  hf.generation_config.save_pretrained(str(hf_dir))
  convert.import_hf(str(hf_dir), str(tmp_path / 'zoo2'))
  penalized = zoo.load(str(tmp_path / 'zoo2'))
  assert penalized.generation == {'max_new': 8, 'temperature': 0.0, 'repetition_penalty': 1.8}
  got = api.generate_ids(penalized, PROMPTS)
  for prompt, ids in zip(PROMPTS, got):
    x = hf_tok(prompt)['input_ids']
    with torch.no_grad():
      out = [int(t) for t in hf.generate(torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long))[0]]
    want = out[len(x):]
    assert ids == (want[:want.index(eot)] if eot in want else want), prompt
  assert got != api.generate_ids(penalized, PROMPTS, repetition_penalty=1.0)  # the penalty changed something


def test_imported_t5_generates_as_transformers(tmp_path):
  torch = _torch()
  import zoo
  from zoo import api
  transformers = _transformers()
  raw, hf_tok, _ = _raw_and_saved(tmp_path, {'spiece.model': _spiece(tmp_path)},
                                  transformers.T5Tokenizer.from_pretrained, {'extra_ids': 4})
  assert len(hf_tok) == 52  # 48 pieces and 4 sentinels: the model's outputs are mostly text
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=len(hf_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                 num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                 relative_attention_max_distance=20, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1, feed_forward_proj='gated-gelu')
  # seed and scale chosen so that the greedy outputs are text, an <unk>, and end at </s> early or run to max_new
  hf = _perturb(torch, transformers.T5ForConditionalGeneration(config), 2, 0.2)
  hf.generation_config.min_length = 0
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(str(hf_dir))
  for name in ('spiece.model', 'tokenizer_config.json'):  # the vocabulary files only: no tokenizer.json
    shutil.copyfile(os.path.join(raw, name), hf_dir / name)
  out = tmp_path / 'zoo'
  convert.import_hf(str(hf_dir), str(out))

  loaded = zoo.load(str(out), devices=1)
  tok = loaded.tokenizer
  assert tok.kind == 'sentencepiece' and (tok.eos_id, tok.pad_id, tok.decoder_start_id) == (1, 0, 0)
  assert {d for x in jax.tree.leaves(loaded.params) for d in x.devices()} == {jax.devices()[0]}

  max_new = 6
  got = api.generate_ids(loaded, PROMPTS, max_new=max_new)
  texts = zoo.generate(loaded, PROMPTS, max_new=max_new)
  beams = zoo.generate(loaded, PROMPTS[:1], max_new=max_new, num_beams=2)
  stopped = 0
  for prompt, ids, text in zip(PROMPTS, got, texts):
    src = hf_tok(prompt)['input_ids']
    assert src[-1] == 1 and tok.encode(prompt, add_special_tokens=True) == src
    want = _hf_greedy(torch, hf, src, max_new, 1, decoder_only=False)
    assert ids == want, prompt
    assert text == hf_tok.decode(want, skip_special_tokens=True)
    stopped += len(want) < max_new
  assert len(beams) == 1 and isinstance(beams[0], str)
  print(f't5: {len(PROMPTS)} prompts, {stopped} stopped at eos, ids {got} texts {texts}')
  assert stopped >= 1

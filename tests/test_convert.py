"""zoo.convert: HuggingFace BERT / ALBERT / GPT-2 / T5 / BART in and out, checked against the reference `transformers`
implementation (PyTorch, CPU) built from small random configs (nothing is downloaded); refusal of pickles that
hold anything but tensors; configs zoo cannot express."""
import dataclasses
import json
import os
import pathlib
import pickle
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import convert, decoding, models

pytest.importorskip('safetensors')  # zoo.convert reads and writes safetensors

ATOL = 1e-4  # float32 logits; the measured differences (printed with -s) are 1e-7 .. 2e-5


def _torch():
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  transformers.logging.set_verbosity_error()
  torch.set_num_threads(1)
  return torch, transformers


def _perturb(torch, model, seed, scale=0.1):
  """Every parameter moved off its initial value (LayerNorm weights off 1, biases off 0)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * scale)
  return model.eval()


_JITTED = {}


def _apply(model):
  """model.apply under jax.jit, one compile per model configuration (eager flax dispatch is slow here)."""
  return _JITTED.setdefault(repr(model), jax.jit(model.apply))


def _check(name, got, want, where=None):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if where is not None:
    got, want = got[where], want[where]
  diff = float(np.max(np.abs(got - want)))
  print(f'{name}: max |diff| {diff:.2e} (logit std {np.std(want):.3f})')
  assert np.std(want) > 0.1, 'reference logits too flat to test anything'
  assert diff < ATOL, f'{name}: max |diff| {diff}'


def _bert_inputs(vocab):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, (2, 12))
  mask = np.ones((2, 12), np.int64)
  mask[1, 8:] = 0
  tokens[1, 8:] = 0
  types = np.zeros((2, 12), np.int64)
  types[0, 6:] = 1
  types[1, 5:8] = 1
  return tokens, mask, types


# ------------------------------------------------------------------------------------------------ BERT

BERT_CONFIG = dict(vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=96, max_position_embeddings=40, type_vocab_size=2, initializer_range=0.2,
                   hidden_act='gelu', layer_norm_eps=1e-12)


@pytest.fixture(scope='module')
def hf_bert(tmp_path_factory):
  torch, transformers = _torch()
  torch.manual_seed(0)
  hf = _perturb(torch, transformers.BertForPreTraining(transformers.BertConfig(**BERT_CONFIG)), 1)
  path = str(tmp_path_factory.mktemp('hf_bert'))
  hf.save_pretrained(path)
  tokens, mask, types = _bert_inputs(BERT_CONFIG['vocab_size'])
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  return path, out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def _zoo_bert(model, params):
  tokens, mask, types = _bert_inputs(model.vocab_size)
  out = _apply(model)({'params': params}, jnp.asarray(tokens), token_types=jnp.asarray(types),
                      segment_ids=jnp.asarray(mask))
  return out['mlm_logits'], out['nsp_logits']


def test_bert_import_matches_transformers(hf_bert):
  path, mlm_ref, nsp_ref = hf_bert
  model, params, family, fields = convert.load_hf(path)
  assert family == 'bert' and fields['num_layers'] == 2 and fields['activation'] == 'gelu'
  expected = jax.tree.map(lambda x: x.shape, nn.unbox(models.abstract_params(model)))
  assert jax.tree.map(lambda x: x.shape, params) == expected
  mlm, nsp = _zoo_bert(model, params)
  valid = _bert_inputs(model.vocab_size)[1].astype(bool)  # padded positions: zoo masks their queries too
  _check('bert import mlm', mlm, mlm_ref, valid)
  _check('bert import nsp', nsp, nsp_ref)


def test_bert_export_loads_in_transformers(hf_bert, tmp_path):
  torch, transformers = _torch()
  path, mlm_ref, nsp_ref = hf_bert
  model, params, _, _ = convert.load_hf(path)
  out_dir = convert.export_hf(model, params, 'bert', str(tmp_path / 'imported'))
  hf, info = transformers.BertForPreTraining.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  tokens, mask, types = _bert_inputs(model.vocab_size)
  with torch.no_grad():
    out = hf.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types))
  _check('bert import->export mlm', out.prediction_logits.numpy(), mlm_ref)
  _check('bert import->export nsp', out.seq_relationship_logits.numpy(), nsp_ref)

  # a randomly initialised zoo BERT (norms and biases perturbed) -> HF
  model = models.get_model('bert', 'tiny', num_layers=2, vocab_size=173, max_len=32, dropout_rate=0.0)
  params = _random_params(model, seed=3)
  out_dir = convert.export_hf(model, params, 'bert', str(tmp_path / 'random'))
  hf, info = transformers.BertForPreTraining.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  tokens, mask, types = _bert_inputs(model.vocab_size)
  with torch.no_grad():
    out = hf.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types))
  mlm, nsp = _zoo_bert(model, params)
  _check('bert random zoo->HF mlm', out.prediction_logits.numpy(), mlm, mask.astype(bool))
  _check('bert random zoo->HF nsp', out.seq_relationship_logits.numpy(), nsp)


def _roberta_inputs(vocab):
  rng = np.random.default_rng(4)
  tokens = rng.integers(3, vocab, (2, 12))  # never <pad> (1): transformers counts positions past the padding
  mask = np.ones((2, 12), np.int64)
  mask[1, 8:] = 0
  tokens[1, 8:] = 1
  return tokens, mask


@pytest.mark.parametrize('architecture', ['RobertaForMaskedLM', 'XLMRobertaForMaskedLM'])
def test_roberta_import_and_export_match_transformers(architecture, tmp_path):
  """Positions start after the padding id (pad_token_id 1: row 2 is position 0), one token type, the MLM head
  under lm_head; in, out, and a random zoo RoBERTa out."""
  torch, transformers = _torch()
  torch.manual_seed(0)
  cls = getattr(transformers, architecture)
  config_cls = transformers.XLMRobertaConfig if architecture.startswith('XLM') else transformers.RobertaConfig
  config = config_cls(vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=42, type_vocab_size=1, pad_token_id=1,
                      bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
  hf = _perturb(torch, cls(config), 8)
  hf.save_pretrained(str(tmp_path / 'hf'))
  tokens, mask = _roberta_inputs(211)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  model, params, family, fields = convert.load_hf(str(tmp_path / 'hf'))
  assert family == 'roberta' and (fields['position_offset'], fields['max_len'], fields['type_vocab_size']) == (2, 40, 1)
  zoo_mlm = lambda m, p: _apply(m)({'params': p}, jnp.asarray(tokens), segment_ids=jnp.asarray(mask))['mlm_logits']  # noqa
  _check('roberta import mlm', zoo_mlm(model, params), ref, mask.astype(bool))
  out_dir = convert.export_hf(model, params, 'roberta', str(tmp_path / 'out'))
  back, info = transformers.RobertaForMaskedLM.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  with torch.no_grad():
    again = back.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  _check('roberta import->export mlm', again, ref)
  model = models.get_model('roberta', 'tiny', vocab_size=173, max_len=32, dropout_rate=0.0)
  params = _random_params(model, seed=5)
  back = transformers.RobertaForMaskedLM.from_pretrained(convert.export_hf(model, params, 'roberta',
                                                                           str(tmp_path / 'random'))).eval()
  tokens, mask = _roberta_inputs(173)
  with torch.no_grad():
    theirs = back(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  _check('roberta random zoo->HF mlm', theirs, zoo_mlm(model, params), mask.astype(bool))


@pytest.mark.parametrize('with_generator', [True, False])
def test_electra_import_and_export_match_transformers(with_generator, tmp_path):
  """The discriminator (ElectraForPreTraining, E=16 < H=32) and the generator (ElectraForMaskedLM in generator/,
  width 16, the same embeddings): RTD and MLM logits in, out; without a generator directory a fresh one."""
  torch, transformers = _torch()
  torch.manual_seed(0)
  common = dict(vocab_size=101, embedding_size=16, max_position_embeddings=40, type_vocab_size=2)
  disc = _perturb(torch, transformers.ElectraForPreTraining(transformers.ElectraConfig(
      **common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)), 9)
  hf_dir = tmp_path / 'hf'
  disc.save_pretrained(str(hf_dir))
  tokens, mask, types = _bert_inputs(101)
  feed = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  with torch.no_grad():
    rtd_ref = disc(**feed).logits.numpy()
  if with_generator:
    gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        **common, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
    _perturb(torch, gen, 10)
    gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())  # shared, as ELECTRA trains them
    gen.tie_weights()
    gen.save_pretrained(str(hf_dir / 'generator'))
    with torch.no_grad():
      mlm_ref = gen.eval()(**feed).logits.numpy()
  model, params, family, fields = convert.load_hf(str(hf_dir))
  assert family == 'electra' and (fields['embedding_dim'], fields['embed_dim']) == (16, 32)
  assert fields['generator_embed_dim'] == (16 if with_generator else 64)
  t = tokens.shape[1]
  run = lambda m, p: _apply(m)({'params': p}, jnp.asarray(tokens), token_types=jnp.asarray(types),  # noqa: E731
                               segment_ids=jnp.asarray(mask), mlm_positions=jnp.broadcast_to(jnp.arange(t), (2, t)),
                               mlm_weights=jnp.zeros((2, t)), sample_seeds=jnp.arange(2, dtype=jnp.uint32))
  out = run(model, params)
  valid = mask.astype(bool)
  _check('electra import rtd', out['rtd_logits'], rtd_ref, valid)
  if with_generator:
    _check('electra import generator mlm', out['mlm_logits'], mlm_ref, valid)
  out_dir = convert.export_hf(model, params, 'electra', str(tmp_path / 'out'))
  back, info = transformers.ElectraForPreTraining.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  with torch.no_grad():
    _check('electra export rtd', back.eval()(**feed).logits.numpy(), rtd_ref)
    gen_back, info = transformers.ElectraForMaskedLM.from_pretrained(os.path.join(out_dir, 'generator'),
                                                                      output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    _check('electra export generator mlm', gen_back.eval()(**feed).logits.numpy(), out['mlm_logits'], valid)


def test_bert_masked_lm_imports_with_fresh_pooler(tmp_path):
  torch, transformers = _torch()
  torch.manual_seed(0)
  hf = _perturb(torch, transformers.BertForMaskedLM(transformers.BertConfig(**BERT_CONFIG)), 2)
  hf.save_pretrained(str(tmp_path))
  tokens, mask, types = _bert_inputs(BERT_CONFIG['vocab_size'])
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types)).logits.numpy()
  with pytest.warns(UserWarning, match='pooler/kernel'):
    model, params, _, _ = convert.load_hf(str(tmp_path))
  mlm, _ = _zoo_bert(model, params)
  _check('bert masked-lm import mlm', mlm, ref, mask.astype(bool))


def _random_params(model, seed):
  """Random parameters of the zoo model's shapes (numpy: no init to compile): kernels and embeddings
  N(0, 0.1), norm scales 1 + N(0, 0.3), biases and T5's relative bias N(0, 0.3)."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if 'scale' in name:
      return (1 + rng.normal(0, 0.3, x.shape)).astype(np.float32)
    return rng.normal(0, 0.3 if 'bias' in name or 'rel_embedding' in name else 0.1, x.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, nn.unbox(models.abstract_params(model)))


# ------------------------------------------------------------------------------------------------ GPT-2

GPT_CONFIG = dict(vocab_size=199, n_embd=48, n_layer=2, n_head=4, n_positions=32, initializer_range=0.2,
                  activation_function='gelu_new', bos_token_id=1, eos_token_id=1)


def _gpt_inputs(vocab):
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, vocab, (2, 10))
  mask = np.ones((2, 10), np.int64)
  mask[1, 7:] = 0
  return tokens, mask


@pytest.fixture(scope='module')
def hf_gpt(tmp_path_factory):
  torch, transformers = _torch()
  torch.manual_seed(0)
  hf = _perturb(torch, transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT_CONFIG)), 4)
  path = str(tmp_path_factory.mktemp('hf_gpt'))
  hf.save_pretrained(path)
  tokens, mask = _gpt_inputs(GPT_CONFIG['vocab_size'])
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  return path, ref, hf.state_dict()


def _zoo_gpt(model, params):
  tokens, mask = _gpt_inputs(model.vocab_size)
  return _apply(model)({'params': params}, jnp.asarray(tokens), segment_ids=jnp.asarray(mask))


def test_gpt2_import_and_export_match_transformers(hf_gpt, tmp_path):
  torch, transformers = _torch()
  path, ref, _ = hf_gpt
  model, params, family, fields = convert.load_hf(path)
  assert family == 'gpt' and fields['tie_embeddings'] and fields['activation'] == 'gelu_tanh'
  assert fields['mlp_dim'] == 4 * 48 and fields['max_len'] == 32
  mask = _gpt_inputs(model.vocab_size)[1].astype(bool)
  _check('gpt2 import', _zoo_gpt(model, params), ref, mask)

  out_dir = convert.export_hf(model, params, 'gpt', str(tmp_path / 'imported'))
  hf, info = transformers.GPT2LMHeadModel.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  tokens, _ = _gpt_inputs(model.vocab_size)
  with torch.no_grad():
    back = hf.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits
  _check('gpt2 import->export', back.numpy(), ref, mask)


def test_gpt2_random_untied_zoo_model_exports(tmp_path):
  torch, transformers = _torch()
  model = models.get_model('gpt', 'tiny', num_layers=2, vocab_size=157, max_len=24, tie_embeddings=False,
                           activation='gelu', dropout_rate=0.0)
  params = _random_params(model, seed=5)
  out_dir = convert.export_hf(model, params, 'gpt', str(tmp_path))
  hf, info = transformers.GPT2LMHeadModel.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert hf.config.tie_word_embeddings is False and hf.config.activation_function == 'gelu'
  tokens, mask = _gpt_inputs(model.vocab_size)
  with torch.no_grad():
    ref = hf.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  _check('gpt2 random untied zoo->HF', ref, _zoo_gpt(model, params), mask.astype(bool))
  # and back: the same fields and exactly the same parameters
  model2, params2, _, fields2 = convert.load_hf(out_dir)
  assert not fields2['tie_embeddings'] and fields2['activation'] == 'gelu'
  jax.tree.map(np.testing.assert_array_equal, params2, params)


# ------------------------------------------------------------------------------------------------ T5

T5_CONFIG = dict(vocab_size=157, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)


def _t5_inputs(vocab):
  rng = np.random.default_rng(2)
  src = rng.integers(1, vocab, (2, 11))
  src[1, 7:] = 0
  tgt = rng.integers(1, vocab, (2, 9))
  return src, (src != 0).astype(np.int64), tgt


def _hf_t5_logits(torch, hf, vocab):
  src, mask, tgt = _t5_inputs(vocab)
  with torch.no_grad():
    return hf.eval()(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(tgt)).logits.numpy()


@pytest.mark.parametrize('variant', ['v1.0-relu-tied', 'v1.0-relu-scaled-untied', 'v1.1-gated-gelu-untied',
                                     'v1.1-gated-gelu-tied'])
def test_t5_import_and_export_match_transformers(variant, tmp_path):
  """v1.0: tied and scaled by d_model**-0.5 (and a separate head with that scale: zoo folds the scale into
  its kernel); v1.1: no scaling, a separate head (as google/t5-v1_1-*) or tied (what transformers 5 builds)."""
  torch, transformers = _torch()
  torch.manual_seed(0)
  gated, untied = 'gated' in variant, 'untied' in variant
  config = transformers.T5Config(**T5_CONFIG, feed_forward_proj='gated-gelu' if gated else 'relu',
                                 tie_word_embeddings=not gated)  # 5.x: tie_word_embeddings=False = no scaling
  hf = _perturb(torch, transformers.T5ForConditionalGeneration(config), 6, scale=0.05)
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(str(hf_dir))
  if untied:  # a separate lm_head (transformers 5 ties a freshly built one; from_pretrained keeps it apart)
    from safetensors.numpy import load_file, save_file
    weights = load_file(str(hf_dir / 'model.safetensors'))
    weights['lm_head.weight'] = np.random.default_rng(7).normal(0, 1, weights['shared.weight'].shape).astype(
        np.float32)
    save_file(weights, str(hf_dir / 'model.safetensors'), metadata={'format': 'pt'})
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(hf_dir))
  ref = _hf_t5_logits(torch, hf, T5_CONFIG['vocab_size'])

  model, params, family, fields = convert.load_hf(str(hf_dir))
  assert family == 't5'
  assert fields['activation'] == ('geglu' if gated else 'relu')
  assert fields['tie_embeddings'] == (not untied)
  assert fields['scale_tied_logits'] == (not gated and not untied)
  src, _, tgt = _t5_inputs(model.vocab_size)
  got = _apply(model)({'params': params}, jnp.asarray(src), jnp.asarray(tgt))
  _check(f't5 {variant} import', got, ref)

  out_dir = convert.export_hf(model, params, 't5', str(tmp_path / 'export'))
  back, info = transformers.T5ForConditionalGeneration.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  _check(f't5 {variant} import->export', _hf_t5_logits(torch, back, model.vocab_size), ref)


# ------------------------------------------------------------------------------------------------ ALBERT

ALBERT_CONFIG = dict(vocab_size=163, embedding_size=16, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=40, initializer_range=0.2, hidden_act='gelu_new')


def _hf_albert_logits(torch, hf, vocab):
  tokens, mask, types = _bert_inputs(vocab)
  with torch.no_grad():
    out = hf.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types))
  return out.prediction_logits.numpy(), out.sop_logits.numpy()


def test_albert_cli_import_and_export_match_transformers(tmp_path):
  """AlbertForPreTraining (E=16 < H=48, one layer group shared by 3 layers) through `python -m zoo.convert
  import` and `export`: MLM and SOP logits as transformers gives them."""
  torch, transformers = _torch()
  torch.manual_seed(0)
  hf = _perturb(torch, transformers.AlbertForPreTraining(transformers.AlbertConfig(**ALBERT_CONFIG)), 8)
  hf_dir, out, back = tmp_path / 'hf', tmp_path / 'zoo', tmp_path / 'back'
  hf.save_pretrained(str(hf_dir))
  mlm_ref, sop_ref = _hf_albert_logits(torch, hf, ALBERT_CONFIG['vocab_size'])

  assert convert.main(['import', f'--hf_dir={hf_dir}', f'--out={out}']) == 0
  model, params, family, fields = convert.load_zoo(str(out))
  assert family == 'albert' and fields['share_layers'] and fields['activation'] == 'gelu_tanh'
  assert (fields['embedding_dim'], fields['embed_dim'], fields['num_layers']) == (16, 48, 3)
  assert 'layers' in params and 'layers_0' not in params  # one set of layer parameters
  mlm, sop = _zoo_bert(model, params)
  valid = _bert_inputs(model.vocab_size)[1].astype(bool)  # padded positions: zoo masks their queries too
  _check('albert CLI import mlm', mlm, mlm_ref, valid)
  _check('albert CLI import sop', sop, sop_ref)

  assert convert.main(['export', '--family=albert', f'--params={out}', f'--out={back}']) == 0
  hf2, info = transformers.AlbertForPreTraining.from_pretrained(str(back), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  mlm2, sop2 = _hf_albert_logits(torch, hf2, model.vocab_size)
  _check('albert CLI import->export mlm', mlm2, mlm_ref)
  _check('albert CLI import->export sop', sop2, sop_ref)


def test_albert_random_unshared_zoo_model_exports(tmp_path):
  """A zoo ALBERT with a layer group per layer and E == H (HF's E -> H mapping written as the identity) -> HF
  and back."""
  torch, transformers = _torch()
  model = models.get_model('albert', 'tiny', num_layers=2, vocab_size=151, max_len=32, embedding_dim=None,
                           share_layers=False, activation='gelu')
  params = _random_params(model, seed=15)
  out_dir = convert.export_hf(model, params, 'albert', str(tmp_path))
  hf, info = transformers.AlbertForPreTraining.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert (hf.config.num_hidden_groups, hf.config.embedding_size, hf.config.hidden_size) == (2, 64, 64)
  mlm_ref, sop_ref = _hf_albert_logits(torch, hf, model.vocab_size)
  mlm, sop = _zoo_bert(model, params)
  valid = _bert_inputs(model.vocab_size)[1].astype(bool)
  _check('albert random unshared zoo->HF mlm', mlm_ref, mlm, valid)
  _check('albert random unshared zoo->HF sop', sop_ref, sop)
  _, params2, _, fields2 = convert.load_hf(out_dir)
  assert not fields2['share_layers'] and fields2['embedding_dim'] == 64
  jax.tree.map(np.testing.assert_array_equal, params2, params)


# ------------------------------------------------------------------------------------------------ BART

BART_CONFIG = dict(vocab_size=151, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=24,
                   init_std=0.2)  # BART's ids: <s> 0, <pad> 1, </s> 2


def _bart_inputs(vocab):
  """A source that starts with <s> (id 0) and has a padded row (id 1), a target that starts with </s>."""
  rng = np.random.default_rng(3)
  src = rng.integers(3, vocab, (2, 11))
  src[:, 0], src[1, 7:] = 0, 1
  mask = np.ones((2, 11), np.int64)
  mask[1, 7:] = 0
  tgt = rng.integers(3, vocab, (2, 9))
  tgt[:, 0] = 2
  return src, mask, tgt


def _hf_bart_logits(torch, hf, vocab):
  src, mask, tgt = _bart_inputs(vocab)
  with torch.no_grad():
    return hf.eval()(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(tgt)).logits.numpy()


def _zoo_bart(model, params):
  src, mask, tgt = _bart_inputs(model.vocab_size)  # zoo's encoder masks id 0 by default: BART's mask given
  return _apply(model)({'params': params}, jnp.asarray(src), jnp.asarray(tgt), segment_ids=jnp.asarray(mask))


def test_bart_import_and_export_match_transformers(tmp_path):
  """BartForConditionalGeneration (tied head, 24 + 2 position rows, layernorm_embedding, post-LN) -> zoo -> HF:
  decoder logits as transformers gives them; a non-zero final_logits_bias is refused."""
  torch, transformers = _torch()
  from safetensors.numpy import load_file, save_file
  torch.manual_seed(0)
  hf = _perturb(torch, transformers.BartForConditionalGeneration(transformers.BartConfig(**BART_CONFIG)), 10,
                scale=0.05)
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(str(hf_dir))
  ref = _hf_bart_logits(torch, hf, BART_CONFIG['vocab_size'])

  model, params, family, fields = convert.load_hf(str(hf_dir))
  assert family == 'bart' and fields['tie_embeddings'] and not fields['pre_ln'] and fields['max_len'] == 24
  assert params['encoder']['position_embed']['embedding']['embedding'].shape == (24, 32) and model.pad_id == 1
  _check('bart import', _zoo_bart(model, params), ref)
  # greedy decoding as transformers generates: <s> (id 0) is text, <pad> (id 1) is masked, </s> starts and ends
  src, mask, _ = _bart_inputs(model.vocab_size)
  with torch.no_grad():
    want = hf.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask), max_new_tokens=6,
                       num_beams=1, do_sample=False, decoder_start_token_id=2, eos_token_id=2, pad_token_id=1,
                       forced_bos_token_id=None, forced_eos_token_id=None, no_repeat_ngram_size=0,
                       min_length=0).numpy()[:, 1:]  # after the start token
  got = np.asarray(decoding.greedy_seq2seq(model, params, jnp.asarray(src), 6, start_id=2, eos_id=2))
  for g, w in zip(got, want):
    w = list(w[:list(w).index(2) + 1]) if 2 in w else list(w)  # up to and with </s>; HF pads after it
    assert list(g[:len(w)]) == w, (got, want)

  out_dir = convert.export_hf(model, params, 'bart', str(tmp_path / 'export'))
  back, info = transformers.BartForConditionalGeneration.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  assert back.model.encoder.embed_positions.weight.shape == (26, 32)
  _check('bart import->export', _hf_bart_logits(torch, back, model.vocab_size), ref)

  weights = load_file(str(hf_dir / 'model.safetensors'))
  weights['final_logits_bias'] = weights['final_logits_bias'] + 0.5
  save_file(weights, str(hf_dir / 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(convert.ConversionError, match='final_logits_bias is not zero'):
    convert.load_hf(str(hf_dir))


def test_bart_random_untied_zoo_model_exports(tmp_path):
  """A zoo BART with an untied head -> HF (tie_word_embeddings=False: lm_head and the stacks' embed_tokens
  written out) and back."""
  torch, transformers = _torch()
  model = models.get_model('bart', 'tiny', num_encoder_layers=1, num_decoder_layers=2, vocab_size=139, max_len=20,
                           tie_embeddings=False, dropout_rate=0.0)
  params = _random_params(model, seed=17)
  out_dir = convert.export_hf(model, params, 'bart', str(tmp_path))
  hf, info = transformers.BartForConditionalGeneration.from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert hf.config.tie_word_embeddings is False and hf.config.max_position_embeddings == 20
  _check('bart random untied zoo->HF', _hf_bart_logits(torch, hf, model.vocab_size), _zoo_bart(model, params))
  _, params2, _, fields2 = convert.load_hf(out_dir)
  assert not fields2['tie_embeddings'] and (fields2['num_encoder_layers'], fields2['num_decoder_layers']) == (1, 2)
  jax.tree.map(np.testing.assert_array_equal, params2, params)


# ------------------------------------------------------------------------------------------------ CLI, tokenizer

def test_cli_import_export_with_sentencepiece_vocabulary(hf_gpt, tmp_path):
  torch, transformers = _torch()
  import sentencepiece as spm
  path, ref, _ = hf_gpt
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  for name in os.listdir(path):
    (hf_dir / name).write_bytes((pathlib.Path(path) / name).read_bytes())
  text = tmp_path / 'text.txt'
  text.write_text('\n'.join(['the quick brown fox jumps over the lazy dog', 'hello world, a test'] * 20))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(hf_dir / 'spiece'), vocab_size=32,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)  # T5's layout
  out = tmp_path / 'zoo'
  assert convert.main(['import', f'--hf_dir={hf_dir}', f'--out={out}']) == 0
  meta = json.loads((out / convert.ZOO_CONFIG).read_text())
  assert meta['family'] == 'gpt' and meta['tokenizer']['files'] == ['spiece.model']
  assert meta['tokenizer']['zoo_tokenizer'] is False and 'not a zoo tokenizer' in meta['tokenizer']['note']
  assert (out / convert.HF_TOKENIZER_DIR / 'spiece.model').read_bytes() == (hf_dir / 'spiece.model').read_bytes()
  assert meta['tokenizer']['hf_tokenizer'] == 'sentencepiece' and 'HFTokenizer' in meta['tokenizer']['note']
  tok = convert.load_zoo_tokenizer(str(out))  # read with T5's conventions (pad 0, eos 1, unk 2)
  sp = spm.SentencePieceProcessor(model_file=str(hf_dir / 'spiece.model'))
  assert tok.encode('hello world') == sp.encode('hello world') and tok.decode(sp.encode('a test')) == 'a test'
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2) and tok.encode('a', add_special_tokens=True)[-1] == 1
  assert convert.load_zoo_tokenizer(str(tmp_path)) is None  # no hf_tokenizer/ there

  model, params, _, _ = convert.load_zoo(str(out))
  mask = _gpt_inputs(model.vocab_size)[1].astype(bool)
  _check('gpt2 CLI import', _zoo_gpt(model, params), ref, mask)
  scanned, scanned_params, _, _ = convert.load_zoo(str(out), scan_layers=True)
  assert scanned_params['layers']['mlp']['wi']['kernel'].shape[0] == 2
  _check('gpt2 CLI import (scanned)', _zoo_gpt(scanned, scanned_params), ref, mask)

  want = convert.params_to_hf_weights('gpt', model, params)
  got = convert.params_to_hf_weights('gpt', scanned, scanned_params)  # scanned layers export the same
  assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)

  back = tmp_path / 'back'
  assert convert.main(['export', '--family=gpt', f'--params={out / convert.PARAMS_FILE}', f'--out={back}']) == 0
  assert (back / 'spiece.model').exists()
  hf = transformers.GPT2LMHeadModel.from_pretrained(str(back))
  assert hf.config.bos_token_id == 1  # token ids carried over from the imported config.json
  tokens, _ = _gpt_inputs(model.vocab_size)
  with torch.no_grad():
    logits = hf.eval()(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits
  _check('gpt2 CLI import->export', logits.numpy(), ref, mask)


def test_export_from_train_workdir(tmp_path):
  torch, transformers = _torch()
  from configs import bert as bert_recipe
  from zoo import checkpoint as ckpt
  from zoo import train
  from zoo.data import tokenizer as tk
  workdir = tmp_path / 'run'
  workdir.mkdir()
  texts = ['hello world, this is zoo.', 'The quick brown fox jumps over the lazy dog!'] * 20
  tok = tk.train_tokenizer(texts, vocab_size=296, num_sentinels=0, path=str(workdir / 'tokenizer.model'))
  config = bert_recipe.get_config('tiny')
  config.model.num_layers = 1
  config.data.vocab_size, config.data.num_sentinels = tok.vocab_size, 0
  config.train.seq_len, config.train.batch_size, config.checkpoint.async_save = 16, 8, False
  run = train.build(config, str(workdir))
  state = train.init_state(run)
  checkpointer = ckpt.Checkpointer(str(workdir), async_save=False)
  checkpointer.save(7, jax.device_get(state), force=True)  # host arrays: a fast first Orbax save
  checkpointer.close()
  (workdir / 'config.json').write_text(run.config.to_json_best_effort(indent=1))  # as train_and_evaluate does

  out = tmp_path / 'hf'
  assert convert.main(['export', f'--workdir={workdir}', f'--out={out}']) == 0
  assert (out / 'zoo_tokenizer.model').exists()
  hf = transformers.BertForPreTraining.from_pretrained(str(out)).eval()
  model, params, _, _ = convert.load_workdir(str(workdir))
  assert model.vocab_size == 384  # the tokenizer's 296 rounded up to a multiple of 128, as train.py does
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(nn.unbox(state.params)))
  params = _random_params(model, seed=9)  # the saved init is too flat for a telling comparison
  convert.export_hf(model, params, 'bert', str(out))
  hf = transformers.BertForPreTraining.from_pretrained(str(out)).eval()
  tokens, mask, types = _bert_inputs(model.vocab_size)
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types)).prediction_logits.numpy()
  _check('bert workdir->HF', logits, _zoo_bert(model, params)[0], mask.astype(bool))


# ------------------------------------------------------------------------------------------------ .bin safety

class _Payload:
  """Unpickling this calls Path.touch(marker): what a malicious checkpoint would do with os.system."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_bin_with_pickled_objects_is_refused_unrun(hf_gpt, tmp_path, capsys):
  torch, _ = _torch()
  proof = tmp_path / 'proof'
  pickle.loads(pickle.dumps(_Payload(proof)))  # the payload is real: plain unpickling runs it
  assert proof.exists()

  marker = tmp_path / 'pwned'
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  (hf_dir / 'config.json').write_text((pathlib.Path(hf_gpt[0]) / 'config.json').read_text())
  torch.save({'w': torch.zeros(2), 'evil': _Payload(marker)}, str(hf_dir / 'pytorch_model.bin'))
  with pytest.raises(convert.UnsafeCheckpointError, match='holds objects other than tensors; refusing to '
                     r'unpickle it \(it could run code\). Convert it to safetensors with a trusted tool'):
    convert.load_hf(str(hf_dir))
  assert not marker.exists()
  with pytest.raises(SystemExit):  # the CLI says the same and exits with status 2
    convert.main(['import', f'--hf_dir={hf_dir}', f'--out={tmp_path / "out"}'])
  assert 'refusing to unpickle' in capsys.readouterr().err
  assert not marker.exists()

  with open(hf_dir / 'pytorch_model.bin', 'wb') as f:  # a bare pickle, no torch zip container
    pickle.dump({'w': _Payload(marker)}, f)
  with pytest.raises(convert.UnsafeCheckpointError, match='refusing to unpickle'):
    convert.load_hf(str(hf_dir))
  assert not marker.exists()


def test_bin_with_plain_tensors_loads(hf_gpt, tmp_path):
  """A .bin as the original GPT-2 checkpoints have it: no 'transformer.' prefix, causal-mask buffers, the tied
  lm_head stored too, and (here) one tensor in bfloat16."""
  torch, _ = _torch()
  path, _, state_dict = hf_gpt
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  (hf_dir / 'config.json').write_text((pathlib.Path(path) / 'config.json').read_text())
  legacy = {k.removeprefix('transformer.'): v for k, v in state_dict.items()}
  legacy['wpe.weight'] = legacy['wpe.weight'].to(torch.bfloat16)
  legacy['lm_head.weight'] = legacy['wte.weight']
  for i in range(2):
    legacy[f'h.{i}.attn.bias'] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    legacy[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
  torch.save(legacy, str(hf_dir / 'pytorch_model.bin'))
  _, params, _, fields = convert.load_hf(str(hf_dir))
  _, want, _, _ = convert.load_hf(path)
  assert fields['tie_embeddings']
  want['position_embed']['embedding']['embedding'] = np.asarray(
      jnp.asarray(want['position_embed']['embedding']['embedding'], jnp.bfloat16), np.float32)
  jax.tree.map(np.testing.assert_array_equal, params, want)


def test_legacy_bert_names_and_tied_copies(hf_bert, tmp_path):
  """TF-era LayerNorm gamma/beta, the position_ids buffer, and the tied decoder weight and bias stored."""
  from safetensors.numpy import load_file, save_file
  path = hf_bert[0]
  weights = load_file(os.path.join(path, 'model.safetensors'))
  legacy = {k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
            for k, v in weights.items()}
  legacy['bert.embeddings.position_ids'] = np.arange(40)[None]
  legacy['cls.predictions.decoder.weight'] = weights['bert.embeddings.word_embeddings.weight']
  legacy['cls.predictions.decoder.bias'] = weights['cls.predictions.bias']
  (tmp_path / 'config.json').write_text((pathlib.Path(path) / 'config.json').read_text())
  save_file(legacy, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  _, params, _, _ = convert.load_hf(str(tmp_path))
  _, want, _, _ = convert.load_hf(path)
  jax.tree.map(np.testing.assert_array_equal, params, want)

  legacy['cls.predictions.decoder.weight'] = legacy['cls.predictions.decoder.weight'] + 1  # untied: refused
  save_file(legacy, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(convert.ConversionError, match='cls.predictions.decoder.weight differs'):
    convert.load_hf(str(tmp_path))


def _save_bf16_safetensors(weights, path):
  """safetensors by hand with bfloat16 data (safetensors.numpy cannot write numpy's missing dtype)."""
  import ml_dtypes
  header, blobs, offset = {}, [], 0
  for name, value in weights.items():
    data = np.ascontiguousarray(value.astype(ml_dtypes.bfloat16)).tobytes()
    header[name] = {'dtype': 'BF16', 'shape': list(value.shape), 'data_offsets': [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  head = json.dumps(header).encode()
  head += b' ' * (-len(head) % 8)
  with open(path, 'wb') as f:
    f.write(len(head).to_bytes(8, 'little') + head + b''.join(blobs))


def test_sharded_bfloat16_safetensors(tmp_path):
  """A sharded checkpoint (model.safetensors.index.json) with one shard in bfloat16."""
  from safetensors.numpy import load_file, save_file
  model = models.get_model('gpt', 'tiny', num_layers=2, dropout_rate=0.0)
  params = _random_params(model, seed=11)
  src = convert.export_hf(model, params, 'gpt', str(tmp_path / 'one'))
  weights = load_file(os.path.join(src, 'model.safetensors'))
  out = tmp_path / 'sharded'
  out.mkdir()
  (out / 'config.json').write_text((pathlib.Path(src) / 'config.json').read_text())
  names = sorted(weights)
  first, second = {k: weights[k] for k in names[:10]}, {k: weights[k] for k in names[10:]}
  _save_bf16_safetensors(first, str(out / 'model-00001-of-00002.safetensors'))
  save_file(second, str(out / 'model-00002-of-00002.safetensors'), metadata={'format': 'pt'})
  index = {k: 'model-00001-of-00002.safetensors' for k in first}
  index.update({k: 'model-00002-of-00002.safetensors' for k in second})
  (out / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': index}))
  import ml_dtypes
  got = convert.read_hf_weights(str(out))
  assert sorted(got) == names and all(v.dtype == np.float32 for v in got.values())
  for k in names:
    want = weights[k].astype(ml_dtypes.bfloat16).astype(np.float32) if k in first else weights[k]
    np.testing.assert_array_equal(got[k], want)
  _, params2, _, _ = convert.load_hf(str(out))
  assert jax.tree.structure(params2) == jax.tree.structure(params)


def test_bin_without_torch_says_what_to_do(tmp_path, monkeypatch):
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  with pytest.raises(convert.ConversionError, match='needs torch .*or convert it to model.safetensors'):
    convert.load_torch_bin(str(tmp_path / 'pytorch_model.bin'))


# ------------------------------------------------------------------------------------------------ refusals

def _write(tmp_path, config):
  (tmp_path / 'config.json').write_text(json.dumps(config))
  return str(tmp_path)


@pytest.mark.parametrize('config, field', [
    (dict(model_type='llama'), 'model_type'),
    (dict(model_type='bert', architectures=['BertForSequenceClassification']), 'architectures'),
])
def test_unsupported_model_refused_before_reading_weights(tmp_path, config, field):
  with pytest.raises(convert.ConversionError, match=f'config.json {field}='):
    convert.load_hf(_write(tmp_path, config))  # there is no weights file: refused first


BERT_HF = dict(model_type='bert', vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
               intermediate_size=37, hidden_act='gelu')
GPT_HF = dict(model_type='gpt2', vocab_size=99, n_embd=32, n_layer=1, n_head=4, activation_function='gelu_new')
T5_HF = dict(model_type='t5', vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4)
ALBERT_HF = dict(model_type='albert', vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                 num_attention_heads=4, intermediate_size=37, hidden_act='gelu_new')
BART_HF = dict(model_type='bart', vocab_size=99, d_model=32, encoder_layers=1, decoder_layers=1,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37)


@pytest.mark.parametrize('config, field', [
    (dict(BERT_HF, position_embedding_type='relative_key'), 'position_embedding_type'),
    (dict(BERT_HF, hidden_act='quick_gelu'), 'hidden_act'),
    (dict(BERT_HF, is_decoder=True), 'is_decoder'),
    (dict(BERT_HF, tie_word_embeddings=False), 'tie_word_embeddings'),
    (dict(BERT_HF, num_attention_heads=5), 'num_attention_heads'),
    (dict(GPT_HF, scale_attn_by_inverse_layer_idx=True), 'scale_attn_by_inverse_layer_idx'),
    (dict(GPT_HF, scale_attn_weights=False), 'scale_attn_weights'),
    (dict(GPT_HF, add_cross_attention=True), 'add_cross_attention'),
    (dict(T5_HF, feed_forward_proj='gated-gelu_10'), 'feed_forward_proj'),
    (dict(T5_HF, feed_forward_proj='gated-gelu'), None),
    (dict(ALBERT_HF, num_hidden_groups=2), 'num_hidden_groups'),
    (dict(ALBERT_HF, inner_group_num=2), 'inner_group_num'),
    (dict(ALBERT_HF, tie_word_embeddings=False), 'tie_word_embeddings'),
    (dict(BART_HF, scale_embedding=True), 'scale_embedding'),
    (dict(BART_HF, decoder_ffn_dim=64), 'decoder_ffn_dim'),
    (dict(BART_HF, decoder_attention_heads=2), 'decoder_attention_heads'),
    (dict(BART_HF, normalize_before=True), 'normalize_before'),
    (dict(BART_HF, activation_function='quick_gelu'), 'activation_function'),
])
def test_unsupported_config_fields_named(config, field):
  if field is None:
    family, fields = convert.hf_config_to_fields(config)
    assert (family, fields['activation'], fields['num_decoder_layers']) == ('t5', 'geglu', 1)
    return
  with pytest.raises(convert.ConversionError, match=f'config.json {field}='):
    convert.hf_config_to_fields(config)


def test_export_refuses_what_hf_cannot_express(tmp_path):
  cases = [('gpt', dict(position='rotary'), 'model.position'),
           ('gpt', dict(activation='swiglu'), 'model.activation'),
           ('bert', dict(share_layers=True), 'model.share_layers'),
           ('t5', dict(pre_ln=False), 'model.pre_ln'),
           ('albert', dict(activation='swiglu'), 'model.activation'),
           ('bart', dict(pre_ln=True), 'model.pre_ln'),
           ('bart', dict(position='relative'), 'model.position'),
           ('bart', dict(head_dim=8), 'model.head_dim')]
  if 'head' in {f.name for f in dataclasses.fields(models.FAMILIES['bert'].cls)}:  # task heads: not exported
    cases.append(('bert', dict(head='classification'), 'model.head'))
  for family, fields, message in cases:
    model = models.get_model(family, 'tiny', **fields)
    with pytest.raises(convert.ConversionError, match=message):
      convert.zoo_to_hf_config(family, model)


def test_zoo_round_trip_without_torch(tmp_path):
  """export -> import gives back the same fields and bit-identical parameters (T5 with relu and geglu)."""
  for i, fields in enumerate([dict(), dict(activation='geglu', tie_embeddings=False),
                              dict(activation='geglu', scale_tied_logits=False)]):
    model = models.get_model('t5', 'tiny', num_encoder_layers=1, num_decoder_layers=2, **fields)
    params = jax.device_get(nn.unbox(models.abstract_params(model)))
    params = jax.tree.map(lambda x, r=np.random.default_rng(i): r.normal(size=x.shape).astype(np.float32), params)
    out = convert.export_hf(model, params, 't5', str(tmp_path / str(i)))
    model2, params2, _, fields2 = convert.load_hf(out)
    for k in ('activation', 'tie_embeddings', 'num_decoder_layers', 'head_dim'):
      assert fields2[k] == getattr(model, k), k
    assert fields2['scale_tied_logits'] == (model.scale_tied_logits and model.tie_embeddings)
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_lora_adapters_are_merged_on_export(tmp_path):
  adapters_lib = pytest.importorskip('zoo.layers.adapters')
  ad = adapters_lib.Adapters(lora_rank=2, lora_targets=('query', 'value', 'mlp'))
  model = models.get_model('gpt', 'tiny', num_layers=1, adapters=ad, dropout_rate=0.0)
  params = _random_params(model, seed=13)  # lora_b random too: a real update to merge
  out = convert.export_hf(model, params, 'gpt', str(tmp_path))
  plain, merged, _, _ = convert.load_hf(out)
  tokens = jnp.asarray(_gpt_inputs(model.vocab_size)[0])
  _check('gpt lora merged export', _apply(plain)({'params': merged}, tokens),
         _apply(model)({'params': params}, tokens))
  with pytest.raises(convert.ConversionError, match='prefix'):
    convert.export_hf(model.clone(adapters=adapters_lib.Adapters(prefix_length=2)), params, 'gpt',
                      str(tmp_path / 'prefix'))

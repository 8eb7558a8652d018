"""HuggingFace checkpoints in and out of zoo: BERT, ALBERT, GPT-2, T5 and BART.

Import reads a HuggingFace model directory (`config.json` + `model.safetensors`, a sharded
`model.safetensors.index.json`, or a PyTorch `pytorch_model.bin` through torch's weights-only loader) and
returns the zoo model built from the config and its parameters: nested dicts of float32 numpy arrays with
exactly the structure of `nn.unbox(model.init(...)['params'])`.

| HF `model_type` / architectures | zoo family |
| --- | --- |
| `bert`: BertForPreTraining, BertForMaskedLM, BertModel | `bert` (absolute positions, tied MLM decoder) |
| `gpt2`: GPT2LMHeadModel, GPT2Model | `gpt` (learned positions, LayerNorm, tied or untied head) |
| `t5` / `mt5`: T5ForConditionalGeneration, T5Model | `t5` (v1.0 `relu`, v1.1 `gated-gelu` = zoo `geglu`) |
| `albert`: AlbertForPreTraining, AlbertForMaskedLM, AlbertModel | `albert` (factorized embedding, shared layers, SOP) |
| `bart`: BartForConditionalGeneration, BartModel | `bart` (learned positions offset by 2, post-LN, tied or untied) |

Export writes zoo's BERT, ALBERT, GPT, T5 and BART back as `config.json` + `model.safetensors` that `transformers`
loads with `from_pretrained` (BertForPreTraining, AlbertForPreTraining, GPT2LMHeadModel,
T5ForConditionalGeneration, BartForConditionalGeneration).

Nothing in a checkpoint is ever executed: safetensors are plain arrays (read with `safetensors.numpy`), a
`.bin` is opened only with `torch.load(..., weights_only=True)` (a file with pickled objects other than tensors
is refused), `config.json` is JSON, and no remote code is ever loaded.

A round trip in Python (needs neither torch nor transformers):

>>> import tempfile, jax, numpy as np, jax.numpy as jnp, flax.linen as nn
>>> from zoo import models
>>> model = models.get_model('gpt', 'tiny', num_layers=1, dropout_rate=0.0)
>>> params = nn.unbox(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))['params'])
>>> hf_dir = export_hf(model, params, 'gpt', tempfile.mkdtemp())  # a GPT2LMHeadModel directory
>>> model2, params2, family, fields = load_hf(hf_dir)
>>> family, fields['num_layers'], fields['activation']
('gpt', 1, 'gelu_tanh')
>>> tokens = jnp.arange(8)[None]
>>> bool(np.allclose(model.apply({'params': params}, tokens), model2.apply({'params': params2}, tokens),
...                  atol=1e-5))
True

From the command line (zoo.convert.cli):

  python -m zoo.convert import --hf_dir=DIR --out=OUT      # HF directory -> zoo model directory
  python -m zoo.convert export --params=OUT --out=HF_DIR   # zoo model directory -> HF directory
  python -m zoo.convert export --workdir=WORKDIR --out=HF_DIR [--step=N]   # a train.py run -> HF

`import` writes a zoo model directory (zoo.convert.format: zoo_model.json, params.safetensors, hf_config.json,
hf_tokenizer/), which `load_zoo`, `load_zoo_tokenizer` and `zoo.load(dir)` read (`zoo.generate` then stops at the
tokenizer's eos and starts T5's decoder at its decoder_start_token_id).

The modules: io (safetensors, torch .bin, HF config and weights, JSON), bert / albert / gpt / t5 / bart (each
family's config mapping, weight names and tying rules, as a `Converter`), registry (the families; HF config <->
zoo fields), weights (HF tensors <-> zoo params), format (the zoo model directory), hf (load_hf, import_hf,
export_hf), cli (the command line).
"""
from zoo.convert.cli import load_workdir, main
from zoo.convert.common import ConversionError, Converter, UnsafeCheckpointError, model_fields
from zoo.convert.format import (GENERATION_CONFIG, HF_CONFIG_COPY, HF_TOKENIZER_DIR, PARAMS_FILE, TOKENIZER_FILES,
                                ZOO_CONFIG, generation_config_copy, load_zoo, load_zoo_tokenizer, save_zoo)
from zoo.convert.hf import export_hf, import_hf, load_hf, tokenizer_report
from zoo.convert.io import load_safetensors, load_torch_bin, read_hf_config, read_hf_weights
from zoo.convert.registry import (CONVERTERS, FAMILIES, SUPPORTED_ARCHITECTURES, detect_family,
                                  hf_config_to_fields, zoo_to_hf_config)
from zoo.convert.weights import hf_weights_to_params, params_to_hf_weights

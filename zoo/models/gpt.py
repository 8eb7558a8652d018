"""GPT (Radford et al. 2019): a pre-LN causal decoder with learned positions and tied embeddings.

>>> import jax, jax.numpy as jnp
>>> model = Gpt(**SIZES['tiny'])
>>> tokens = jnp.ones((2, 8), jnp.int32)
>>> model.apply(model.init(jax.random.key(0), tokens), tokens).shape
(2, 8, 512)

Incremental decoding: `init` with decode=True on a [B, max_len] input allocates the KV cache; then each
`apply(..., decode=True, mutable=['cache'])` on the next token(s) returns their logits.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from zoo.layers import adapters as adapters_lib
from zoo.layers import attention, common, position, transformer

SIZES = {
    'tiny': dict(vocab_size=512, max_len=128, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=256),
    'small': dict(num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072),  # 124M
    'medium': dict(num_layers=24, embed_dim=1024, num_heads=16, mlp_dim=4096),  # 355M
    'large': dict(num_layers=36, embed_dim=1280, num_heads=20, mlp_dim=5120),  # 774M
    'xl': dict(num_layers=48, embed_dim=1600, num_heads=25, mlp_dim=6400),  # 1.5B
}
# HF GPT2LMHeadModel (vocab 50,257, 1,024 positions, tied embeddings).
PUBLISHED_PARAMS = {'small': 124_439_808, 'medium': 354_823_168, 'large': 774_030_080,
                    'xl': 1_557_611_200}


class Gpt(nn.Module):
  """Causal decoder. Call: (tokens [B, T], segment_ids [B, T] (packed documents; None = one sequence),
  positions [B, T], deterministic, decode, logits) -> logits [B, T, V] float32 (logits=False: the
  `zoo.layers.losses.Features` a chunked loss takes)."""
  vocab_size: int = 50257
  max_len: int = 1024
  num_layers: int = 12
  embed_dim: int = 768
  num_heads: int = 12
  mlp_dim: int = 3072
  activation: str = 'gelu_tanh'
  position: str = 'learned'  # or 'rotary'
  norm: str = 'layernorm'
  norm_eps: float = 1e-5
  dropout_rate: float = 0.1
  tie_embeddings: bool = True
  dtype: common.Dtype = jnp.float32
  scan_layers: bool = False
  remat: bool | str = 'none'  # none, full, or a jax.checkpoint_policies name (zoo.layers.transformer)
  attention: str = 'auto'  # auto, xla, cudnn, splash, pallas (zoo.layers.kernels)
  adapters: adapters_lib.Adapters | None = None  # LoRA / prefix tuning (zoo.layers.adapters)

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, deterministic: bool = True,
               decode: bool = False, logits: bool = True):
    b, t = tokens.shape
    mask = None  # decode: causal over the cache slots
    if decode:
      q_pos, _ = attention.decode_positions(self, t)
      positions = jnp.broadcast_to(q_pos, (b, t)) if positions is None else positions
    else:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
      mask = attention.Mask(segment_ids, segment_ids, causal=True)
    token_embed = common.embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name='token_embed')
    x = token_embed(tokens)
    if self.position == 'learned':
      x = x + position.LearnedPositions(self.max_len, self.embed_dim, self.dtype, name='position_embed')(
          positions)
    elif self.position != 'rotary':
      raise ValueError(f"model.position must be 'learned' or 'rotary', got {self.position!r}")
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    block = functools.partial(
        transformer.TransformerBlock, num_heads=self.num_heads,
        head_dim=common.head_dim(self.embed_dim, self.num_heads), mlp_dim=self.mlp_dim,
        activation=self.activation, norm=self.norm, norm_eps=self.norm_eps, pre_ln=True,
        dropout_rate=self.dropout_rate, rotary=self.position == 'rotary', dtype=self.dtype, adapters=self.adapters,
        attention=self.attention, residual_init_scale=(2 * self.num_layers) ** -0.5)  # GPT-2 (2.3)
    x = transformer.stack_layers(block, self.num_layers, x, mask, None, positions, None, None, deterministic,
                                 decode, scan=self.scan_layers, remat=self.remat)
    x = common.norm(self.norm, eps=self.norm_eps, dtype=self.dtype, name='final_norm')(x)
    if self.tie_embeddings:
      return common.attend(token_embed, x, self.dtype, logits)
    return common.OutputHead(self.vocab_size, ('embed', 'vocab'), use_bias=False, dtype=self.dtype,
                             name='lm_head')(x, logits)

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    return dict(tokens=jnp.ones((batch_size, length), jnp.int32))


Model = Gpt

"""GLM (Du et al. 2022): autoregressive blank infilling with a decoder that takes 2-D positions.

The input is part A (the text with spans replaced by [MASK]) followed by part B (the spans, each opened by a
start token). Every token carries two positions: its position in the corrupted text (a token of a span takes
the position of its [MASK]) and its position inside its span (0 in part A). Part A attends bidirectionally
within A; part B attends to all of A and causally within B. A packed row (segment_ids: the documents) holds
every document's part A, then every document's part B; each document sees only its own tokens
(`training_mask`), so it is trained as if it were alone.

>>> import jax, jax.numpy as jnp
>>> model = Glm(**SIZES['tiny'])
>>> tokens = jnp.ones((1, 8), jnp.int32); ctx = jnp.array([5])
>>> v = model.init(jax.random.key(0), tokens, context_length=ctx)
>>> model.apply(v, tokens, context_length=ctx).shape
(1, 8, 512)
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from zoo.layers import adapters as adapters_lib
from zoo.layers import attention, common, transformer

SIZES = {
    'tiny': dict(vocab_size=512, max_len=128, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=256),
    'base': dict(num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072),  # 110M
    'large': dict(num_layers=24, embed_dim=1024, num_heads=16, mlp_dim=4096),  # 335M
}
PUBLISHED_PARAMS = {'base': 110_000_000, 'large': 335_000_000}  # the GLM paper's rounded figures


def glm_mask(context_length, q_positions, k_positions, part_b=None):
  """[B, 1, T, S]: a key is visible if it lies in part A (index < context_length) or, at or after part_b [B]
  (default: context_length), at or before the query.

  context_length [B]; q_positions [T] and k_positions [S] are sequence indices (cache slots when decoding). A
  part_b past context_length hides the slots between them: the padding of a context padded to a length bucket.
  """
  part_b = context_length if part_b is None else part_b
  in_a = k_positions[None, :] < context_length[:, None]  # [B, S]
  k = k_positions[None, None, :]
  causal = (k <= q_positions[None, :, None]) & (k >= part_b[:, None, None])  # [B, T, S]
  return (in_a[:, None, :] | causal)[:, None]


def training_mask(segment_ids, context_length) -> attention.Mask:
  """The mask of a full forward pass: a query sees the keys of its own document (segment_ids [B, T], 0 = padding;
  None: one document) that lie in part A (index < context_length [B]) or at or before it. With the rows the
  objective builds (all the documents' parts A, then their spans) a document's part A sees its own part A, and
  its spans see its own part A and its own spans causally."""
  return attention.Mask(segment_ids, segment_ids, prefix=context_length, causal=True)


class Glm(nn.Module):
  """Call: (tokens [B, T], positions [B, T] (in the corrupted text), block_positions [B, T] (inside the
  span, 0 in part A), context_length [B] (length of part A), segment_ids [B, T] (documents 1, 2, ...; 0 = padding),
  deterministic, decode, part_b [B] (decoding: the first cache slot of the spans; default context_length, see
  glm_mask)) -> logits [B, T, V] float32."""
  vocab_size: int = 30592
  max_len: int = 512
  num_layers: int = 12
  embed_dim: int = 768
  num_heads: int = 12
  mlp_dim: int = 3072
  activation: str = 'gelu'
  norm_eps: float = 1e-5
  dropout_rate: float = 0.1
  dtype: common.Dtype = jnp.float32
  scan_layers: bool = False
  remat: bool | str = 'none'  # none, full, or a jax.checkpoint_policies name (zoo.layers.transformer)
  attention: str = 'auto'  # auto, xla, cudnn, splash, pallas (zoo.layers.kernels)
  adapters: adapters_lib.Adapters | None = None  # LoRA / prefix tuning (zoo.layers.adapters)

  @nn.compact
  def __call__(self, tokens, positions=None, block_positions=None, context_length=None, segment_ids=None,
               deterministic: bool = True, decode: bool = False, logits: bool = True, part_b=None):
    b, t = tokens.shape
    if context_length is None:
      context_length = jnp.zeros((b,), jnp.int32)  # all of it causal: a plain LM
    if decode:
      q_idx, k_idx = attention.decode_positions(self, t)
      mask = glm_mask(context_length, q_idx, k_idx, part_b)
    else:  # packed rows (segment_ids): each document sees only itself
      q_idx = jnp.arange(t)
      mask = training_mask(segment_ids, context_length)
    positions = jnp.broadcast_to(q_idx, (b, t)) if positions is None else positions
    block_positions = jnp.zeros_like(tokens) if block_positions is None else block_positions

    token_embed = common.embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name='token_embed')
    x = (token_embed(tokens)
         + common.embed(self.max_len, self.embed_dim, ('positions', 'embed'), dtype=self.dtype,
                        name='position_embed')(positions)
         + common.embed(self.max_len, self.embed_dim, ('positions', 'embed'), dtype=self.dtype,
                        name='block_position_embed')(block_positions))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    block = functools.partial(
        transformer.TransformerBlock, num_heads=self.num_heads,
        head_dim=common.head_dim(self.embed_dim, self.num_heads), mlp_dim=self.mlp_dim,
        activation=self.activation, norm='layernorm', norm_eps=self.norm_eps, pre_ln=True,
        dropout_rate=self.dropout_rate, dtype=self.dtype, adapters=self.adapters, attention=self.attention,
        residual_init_scale=(2 * self.num_layers) ** -0.5)  # Megatron's, which GLM's code builds on: 0.02 / sqrt(2 L)
    x = transformer.stack_layers(block, self.num_layers, x, mask, None, None, None, None, deterministic, decode,
                                 scan=self.scan_layers, remat=self.remat)
    x = common.norm('layernorm', eps=self.norm_eps, dtype=self.dtype, name='final_norm')(x)
    return common.attend(token_embed, x, self.dtype, logits)

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    return dict(tokens=jnp.ones((batch_size, length), jnp.int32),
                context_length=jnp.full((batch_size,), length // 2, jnp.int32))


Model = Glm

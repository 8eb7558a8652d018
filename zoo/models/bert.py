"""BERT (Devlin et al. 2018): token + segment (token type) + learned position embeddings, a post-LN
encoder, a tanh pooler over [CLS], an MLM head tied to the input embeddings and an NSP head; with sbo=True also
SpanBERT's span boundary head (Joshi et al. 2020), scored by the same tied output projection.

ALBERT (albert.py) is this module with a factorized embedding (embedding_dim < embed_dim) and one set of
layer parameters shared across depth.

>>> import jax, jax.numpy as jnp
>>> model = Bert(**SIZES['tiny'])
>>> tokens = jnp.ones((2, 8), jnp.int32)
>>> out = model.apply(model.init(jax.random.key(0), tokens), tokens)
>>> out['mlm_logits'].shape, out['nsp_logits'].shape
((2, 8, 512), (2, 2))
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from zoo.layers import adapters as adapters_lib
from zoo.layers import attention, common, transformer

# Published sizes (BERT paper, Turc et al. 2019 for the small ones); `tiny` is for tests.
SIZES = {
    'tiny': dict(vocab_size=512, max_len=128, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=128),
    'mini': dict(num_layers=4, embed_dim=256, num_heads=4, mlp_dim=1024),
    'small': dict(num_layers=4, embed_dim=512, num_heads=8, mlp_dim=2048),
    'medium': dict(num_layers=8, embed_dim=512, num_heads=8, mlp_dim=2048),
    'base': dict(num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072),  # 110M
    'large': dict(num_layers=24, embed_dim=1024, num_heads=16, mlp_dim=4096),  # 335M
}
# transformers' BertForPreTraining built from the same config (vocab 30,522); the paper rounds to 110M / 340M.
PUBLISHED_PARAMS = {'base': 110_106_428, 'large': 336_226_108}
# RoBERTa (Liu et al. 2019): BERT's encoder, one token type, positions counted from pad_id + 1 (as its checkpoints
# store them), LayerNorm eps 1e-5, a byte-level BPE vocabulary of 50,265; trained with dynamic MLM and no NSP.
_ROBERTA = dict(type_vocab_size=1, pad_id=1, position_offset=2, norm_eps=1e-5)
ROBERTA_SIZES = {'tiny': dict(SIZES['tiny'], **_ROBERTA),
                 'base': dict(SIZES['base'], vocab_size=50265, **_ROBERTA),
                 'large': dict(SIZES['large'], vocab_size=50265, **_ROBERTA)}


class SpanBoundaryHead(nn.Module):
  """SpanBERT's span boundary objective head (Joshi et al. 2020, section 3.2): for a token x_i of a masked span
  x_s..x_e, from the encoder outputs of the boundary tokens x_{s-1}, x_{e+1} and a learned relative position
  embedding p_{i-s+1} (row i - s of `position_embed`):
    h0 = [x_{s-1}; x_{e+1}; p_{i-s+1}],  h1 = LayerNorm(act(W1 h0 + b1)),  y_i = LayerNorm(act(W2 h1 + b2))
  with act = GeLU (the model's activation). Bert scores y_i with the MLM head's output projection.

  Call: (x [B, T, H], left [B, P], right [B, P], offsets [B, P] (i - s: 0 for a span's first token)) ->
  y [B, P, out_dim] (out_dim: the token embedding width, for the tied projection).
  """
  max_span: int  # rows of the position table: every offset is below it
  out_dim: int
  out_axis: str = 'mlp'  # logical name of W2's output axis ('embed_factor' under a factorized embedding)
  activation: str = 'gelu'
  norm_eps: float = 1e-12
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, left, right, offsets):
    h = x.shape[-1]
    gather = lambda idx: jnp.take_along_axis(x, idx[..., None].astype(jnp.int32), axis=1)  # noqa: E731
    pos = common.embed(self.max_span, h, ('positions', 'embed'), dtype=self.dtype, name='position_embed')(offsets)
    y = jnp.concatenate([gather(left), gather(right), pos.astype(x.dtype)], axis=-1)
    act = common.activation_fn(self.activation)[0]
    y = common.dense(h, ('embed', 'mlp'), dtype=self.dtype, name='transform_1')(y)
    y = common.norm('layernorm', eps=self.norm_eps, dtype=self.dtype, name='norm_1')(act(y))
    y = common.dense(self.out_dim, ('embed', self.out_axis), dtype=self.dtype, name='transform_2')(y)
    return common.norm('layernorm', eps=self.norm_eps, dtype=self.dtype, name='norm_2')(act(y))


class Bert(nn.Module):
  """BERT encoder with MLM and NSP heads (and SpanBERT's span boundary head when sbo).

  Call: (tokens [B, T], token_types [B, T] (A=0/B=1), segment_ids [B, T] (packed documents 1..n, 0 =
  padding; default tokens != pad_id), positions [B, T], mlm_positions [B, P] (score only these
  positions), sbo_left, sbo_right, sbo_offsets [B, P'] (sbo: each prediction's boundary tokens and offset in its
  span, zoo.objectives.sbo; default every position as a one-token span), deterministic) -> dict(hidden [B, T, H],
  pooled [B, H], mlm_logits [B, T or P, V] float32, nsp_logits [B, 2] float32, sbo_logits [B, T or P', V] float32
  when sbo).
  """
  vocab_size: int = 30522
  type_vocab_size: int = 2
  max_len: int = 512  # learned positions
  num_layers: int = 12
  embed_dim: int = 768  # hidden width H
  embedding_dim: int | None = None  # E; < embed_dim factorizes the embedding (ALBERT)
  num_heads: int = 12
  mlp_dim: int = 3072
  activation: str = 'gelu'
  share_layers: bool = False  # ALBERT: one set of layer parameters for every layer
  dropout_rate: float = 0.1
  norm_eps: float = 1e-12
  pad_id: int = 0
  position_offset: int = 0  # RoBERTa: position p reads row p + offset of the position table (offset = pad_id + 1)
  dtype: common.Dtype = jnp.float32
  scan_layers: bool = False
  remat: bool | str = 'none'  # none, full, or a jax.checkpoint_policies name (zoo.layers.transformer)
  attention: str = 'auto'  # auto, xla, cudnn, splash, pallas (zoo.layers.kernels)
  adapters: adapters_lib.Adapters | None = None  # LoRA / prefix tuning (zoo.layers.adapters)
  head: str = 'pretraining'  # pretraining (MLM + NSP/SOP), encoder (hidden only), or classification, span, tagging
  num_labels: int = 2  # classes of the classification / tagging head
  pooling: str = 'cls'  # classification input: 'cls' (the pooled [CLS], as BERT) or 'mean' (of the tokens)
  sbo: bool = False  # SpanBERT's span boundary head (set by objective.sbo); its position table has max_len rows

  @nn.compact
  def __call__(self, tokens, token_types=None, segment_ids=None, positions=None, mlm_positions=None,
               sbo_left=None, sbo_right=None, sbo_offsets=None, deterministic: bool = True):
    b, t = tokens.shape
    e = self.embedding_dim or self.embed_dim
    factored = e != self.embed_dim
    e_axis = 'embed_factor' if factored else 'embed'
    if segment_ids is None:
      segment_ids = (tokens != self.pad_id).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
    token_types = jnp.zeros_like(tokens) if token_types is None else token_types

    token_embed = common.embed(self.vocab_size, e, ('vocab', e_axis), dtype=self.dtype, name='token_embed')
    x = (token_embed(tokens)
         + common.embed(self.max_len + self.position_offset, e, ('positions', e_axis), dtype=self.dtype,
                        name='position_embed')(positions + self.position_offset)
         + common.embed(self.type_vocab_size, e, ('types', e_axis), dtype=self.dtype, name='type_embed')(
             token_types))
    x = common.norm('layernorm', eps=self.norm_eps, dtype=self.dtype, name='embed_norm')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    if factored:
      x = common.dense(self.embed_dim, ('embed_factor', 'embed'), dtype=self.dtype, name='embed_project')(x)

    block = functools.partial(
        transformer.TransformerBlock, num_heads=self.num_heads,
        head_dim=common.head_dim(self.embed_dim, self.num_heads), mlp_dim=self.mlp_dim,
        activation=self.activation, norm='layernorm', norm_eps=self.norm_eps, pre_ln=False,
        dropout_rate=self.dropout_rate, dtype=self.dtype, adapters=self.adapters, attention=self.attention)
    mask = attention.Mask(segment_ids, segment_ids)
    x = transformer.stack_layers(block, self.num_layers, x, mask, None, None, None, None, deterministic, False,
                                 scan=self.scan_layers, remat=self.remat, shared=self.share_layers)
    if self.head == 'encoder':  # the body alone, no pooler or head (ELECTRA's generator and discriminator)
      return dict(hidden=x)

    pooled = jnp.tanh(common.dense(self.embed_dim, ('embed', 'mlp'), dtype=self.dtype, name='pooler')(x[:, 0]))
    if self.head != 'pretraining':
      if self.pooling == 'mean':
        valid = (segment_ids > 0)[..., None]
        pooled = (x * valid).sum(1) / jnp.maximum(valid.sum(1), 1)
      elif self.pooling != 'cls':
        raise ValueError(f"model.pooling={self.pooling!r}: use 'cls' or 'mean'")
      return dict(hidden=x, pooled=pooled, logits=self._task_head(x, pooled, deterministic))
    h = x if mlm_positions is None else jnp.take_along_axis(x, mlm_positions[..., None], axis=1)
    h = common.dense(e, ('embed', 'mlp' if not factored else 'embed_factor'), dtype=self.dtype,
                     name='mlm_transform')(h)
    h = common.activation_fn(self.activation)[0](h)
    h = common.norm('layernorm', eps=self.norm_eps, dtype=self.dtype, name='mlm_norm')(h)
    mlm_bias = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                          (self.vocab_size,), jnp.float32)
    mlm_logits = common.attend(token_embed, h, self.dtype) + mlm_bias
    nsp_logits = common.dense(2, ('embed', 'classes'), dtype=self.dtype, name='nsp')(pooled)
    out = dict(hidden=x, pooled=pooled, mlm_logits=mlm_logits, nsp_logits=nsp_logits.astype(jnp.float32))
    if not self.sbo:
      if sbo_left is not None:
        raise ValueError('sbo_left given to a model without the span boundary head: set model field sbo=True '
                         '(objective.sbo does)')
      return out
    if sbo_left is None:  # no spans (init from example_batch): every position as a one-token span
      i = jnp.broadcast_to(jnp.arange(t), (b, t))
      sbo_left, sbo_right, sbo_offsets = jnp.maximum(i - 1, 0), jnp.minimum(i + 1, t - 1), jnp.zeros_like(i)
    # max_len rows: a span lies in one row of at most max_len tokens, so no offset overflows, however long its words
    y = SpanBoundaryHead(self.max_len, e, 'mlp' if not factored else 'embed_factor', self.activation, self.norm_eps,
                         self.dtype, name='sbo')(x, sbo_left, sbo_right, sbo_offsets)
    out['sbo_logits'] = common.attend(token_embed, y, self.dtype) + mlm_bias
    return out

  def _task_head(self, x, pooled, deterministic):
    """classification: [B, num_labels] from the pooled [CLS]; span: [B, T, 2] start and end logits;
    tagging: [B, T, num_labels]. float32."""
    if self.head == 'classification':
      h, features, name = pooled, self.num_labels, 'classifier'
    elif self.head == 'span':
      h, features, name = x, 2, 'qa_outputs'
    elif self.head == 'tagging':
      h, features, name = x, self.num_labels, 'tagger'
    else:
      raise ValueError(f"model.head={self.head!r}: use 'pretraining', 'classification', 'span' or 'tagging'")
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return common.dense(features, ('embed', 'classes'), dtype=self.dtype, name=name)(h).astype(jnp.float32)

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    """Arguments for `init` (all zeros-shaped; no data needed)."""
    return dict(tokens=jnp.ones((batch_size, length), jnp.int32))


Model = Bert

"""Encoder-decoder transformers: T5 (Raffel et al. 2020: relative position bias, RMSNorm, pre-LN, no biases,
unscaled attention, tied embeddings), BART (Lewis et al. 2020: learned positions, post-LN, GELU) and the
Transformer (Vaswani et al. 2017: sinusoidal positions, embeddings scaled by sqrt(d_model), post-LN, ReLU).

>>> import jax, jax.numpy as jnp
>>> model = EncoderDecoder(**T5_SIZES['tiny'])
>>> src = jnp.ones((2, 8), jnp.int32); tgt = jnp.ones((2, 5), jnp.int32)
>>> model.apply(model.init(jax.random.key(0), src, tgt), src, tgt).shape
(2, 5, 512)

`encode` and `decode` are separate methods (`model.apply(v, src, method='encode')`) so generation encodes
once and then steps the decoder with its KV cache (decode=True).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from zoo.layers import adapters as adapters_lib
from zoo.layers import attention, common, position, transformer

T5_SIZES = {
    'tiny': dict(vocab_size=512, num_encoder_layers=2, num_decoder_layers=2, embed_dim=64, num_heads=4,
                 head_dim=16, mlp_dim=128),
    'small': dict(num_encoder_layers=6, num_decoder_layers=6, embed_dim=512, num_heads=8, head_dim=64,
                  mlp_dim=2048),  # 60M
    'base': dict(num_encoder_layers=12, num_decoder_layers=12, embed_dim=768, num_heads=12, head_dim=64,
                 mlp_dim=3072),  # 220M
    'large': dict(num_encoder_layers=24, num_decoder_layers=24, embed_dim=1024, num_heads=16, head_dim=64,
                  mlp_dim=4096),  # 770M
}
T5_PUBLISHED_PARAMS = {'small': 60_506_624, 'base': 222_903_552, 'large': 737_668_096}  # HF, vocab 32,128

_BART = dict(vocab_size=50265, max_len=1024, position='learned', activation='gelu', norm='layernorm',
             norm_eps=1e-5, pre_ln=False, use_bias=True, attention_scale=None, embedding_norm=True,
             scale_tied_logits=False, mesh_tf_init=False)
BART_SIZES = {
    'tiny': dict(_BART, vocab_size=512, max_len=128, num_encoder_layers=2, num_decoder_layers=2,
                 embed_dim=64, num_heads=4, head_dim=16, mlp_dim=128),
    'base': dict(_BART, num_encoder_layers=6, num_decoder_layers=6, embed_dim=768, num_heads=12,
                 head_dim=64, mlp_dim=3072),  # 140M
    'large': dict(_BART, num_encoder_layers=12, num_decoder_layers=12, embed_dim=1024, num_heads=16,
                  head_dim=64, mlp_dim=4096),  # 400M
}
# HF BartModel with 1,026 learned positions (zoo keeps 1,024: 3,072 fewer).
BART_PUBLISHED_PARAMS = {'base': 139_420_416, 'large': 406_291_456}

# "Attention Is All You Need": sinusoidal positions added to the token embeddings times sqrt(d_model), post-LN with
# no final norm, ReLU MLP with biases, attention scaled by 1/sqrt(d_k), one table shared by source, target and
# output (unscaled logits), dropout 0.1. LayerNorm eps 1e-6: tensor2tensor's, the paper's code (fairseq: 1e-5).
_TRANSFORMER = dict(vocab_size=37000, position='sinusoidal', embed_scale=True, activation='relu', norm='layernorm',
                    norm_eps=1e-6, pre_ln=False, use_bias=True, attention_scale=None, embedding_norm=False,
                    tie_embeddings=True, scale_tied_logits=False, mesh_tf_init=False, dropout_rate=0.1)
TRANSFORMER_SIZES = {
    'tiny': dict(_TRANSFORMER, vocab_size=512, num_encoder_layers=2, num_decoder_layers=2, embed_dim=64,
                 num_heads=4, head_dim=16, mlp_dim=128),
    'base': dict(_TRANSFORMER, num_encoder_layers=6, num_decoder_layers=6, embed_dim=512, num_heads=8,
                 head_dim=64, mlp_dim=2048),  # 63.1M
    'big': dict(_TRANSFORMER, num_encoder_layers=6, num_decoder_layers=6, embed_dim=1024, num_heads=16,
                head_dim=64, mlp_dim=4096),  # 214M
}
# Table 3 of the paper, rounded to millions, with a 37,000-token shared vocabulary (WMT EN-DE byte-pair).
TRANSFORMER_PUBLISHED_PARAMS = {'base': 65_000_000, 'big': 213_000_000}


def _mesh_tf_init(d_model: int, d_ff: int, heads: int, d_kv: int, on: bool) -> dict:
  """T5's initialisation (Mesh TensorFlow; transformers' T5PreTrainedModel._init_weights), as TransformerBlock
  fields: MLP wi (wi_0, wi_1) ~ N(0, d_model^-0.5), wo ~ N(0, d_ff^-0.5); attention q ~ N(0, (d_model d_kv)^-0.5),
  k and v ~ N(0, d_model^-0.5), o ~ N(0, (heads d_kv)^-0.5). {} (zoo's normal(0.02)) when off."""
  if not on:
    return {}
  n = nn.initializers.normal
  return dict(mlp_wi_init=n(d_model ** -0.5), mlp_wo_init=n(d_ff ** -0.5),
              attention_inits=(n((d_model * d_kv) ** -0.5), n(d_model ** -0.5), n((heads * d_kv) ** -0.5)))


class _Stack(nn.Module):
  """The encoder (causal=False) or decoder (causal=True, with cross-attention) of `EncoderDecoder`."""
  causal: bool
  token_embed: nn.Module
  num_layers: int
  embed_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  activation: str
  norm: str
  norm_eps: float
  pre_ln: bool
  use_bias: bool
  position: str
  max_len: int
  relative_buckets: int
  relative_max_distance: int
  attention_scale: float | None
  embedding_norm: bool
  embed_scale: bool
  mesh_tf_init: bool
  dropout_rate: float
  dtype: common.Dtype
  scan_layers: bool
  remat: bool | str
  attention: str
  adapters: adapters_lib.Adapters | None

  @nn.compact
  def __call__(self, tokens, segment_ids, positions, encoded, encoder_segment_ids, deterministic, decode):
    b, t = tokens.shape
    packed = segment_ids is not None and not decode
    if decode:
      q_idx, k_idx = attention.decode_positions(self, t)
      positions = jnp.broadcast_to(q_idx, (b, t))
      k_positions, mask = k_idx, None  # causal over the cache slots
    else:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
      k_positions = positions
      if segment_ids is None:
        segment_ids = (tokens != 0).astype(jnp.int32) if not self.causal else jnp.ones_like(tokens)
      mask = attention.Mask(segment_ids, segment_ids, causal=self.causal)
    x = self.token_embed(tokens)
    if self.embed_scale:
      x = x * jnp.asarray(self.embed_dim ** 0.5, x.dtype)
    bias = None
    if self.position == 'sinusoidal':
      x = x + position.sinusoidal(positions, self.embed_dim).astype(x.dtype)
    elif self.position == 'learned':
      x = x + position.LearnedPositions(self.max_len, self.embed_dim, self.dtype, name='position_embed')(
          positions)
    elif self.position == 'relative':
      bias = position.RelativePositionBias(self.num_heads, self.relative_buckets, self.relative_max_distance,
                                           bidirectional=not self.causal, name='relative_bias',
                                           **({'table_init': nn.initializers.normal(self.embed_dim ** -0.5)}
                                              if self.mesh_tf_init else {}))(
                                               positions, k_positions)
    else:
      raise ValueError(f"model.position must be 'relative', 'learned' or 'sinusoidal', got {self.position!r}")
    if self.embedding_norm:
      x = common.norm(self.norm, eps=self.norm_eps, dtype=self.dtype, name='embed_norm')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

    cross_mask = None
    if self.causal:
      if packed:  # each target segment sees its own source segment (padding: segment 0 sees nothing)
        cross_mask = attention.Mask(segment_ids, encoder_segment_ids)
      else:
        cross_mask = attention.Mask(None, encoder_segment_ids)
    block = functools.partial(
        transformer.TransformerBlock, num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
        activation=self.activation, norm=self.norm, norm_eps=self.norm_eps, pre_ln=self.pre_ln,
        use_bias=self.use_bias, cross_attention=self.causal, dropout_rate=self.dropout_rate,
        attention_scale=self.attention_scale, dtype=self.dtype, adapters=self.adapters, attention=self.attention,
        **_mesh_tf_init(self.embed_dim, self.mlp_dim, self.num_heads, self.head_dim, self.mesh_tf_init))
    x = transformer.stack_layers(block, self.num_layers, x, mask, bias, None, encoded, cross_mask,
                                 deterministic, decode, scan=self.scan_layers, remat=self.remat)
    if not self.pre_ln:  # post-LN (BART, the Transformer): the last layer's norm is the output, as in theirs
      return x
    x = common.norm(self.norm, eps=self.norm_eps, dtype=self.dtype, name='final_norm')(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)  # T5 drops after its final RMSNorm


class EncoderDecoder(nn.Module):
  """Call: (tokens [B, S], decoder_tokens [B, T] (targets shifted right), segment_ids [B, S] (default
  tokens != pad_id), decoder_segment_ids [B, T], positions, decoder_positions, deterministic) -> logits
  [B, T, V] float32. Defaults are T5.1.0's; `BART_SIZES` and `TRANSFORMER_SIZES` switch every field BART and
  the Transformer need."""
  vocab_size: int = 32128
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  embed_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  activation: str = 'relu'  # 'geglu' for T5.1.1
  norm: str = 'rmsnorm'
  norm_eps: float = 1e-6
  pre_ln: bool = True
  use_bias: bool = False
  position: str = 'relative'  # or 'learned', or 'sinusoidal' (Vaswani et al.: a fixed table, no parameters)
  max_len: int = 1024  # learned positions only
  relative_buckets: int = 32
  relative_max_distance: int = 128
  attention_scale: float | None = 1.0  # T5 folds 1/sqrt(d) into the initialisation
  embedding_norm: bool = False  # BART's layernorm_embedding
  # The Transformer's token embeddings times sqrt(embed_dim), in both stacks. The table keeps zoo's normal(0.02),
  # not tensor2tensor's N(0, d^-0.5): with tied, unscaled logits that would start ~0.5 nats above chance.
  embed_scale: bool = False
  # T5's initialisation (Mesh TF, `_mesh_tf_init`): MLP wi N(0, d_model^-0.5), wo N(0, d_ff^-0.5); attention
  # q N(0, (d_model d_kv)^-0.5), k/v N(0, d_model^-0.5), o N(0, (heads d_kv)^-0.5); relative bias
  # N(0, d_model^-0.5); the token embeddings Mesh TF's N(0, 1), whose tied head (d^-0.5 scaling) gives logits of
  # std 1 at the start: training starts about half a nat above ln V, as T5's did.
  mesh_tf_init: bool = True
  tie_embeddings: bool = True
  scale_tied_logits: bool = True  # T5: logits = (x * d^-0.5) E^T
  dropout_rate: float = 0.1
  dtype: common.Dtype = jnp.float32
  scan_layers: bool = False
  remat: bool | str = 'none'  # none, full, or a jax.checkpoint_policies name (zoo.layers.transformer)
  attention: str = 'auto'  # auto, xla, cudnn, splash, pallas (zoo.layers.kernels)
  adapters: adapters_lib.Adapters | None = None  # LoRA / prefix tuning (zoo.layers.adapters)
  pad_id: int = 0  # the source's padding id: 0 in zoo's vocabularies, 1 in a BART imported from HuggingFace

  def setup(self):
    init = nn.initializers.normal(1.0) if self.mesh_tf_init else common.default_embed_init
    self.token_embed = common.embed(self.vocab_size, self.embed_dim, dtype=self.dtype, init=init)
    stack = functools.partial(
        _Stack, token_embed=self.token_embed, embed_dim=self.embed_dim, num_heads=self.num_heads,
        head_dim=self.head_dim, mlp_dim=self.mlp_dim, activation=self.activation, norm=self.norm,
        norm_eps=self.norm_eps, pre_ln=self.pre_ln, use_bias=self.use_bias, position=self.position,
        max_len=self.max_len, relative_buckets=self.relative_buckets,
        relative_max_distance=self.relative_max_distance, attention_scale=self.attention_scale,
        embedding_norm=self.embedding_norm, embed_scale=self.embed_scale, mesh_tf_init=self.mesh_tf_init,
        dropout_rate=self.dropout_rate, dtype=self.dtype, scan_layers=self.scan_layers, remat=self.remat,
        adapters=self.adapters, attention=self.attention)
    self.encoder = stack(causal=False, num_layers=self.num_encoder_layers)
    self.decoder = stack(causal=True, num_layers=self.num_decoder_layers)
    if not self.tie_embeddings:
      self.lm_head = common.OutputHead(self.vocab_size, ('embed', 'vocab'), use_bias=False, dtype=self.dtype)

  def encode(self, tokens, segment_ids=None, positions=None, deterministic: bool = True):
    """tokens [B, S] -> encoded [B, S, D] (segment_ids default: tokens != pad_id)."""
    if segment_ids is None:
      segment_ids = (tokens != self.pad_id).astype(jnp.int32)
    return self.encoder(tokens, segment_ids, positions, None, None, deterministic, False)

  def decode(self, decoder_tokens, encoded, encoder_segment_ids, decoder_segment_ids=None,
             decoder_positions=None, deterministic: bool = True, decode: bool = False, logits: bool = True):
    """decoder_tokens [B, T], encoded [B, S, D], encoder_segment_ids [B, S] -> logits [B, T, V] float32."""
    x = self.decoder(decoder_tokens, decoder_segment_ids, decoder_positions, encoded, encoder_segment_ids,
                     deterministic, decode)
    if not self.tie_embeddings:
      return self.lm_head(x, logits)
    if self.scale_tied_logits:
      x = x * self.embed_dim ** -0.5
    return common.attend(self.token_embed, x, self.dtype, logits)

  def __call__(self, tokens, decoder_tokens, segment_ids=None, decoder_segment_ids=None, positions=None,
               decoder_positions=None, deterministic: bool = True, decode: bool = False, logits: bool = True):
    if segment_ids is None:
      segment_ids = (tokens != self.pad_id).astype(jnp.int32)
    encoded = self.encode(tokens, segment_ids, positions, deterministic)
    return self.decode(decoder_tokens, encoded, segment_ids, decoder_segment_ids, decoder_positions,
                       deterministic, decode, logits)

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    return dict(tokens=jnp.ones((batch_size, length), jnp.int32),
                decoder_tokens=jnp.ones((batch_size, length), jnp.int32))


Model = EncoderDecoder

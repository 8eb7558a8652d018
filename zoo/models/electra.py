"""ELECTRA (Clark et al. 2020): a small MLM generator and a discriminator trained jointly on replaced-token
detection (RTD). Both are zoo's BERT encoder (zoo.models.bert.Bert, head='encoder'):

- the generator reads the MLM-masked row and predicts the masked tokens (BERT's MLM head, tied to the token
  embedding); a token is *sampled* from its softmax at each masked position (Gumbel-max: argmax(logits + g), g
  ~ Gumbel(0, 1), as ELECTRA's `sample_from_softmax`), without gradient;
- the samples replace the masked positions, and the discriminator labels every real token "replaced" (1) or
  "original" (0) with a 2-layer head (dense H + activation, dense 1: ELECTRA's `discriminator_predictions`). A
  sample equal to the original token counts as original (zoo.objectives.rtd).

The generator and the discriminator share the embeddings (token, position, token type and their LayerNorm: all of
ELECTRA's `electra/embeddings` scope): they are the discriminator's parameters, which the generator reads (flax
`map_variables`), so `params['generator']` holds none. Each projects the width-E embedding to its own width
(`embed_project`) when they differ. The generator's size follows ELECTRA's configure_pretraining.py: width 1/4
(small) or 1/3 (base) of the discriminator's, as many layers, 4 x width MLP, width / 64 heads.

The Gumbel noise comes from a uint32 seed per row (`sample_seeds`, drawn on the host by the objective with the
step's numpy generator): the step stays a pure function of its example, a resumed run samples the same tokens,
evaluation (deterministic) samples too, and the noise, [B, P, V], is made on the device, never sent.

head: 'pretraining' (generator and discriminator), 'discriminator' (the discriminator and its RTD head, what the
published parameter counts count: transformers' ElectraForPreTraining), or a fine-tuning head ('classification',
'span', 'tagging'): the discriminator alone, a Bert with that head, at the same parameter paths
(`params['discriminator']`), so fine-tuning from a pretraining workdir copies the discriminator's weights.

>>> import jax, jax.numpy as jnp
>>> model = Electra(**SIZES['tiny'])
>>> batch = model.example_batch(2, 8)
>>> out = model.apply(model.init(jax.random.key(0), **batch), **batch)
>>> out['mlm_logits'].shape, out['sampled'].shape, out['rtd_logits'].shape
((2, 2, 512), (2, 2), (2, 8))
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.layers import adapters as adapters_lib
from zoo.layers import common, losses
from zoo.models.bert import Bert

# Discriminator sizes (ELECTRA's Table 6 / configure_pretraining.py); generator: its width, heads and MLP.
SIZES = {
    'tiny': dict(vocab_size=512, max_len=128, num_layers=2, embed_dim=64, embedding_dim=64, num_heads=4, mlp_dim=128,
                 generator_embed_dim=16, generator_num_heads=1, generator_mlp_dim=64),
    'small': dict(num_layers=12, embed_dim=256, embedding_dim=128, num_heads=4, mlp_dim=1024,
                  generator_embed_dim=64, generator_num_heads=1, generator_mlp_dim=256),  # generator 1/4
    'base': dict(num_layers=12, embed_dim=768, embedding_dim=768, num_heads=12, mlp_dim=3072,
                 generator_embed_dim=256, generator_num_heads=4, generator_mlp_dim=1024),  # generator 1/3
}
# The discriminator alone with its RTD head (head='discriminator'): transformers' ElectraForPreTraining built from
# google/electra-{small,base}-discriminator's configs (vocab 30,522). The paper rounds them to 14M and 110M.
PUBLISHED_PARAMS = {'small': 13_549_057, 'base': 109_483_009}
SHARED = ('token_embed', 'position_embed', 'type_embed', 'embed_norm')  # the discriminator's, read by the generator
TASK_HEADS = ('classification', 'span', 'tagging')


def gumbel_sample(seeds, logits):
  """A draw from softmax(logits) per row of logits [B, ..., V] (Gumbel-max: argmax(logits + g)), row b's noise
  from the key of seeds[b] (uint32 [B])."""
  def row(seed, lg):
    return jnp.argmax(lg + jax.random.gumbel(jax.random.key(seed), lg.shape, jnp.float32), axis=-1)
  return jax.vmap(row)(seeds, logits)


class Electra(nn.Module):
  """ELECTRA's generator and discriminator (see the module docstring).

  Call: (tokens [B, T] (pretraining: the MLM-masked row), token_types, segment_ids, positions [B, T],
  mlm_positions [B, P], mlm_weights [B, P] (1: a masked position; 0: an empty slot), sample_seeds [B] uint32
  (pretraining), deterministic) -> pretraining: dict(mlm_logits [B, P, V] float32, sampled [B, P] int32 (the
  generator's samples), discriminator_tokens [B, T] (the discriminator's input), rtd_logits [B, T] float32 (> 0:
  replaced), hidden [B, T, H]); head='discriminator': dict(hidden, rtd_logits) of `tokens`; a task head: Bert's.
  """
  vocab_size: int = 30522
  type_vocab_size: int = 2
  max_len: int = 512
  num_layers: int = 12
  embed_dim: int = 256  # the discriminator's width H
  embedding_dim: int = 128  # E, shared by both (E < H: each projects)
  num_heads: int = 4
  mlp_dim: int = 1024
  generator_embed_dim: int = 64
  generator_num_heads: int = 1
  generator_mlp_dim: int = 256
  generator_num_layers: int = 0  # 0: num_layers (ELECTRA's generator_layers = 1.0)
  temperature: float = 1.0  # the generator samples from softmax(logits / temperature) (ELECTRA's temperature)
  activation: str = 'gelu'
  dropout_rate: float = 0.1
  norm_eps: float = 1e-12
  pad_id: int = 0
  dtype: common.Dtype = jnp.float32
  scan_layers: bool = False
  remat: bool | str = 'none'
  attention: str = 'auto'
  adapters: adapters_lib.Adapters | None = None  # LoRA / prefix tuning of the discriminator (fine-tuning)
  head: str = 'pretraining'  # pretraining, discriminator, or a task head: classification, span, tagging
  num_labels: int = 2
  pooling: str = 'cls'

  def _fields(self, generator: bool = False, head: str = 'encoder') -> dict:
    """The Bert fields of the discriminator (or the generator) with `head`."""
    fields = dict(vocab_size=self.vocab_size, type_vocab_size=self.type_vocab_size, max_len=self.max_len,
                  embedding_dim=self.embedding_dim, activation=self.activation, dropout_rate=self.dropout_rate,
                  norm_eps=self.norm_eps, pad_id=self.pad_id, dtype=self.dtype, scan_layers=self.scan_layers,
                  remat=self.remat, attention=self.attention, head=head, num_labels=self.num_labels,
                  pooling=self.pooling, share_layers=False)
    if generator:
      fields.update(num_layers=self.generator_num_layers or self.num_layers, embed_dim=self.generator_embed_dim,
                    num_heads=self.generator_num_heads, mlp_dim=self.generator_mlp_dim)
    else:
      fields.update(num_layers=self.num_layers, embed_dim=self.embed_dim, num_heads=self.num_heads,
                    mlp_dim=self.mlp_dim, adapters=self.adapters)
    return fields

  @nn.compact
  def __call__(self, tokens, token_types=None, segment_ids=None, positions=None, mlm_positions=None,
               mlm_weights=None, sample_seeds=None, deterministic: bool = True):
    kw = dict(token_types=token_types, segment_ids=segment_ids, positions=positions, deterministic=deterministic)
    if self.head in TASK_HEADS:
      return Bert(**self._fields(head=self.head), name='discriminator')(tokens, **kw)
    if self.head not in ('pretraining', 'discriminator'):
      raise ValueError(f"model.head={self.head!r}: use 'pretraining', 'discriminator', or a task head "
                       f"{TASK_HEADS}")
    disc = Bert(**self._fields(), name='discriminator')
    if self.head == 'discriminator':
      hidden = disc(tokens, **kw)['hidden']
      return dict(hidden=hidden, rtd_logits=self._rtd_head(hidden))
    if sample_seeds is None or mlm_positions is None or mlm_weights is None:
      raise ValueError("model.family='electra' pretrains with objective.name='rtd' (it needs mlm_positions, "
                       "mlm_weights and sample_seeds): use configs/electra.py")

    if self.is_initializing():  # the discriminator owns the shared embeddings: make them before the generator
      disc(tokens, **kw)
    shared = {k: self.variables['params']['discriminator'][k] for k in SHARED}
    init = self.is_initializing()
    generator_cls = nn.map_variables(  # the functions map {collection: variables}
        Bert, 'params', trans_in_fn=lambda v: {**v, 'params': {**v.get('params', {}), **shared}},
        trans_out_fn=lambda v: {**v, 'params': {k: x for k, x in v.get('params', {}).items() if k not in SHARED}},
        init=init, mutable=init)
    gen = generator_cls(**self._fields(generator=True), name='generator')
    g = gen(tokens, **kw)['hidden']
    mlm_logits = self._mlm_head(jnp.take_along_axis(g, mlm_positions[..., None], axis=1),
                                nn.unbox(shared['token_embed']['embedding']))

    sampled = gumbel_sample(sample_seeds, jax.lax.stop_gradient(mlm_logits) / self.temperature).astype(tokens.dtype)
    b, t = tokens.shape
    where = jnp.where(mlm_weights > 0, mlm_positions, t)  # empty slots point past the row: dropped
    disc_tokens = jnp.asarray(tokens).at[jnp.arange(b)[:, None], where].set(sampled, mode='drop')
    hidden = disc(disc_tokens, **kw)['hidden']
    return dict(mlm_logits=mlm_logits, sampled=sampled, discriminator_tokens=disc_tokens,
                rtd_logits=self._rtd_head(hidden), hidden=hidden)

  def _mlm_head(self, h, table):
    """BERT's MLM head on the generator's outputs: dense to E, activation, LayerNorm, the tied table, a bias."""
    e = self.embedding_dim
    out_axis = 'embed_factor' if e != self.generator_embed_dim else 'mlp'
    h = common.dense(e, ('embed', out_axis), dtype=self.dtype, name='mlm_transform')(h)
    h = common.activation_fn(self.activation)[0](h)
    h = common.norm('layernorm', eps=self.norm_eps, dtype=self.dtype, name='mlm_norm')(h)
    bias = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                      (self.vocab_size,), jnp.float32)
    return losses.output(h, table, transposed=True, dtype=self.dtype) + bias

  def _rtd_head(self, hidden):
    """ELECTRA's discriminator_predictions: dense H + activation, then one logit per token (float32)."""
    h = common.dense(self.embed_dim, ('embed', 'mlp'), dtype=self.dtype, name='rtd_transform')(hidden)
    h = common.activation_fn(self.activation)[0](h)
    return common.dense(1, ('mlp', 'classes'), dtype=self.dtype, name='rtd_output')(h)[..., 0].astype(jnp.float32)

  def parts(self, params) -> list[tuple[Bert, dict]]:
    """(model, params) of each network a training step runs, for counting FLOPs (zoo.train.metrics): the
    generator as a Bert with its MLM head (reading the shared table), and the discriminator with its RTD head."""
    if self.head in TASK_HEADS:
      return [(Bert(**self._fields(head=self.head), parent=None), params['discriminator'])]
    disc = {**params['discriminator'], **{k: params[k] for k in ('rtd_transform', 'rtd_output') if k in params}}
    out = [(Bert(**self._fields(), parent=None), disc)]
    if self.head == 'pretraining':
      gen = {**params['generator'], 'token_embed': params['discriminator']['token_embed'],
             **{k: params[k] for k in ('mlm_transform', 'mlm_norm', 'mlm_bias')}}
      out.insert(0, (Bert(**self._fields(generator=True, head='pretraining'), parent=None), gen))
    return out

  def example_batch(self, batch_size: int = 1, length: int = 16) -> dict:
    """Arguments for `init`: the pretraining inputs (a quarter of the positions masked) or just tokens."""
    tokens = jnp.ones((batch_size, length), jnp.int32)
    if self.head != 'pretraining':
      return dict(tokens=tokens)
    p = max(1, length // 4)
    return dict(tokens=tokens, mlm_positions=jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (batch_size, p)),
                mlm_weights=jnp.ones((batch_size, p), jnp.float32),
                sample_seeds=jnp.arange(batch_size, dtype=jnp.uint32))


Model = Electra

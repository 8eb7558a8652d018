"""Transformer encoder and decoder blocks (post-LN as BERT and the original Transformer, pre-LN as GPT-2
and T5) and the layer stack that runs them unrolled, under `nn.scan`, under `nn.remat`, or shared (ALBERT)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers import adapters as adapters_lib
from zoo.layers import common
from zoo.layers.attention import MultiHeadAttention


def scaled_init(init: common.Initializer, scale: float) -> common.Initializer:
  """`init`'s draws times `scale` (normal(0.02) -> normal(0.02 * scale)); scale 1 is `init` itself."""
  if scale == 1.0:
    return init
  return lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) * jnp.asarray(scale, dtype)


class Mlp(nn.Module):
  """Position-wise feed-forward: wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) for gated activations."""
  mlp_dim: int
  activation: str = 'gelu'
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: common.Dtype = jnp.float32
  kernel_init: common.Initializer = common.default_kernel_init
  adapters: adapters_lib.Adapters | None = None  # LoRA on wi / wo when 'mlp' is a target
  wi_init: common.Initializer | None = None  # None: kernel_init (T5: normal(d_model^-0.5))
  wo_init: common.Initializer | None = None  # None: kernel_init (GPT-2: scaled by 1/sqrt(2 L); T5: d_ff^-0.5)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    act, gated = common.activation_fn(self.activation)

    def wi(name):
      y = common.dense(self.mlp_dim, ('embed', 'mlp'), use_bias=self.use_bias, dtype=self.dtype,
                       kernel_init=self.wi_init or self.kernel_init, name=name)(x)
      return y + adapters_lib.lora(self, self.adapters, name, x, self.mlp_dim, ('embed', 'mlp'), deterministic)
    f32 = lambda y: act(y.astype(jnp.float32)).astype(y.dtype)  # noqa: E731  fused: bf16 in and out, f32 inside
    if gated:
      h = f32(wi('wi_0')) * wi('wi_1')
    else:
      h = f32(wi('wi'))
    h = common.constrain(h, ('batch', 'length', 'mlp'))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)  # T5 drops here too
    y = common.dense(x.shape[-1], ('mlp', 'embed'), use_bias=self.use_bias, dtype=self.dtype,
                     kernel_init=self.wo_init or self.kernel_init, name='wo')(h)
    return y + adapters_lib.lora(self, self.adapters, 'wo', h, x.shape[-1], ('mlp', 'embed'), deterministic)


class TransformerBlock(nn.Module):
  """One encoder block (self-attention, MLP) or decoder block (self-attention, cross-attention, MLP).

  pre_ln=True:  x + Drop(f(Norm(x)))      (GPT-2, T5)
  pre_ln=False: Norm(x + Drop(f(x)))      (BERT, BART, the original Transformer)

  Call with positional arguments (nn.scan and nn.remat need them):
  (x, mask, bias, positions, encoded, cross_mask, deterministic, decode) -> x, or (x, None) when `scanned`.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  activation: str = 'gelu'
  norm: str = 'layernorm'
  norm_eps: float = 1e-5
  pre_ln: bool = True
  use_bias: bool = True
  cross_attention: bool = False
  dropout_rate: float = 0.0
  attention_scale: float | None = None  # None: 1/sqrt(head_dim); T5: 1.0
  rotary: bool = False
  dtype: common.Dtype = jnp.float32
  kernel_init: common.Initializer = common.default_kernel_init
  scanned: bool = False  # return (x, None) for nn.scan
  attention: str = 'xla'  # the attention implementation (zoo.layers.kernels)
  adapters: adapters_lib.Adapters | None = None  # LoRA / prefix tuning (zoo.layers.adapters)
  # GPT-2's 1/sqrt(2 num_layers): the projections that write into the residual stream (the attention's output
  # projection and the MLP's wo) start this much smaller
  residual_init_scale: float = 1.0
  mlp_wi_init: common.Initializer | None = None  # None: kernel_init (T5: Mesh TF's normal(d_model^-0.5))
  mlp_wo_init: common.Initializer | None = None  # None: kernel_init scaled by residual_init_scale
  # the attention's projections (None: kernel_init; the output's scaled by residual_init_scale). T5: Mesh TF's
  attention_inits: tuple | None = None  # (query, key and value, output) initializers

  def _attention_inits(self) -> dict:
    if self.attention_inits:
      return dict(zip(('query_init', 'kv_init', 'out_init'), self.attention_inits))
    return {'out_init': None if self.residual_init_scale == 1.0 else scaled_init(self.kernel_init,
                                                                                 self.residual_init_scale)}

  @nn.compact
  def __call__(self, x, mask=None, bias=None, positions=None, encoded=None, cross_mask=None,
               deterministic: bool = True, decode: bool = False):
    attention = functools.partial(
        MultiHeadAttention, self.num_heads, self.head_dim, use_bias=self.use_bias,
        dropout_rate=self.dropout_rate, scale=self.attention_scale, dtype=self.dtype,
        kernel_init=self.kernel_init, adapters=self.adapters, implementation=self.attention,
        **self._attention_inits())

    def sublayer(name, fn, x):
      norm = common.norm(self.norm, eps=self.norm_eps, dtype=self.dtype, name=f'{name}_norm')
      h = fn(norm(x) if self.pre_ln else x)
      h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
      return x + h if self.pre_ln else norm(x + h)

    x = common.constrain(x, ('batch', 'length', 'embed'))
    x = sublayer('self_attention', lambda h: attention(rotary=self.rotary, name='self_attention')(
        h, None, mask, bias, positions, deterministic, decode), x)
    if self.cross_attention:
      x = sublayer('cross_attention', lambda h: attention(name='cross_attention')(
          h, encoded, cross_mask, None, None, deterministic, False), x)
    wo_init = self.mlp_wo_init or scaled_init(self.kernel_init, self.residual_init_scale)
    x = sublayer('mlp', lambda h: Mlp(self.mlp_dim, self.activation, self.use_bias, self.dropout_rate,
                                      self.dtype, self.kernel_init, self.adapters, wi_init=self.mlp_wi_init,
                                      wo_init=wo_init, name='mlp')(h, deterministic),
                 x)
    x = common.constrain(x, ('batch', 'length', 'embed'))
    return (x, None) if self.scanned else x


def remat_policy(remat: bool | str):
  """model.remat -> (recompute?, policy): 'none' (or False) keeps every activation; 'full' (or True) recomputes
  each block in the backward pass; a `jax.checkpoint_policies` name (dots_saveable, nothing_saveable,
  dots_with_no_batch_dims_saveable, ...) keeps what it names and recomputes the rest.

  >>> remat_policy('none'), remat_policy(True)
  ((False, None), (True, None))
  >>> remat_policy('dots_saveable')[1] is jax.checkpoint_policies.dots_saveable
  True
  """
  if remat in (False, None, 'none', ''):
    return False, None
  if remat in (True, 'full'):
    return True, None
  names = sorted(n for n in dir(jax.checkpoint_policies) if n.endswith('saveable') or n.startswith('checkpoint_'))
  if remat not in names:  # the others (save_only_these_names, ...) are factories that need arguments
    raise ValueError(f'model.remat={remat!r}: choose none, full, or a jax.checkpoint_policies name: '
                     f'{", ".join(names)}')
  return True, getattr(jax.checkpoint_policies, remat)


def stack_layers(block: functools.partial, num_layers: int, x, *args, scan: bool = False,
                 remat: bool | str = 'none', shared: bool = False, name: str = 'layers'):
  """Runs `num_layers` blocks over x; call inside a parent's `@nn.compact` method.

  block: `functools.partial(BlockClass, **fields)`; args: the block's remaining positional arguments
  (mask, bias, positions, encoded, cross_mask, deterministic, decode), the last two static.
  scan: one `nn.scan` over stacked parameters (axis 'layers'): compile time stays flat in depth.
  remat: recompute block activations in the backward pass (`nn.remat`): none, full or a policy (`remat_policy`).
  shared: one set of parameters applied num_layers times (ALBERT's cross-layer sharing).
  """
  cls = block.func
  n_static = 2  # deterministic, decode
  recompute, policy = remat_policy(remat)
  if recompute:
    first_static = 1 + 1 + len(args) - n_static  # self counts as argument 0, then x
    cls = nn.remat(cls, prevent_cse=not scan, policy=policy,
                   static_argnums=tuple(range(first_static, first_static + 2)))
  if shared:
    layer = cls(**block.keywords, name=name)
    for _ in range(num_layers):
      x = layer(x, *args)
    return x
  if scan:
    scanned = nn.scan(cls, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast,) * len(args), length=num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = scanned(**block.keywords, scanned=True, name=name)(x, *args)
    return x
  for i in range(num_layers):
    x = cls(**block.keywords, name=f'{name}_{i}')(x, *args)
  return x


def unstack_params(params, name: str = 'layers'):
  """Scanned parameters {name: stacked} -> unrolled {name_0: ..., name_1: ...} (unboxed)."""
  params = dict(nn.unbox(params))
  stacked = params.pop(name)
  n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  for i in range(n):
    params[f'{name}_{i}'] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
  return params


def stack_params(params, name: str = 'layers'):
  """Unrolled parameters {name_0: ..., name_1: ...} -> scanned {name: stacked} (unboxed): the inverse of
  `unstack_params`. numpy leaves stay numpy, jax arrays are stacked with jnp."""
  params = dict(nn.unbox(params))
  keys = sorted((k for k in params if k.startswith(f'{name}_') and k[len(name) + 1:].isdigit()),
                key=lambda k: int(k[len(name) + 1:]))
  layers = [params.pop(k) for k in keys]
  params[name] = jax.tree_util.tree_map(
      lambda *xs: np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs), *layers)
  return params

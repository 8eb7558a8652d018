"""ALBERT (Lan et al. 2019): BERT with a factorized embedding (vocab x E, then E -> H) and one set of layer
parameters shared by every layer, trained with MLM + sentence-order prediction (the 2-way head).

>>> import jax, jax.numpy as jnp
>>> model = Albert(**SIZES['tiny'])
>>> tokens = jnp.ones((1, 8), jnp.int32)
>>> model.apply(model.init(jax.random.key(0), tokens), tokens)['mlm_logits'].shape
(1, 8, 512)
"""
from __future__ import annotations

from zoo.models.bert import Bert

SIZES = {
    'tiny': dict(vocab_size=512, max_len=128, num_layers=2, embedding_dim=32, embed_dim=64, num_heads=4,
                 mlp_dim=128),
    'base': dict(num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072),  # 12M
    'large': dict(num_layers=24, embed_dim=1024, num_heads=16, mlp_dim=4096),  # 18M
    'xlarge': dict(num_layers=24, embed_dim=2048, num_heads=16, mlp_dim=8192),  # 60M
    'xxlarge': dict(num_layers=12, embed_dim=4096, num_heads=64, mlp_dim=16384),  # 235M
}
# transformers' AlbertForPreTraining from the same config (vocab 30,000, E=128); paper: 12M, 18M, 60M, 235M.
PUBLISHED_PARAMS = {'base': 11_813_810, 'large': 17_847_474, 'xlarge': 59_021_490, 'xxlarge': 223_158_450}


class Albert(Bert):
  """BERT with ALBERT's defaults: vocab 30,000, E=128, shared layers, no dropout (ALBERT v2)."""
  vocab_size: int = 30000
  embedding_dim: int | None = 128
  share_layers: bool = True
  dropout_rate: float = 0.0


Model = Albert

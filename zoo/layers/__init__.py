"""zoo's building blocks: pure-functional flax.linen modules with logically named parameters."""
from zoo.layers.attention import (MultiHeadAttention, causal_mask, decode_positions, dot_product_attention,
                                  make_mask, padding_mask, segment_mask)
from zoo.layers.common import OneHotEmbed, OutputHead, attend, dense, dot_general, embed, norm
from zoo.layers.kernels import IMPLEMENTATIONS, Mask
from zoo.layers.losses import Features, chunked_cross_entropy
from zoo.layers.position import (LearnedPositions, RelativePositionBias, apply_rotary,
                                 relative_position_bucket, sinusoidal)
from zoo.layers.recurrent import GRUCell, StackedRNN, make_cell
from zoo.layers.transformer import Mlp, TransformerBlock, remat_policy, stack_layers, unstack_params

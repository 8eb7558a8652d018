"""Test setup: 8 simulated CPU devices, float32 matmuls at full precision, a persistent compilation cache."""
import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
# Tiny models compile faster with fewer XLA passes (as the flax lm1b tests do).
jax.config.update('jax_disable_most_optimizations', True)
_CACHE = pathlib.Path(__file__).resolve().parent / '.jax_cache'
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture
def key():
  return jax.random.key(0)

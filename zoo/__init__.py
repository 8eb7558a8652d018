"""zoo: a JAX/Flax model zoo for NLP pretraining."""
__version__ = '0.1.0'

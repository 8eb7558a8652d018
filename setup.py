"""zoo: a JAX/Flax model zoo for NLP pretraining (BERT, ALBERT, GPT, T5, BART, GLM, RNNs)."""
from setuptools import find_packages, setup

# Lower bounds are the versions zoo is tested with (they work together on Python 3.10-3.12).
INSTALL_REQUIRES = [
    'jax>=0.10.2',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'grain>=0.2.18',
    'sentencepiece>=0.2.3',
    'protobuf>=7.36',  # sentencepiece's model file, read and written (tokenizer.requested_vocab_size)
    'tensorflow-datasets>=4.9.10',
    'pyarrow>=26.0.1',  # parquet:<glob>:<column> sources
    'ml_collections>=1.1.0',
    'tensorboardX>=2.6.5',  # TensorBoard event files without TensorFlow
    'importlib_resources>=6.0',  # tensorflow-datasets needs it to prepare a local builder, and does not declare it
    'numpy>=1.26',
    'safetensors>=0.4',  # HuggingFace weights in and out (zoo.convert), read as numpy: no PyTorch needed
    'matplotlib>=3.8',  # python -m zoo.plot and the notebooks' loss plots
    'tqdm>=4.66',  # the notebooks' progress bars
    'etils[epath]>=1.15.0',  # workdirs and data on any epath path: local, or gs:// with the gcs extra
]
# The reference implementation the HF parity tests compare with. The CPU build of torch 2.13 is what these
# tests ran with on Python 3.11; elsewhere the parity tests skip (they need torch) rather than pull a CUDA build.
PARITY = ['torch>=2.13,<2.14; python_version=="3.11"', 'transformers>=5.23; python_version=="3.11"',
          'tokenizers>=0.23; python_version=="3.11"']

# The suite starts about 40 Python processes (xdist workers, train.py runs, notebook kernels, data workers), and
# each imports ml_dtypes with jax: 0.85-1.0 s for ml_dtypes 0.7.0 under Python 3.11 (numpy before 2.5 compares each
# new ufunc loop with every loop registered before it; numpy 2.5 needs Python 3.12), 0.09 s for 0.6.0. Only the
# tests pin it; zoo itself does not.
FAST_IMPORT = ['ml_dtypes>=0.5,<0.7; python_version<"3.12"']

setup(
    name='zoo',
    version='0.1.0',
    description='A JAX/Flax model zoo for NLP pretraining, TPU-first.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['zoo', 'zoo.*']),
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    extras_require={
        'tpu': ['jax[tpu]>=0.10.2'],  # brings libtpu: also for ahead-of-time compilation on a CPU host
        'cuda': ['jax[cuda12]>=0.10.2'],
        'gcs': ['etils[epath-gcs]>=1.15.0'],  # gcsfs: workdirs, data and tokenizers on gs:// (TPU VMs)
        'zh': ['jieba>=0.42.1'],  # Chinese word segmentation for whole-word masking
        'hf': ['tokenizers>=0.23', 'torch>=2.13', 'transformers>=5.23',  # HF tokenizers; .bin weights (weights only)
               'datasets>=5.2'],  # python -m zoo.data.prepare --source=hf:...
        'test': ['pytest>=8.0', 'pytest-xdist>=3.5', 'jieba>=0.42.1', 'jax[tpu]>=0.10.2',  # libtpu: train.py --aot
                 'nbclient>=0.10', 'nbformat>=5.10', 'ipykernel>=6.29',  # the colab/ notebooks run
                 'datasets>=5.2',  # hf: sources of zoo.data.prepare
                 ] + PARITY + FAST_IMPORT,
    },
    license='Apache-2.0',
)

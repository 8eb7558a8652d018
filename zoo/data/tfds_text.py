"""A TFDS builder over local text files, prepared in array_record format: no TensorFlow needed to write or read.

Turning a corpus into a TFDS dataset once gives fast random access (grain reads it by index), a fixed
train/validation split, and a directory to copy to TPU VMs or a bucket.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / 'a.txt').write_text('one document\\nanother one\\n')
>>> builder = prepare(str(d / '*.txt'), data_dir=str(d / 'tfds'), validation_fraction=0.5)
>>> sorted(x['text'].decode() for x in builder.as_data_source(split='train')) + \\
...   [x['text'].decode() for x in builder.as_data_source(split='validation')]
['one document', 'another one']
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging

import tensorflow_datasets as tfds

from zoo.data import sources


class ZooText(tfds.core.GeneratorBasedBuilder):
  """Documents of local text files (`files`: a glob; one document per line or per paragraph block)."""
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, files: str = '', text_mode: str = 'line', validation_fraction: float = 0.01,
               **kwargs):
    self._files, self._text_mode, self._validation_fraction = files, text_mode, validation_fraction
    # one config per corpus, so two corpora never share a directory
    digest = hashlib.sha1(f'{files}|{text_mode}|{validation_fraction}'.encode()).hexdigest()[:12]
    config = kwargs.get('config') or f'c{digest}'
    if isinstance(config, str):  # `tfds:zoo_text/<config>` reads a prepared corpus back by its name
      kwargs['config'] = tfds.core.BuilderConfig(name=config, description=files)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description='Local text documents.',
                                 features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in ('train', 'validation')}

  def _generate_examples(self, split):
    docs, _ = sources.read_documents(f'text:{self._files}', split=split, text_mode=self._text_mode,
                                     validation_fraction=self._validation_fraction)
    for i, doc in enumerate(docs):
      yield i, {'text': doc}


def prepare(files: str, data_dir: str, text_mode: str = 'line', validation_fraction: float = 0.01) -> ZooText:
  """Prepares (once) and returns the builder; read it with `builder.as_data_source(split=...)`, or in a
  recipe with data.source='tfds:zoo_text/<builder.builder_config.name>' and data.data_dir=data_dir."""
  builder = ZooText(files=files, text_mode=text_mode, validation_fraction=validation_fraction,
                    data_dir=data_dir, file_format='array_record')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):  # TFDS prints its progress; keep it in the log instead
    builder.download_and_prepare()
  if out.getvalue().strip():
    logging.getLogger(__name__).info(out.getvalue().strip())
  return builder

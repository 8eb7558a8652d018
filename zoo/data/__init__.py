"""zoo's input side: `tokenizer` (SentencePiece with fixed special ids), `sources` (text, JSONL, TFDS and the
default corpus), `tfds_text` (a TFDS builder over local files) and `pipeline` (grain: shuffle, shard, pack,
batch, resume). Import the submodules: `from zoo.data import pipeline, sources, tokenizer`."""

"""zoo's input side: SentencePiece tokenizers, text sources and the grain input pipeline."""
from zoo.data.pipeline import PACKINGS, check_corpus_fits, fill_rate, make_dataset
from zoo.data.sources import Stats, read_documents
from zoo.data.tokenizer import Tokenizer, train_tokenizer

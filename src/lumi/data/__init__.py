"""Lumi data: corpora, the train/val split, lossless tokenizers, token shards and `prepare`.

from lumi.data import prepare, load_prepared
data = prepare("shakespeare", "bpe:4096")       # or load_prepared(directory)
tokens = data.tokens("train")                    # memory-mapped [sep, doc..., sep, doc...]
nbytes = data.target_bytes("val")                # exact UTF-8 bytes per position, for BPB
"""

from lumi.data.corpora import Corpus, Document, load_corpus
from lumi.data.paths import default_data_dir, lumi_home
from lumi.data.prepare import PreparedData, load_prepared, prepare
from lumi.data.tokenizers import (
    BpeTokenizer,
    BytesTokenizer,
    Tokenizer,
    load_tokenizer,
    parse_tokenizer_spec,
    train_tokenizer,
)

__all__ = [
    "BpeTokenizer",
    "BytesTokenizer",
    "Corpus",
    "Document",
    "PreparedData",
    "Tokenizer",
    "default_data_dir",
    "load_corpus",
    "load_prepared",
    "load_tokenizer",
    "lumi_home",
    "parse_tokenizer_spec",
    "prepare",
    "train_tokenizer",
]

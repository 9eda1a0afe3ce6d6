"""The new domain's text for `lumi adapt`: split by document, tokenized with the core run's tokenizer.

The split is Lumi's own (lumi.data.split: deterministic, by document, about 10% of the bytes to
validation), so the adapter never trains on the documents its domain BPB is measured on. Documents are
encoded as everywhere else (each one = [separator, *tokens]), and every document must tokenize losslessly
under the run's tokenizer — the same rule as ``lumi eval --corpus`` (lumi.evals.corpus), whose
``TextStream`` the validation side is returned as, so ``lumi eval ADAPTER --corpus DOMAIN`` scores it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lumi.evals.corpus import TextStream, document_stream

if TYPE_CHECKING:
    from lumi.data.tokenizers import Tokenizer


@dataclass
class DomainData:
    spec: str
    train: TextStream
    val: TextStream
    split: dict  # lumi.data.split's description (method, hashes of each side)


def domain_data(spec: str, tokenizer: Tokenizer) -> DomainData:
    """Corpus ``spec`` split into train / val and tokenized with ``tokenizer`` (LumiError when lossy)."""
    from lumi.data.corpora import load_corpus
    from lumi.data.split import split_documents

    corpus = load_corpus(spec)
    split = split_documents(corpus.documents)
    return DomainData(
        spec,
        document_stream(spec, split.train, tokenizer, "the domain's training split"),
        document_stream(
            spec, split.val, tokenizer, "the domain's validation split (the adapter never trained on it)"
        ),
        split.describe(),
    )

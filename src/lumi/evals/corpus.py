"""Bits per byte on other text: any corpus, tokenized with the run's own tokenizer, exact byte accounting.

The documents are encoded as in prepared data (each document = [separator, *tokens]) and scored with
the validation protocol (lumi.metrics.evaluate). A corpus the run trained on is scored on the run's own
validation split only: its training documents would flatter the number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lumi.errors import LumiError

if TYPE_CHECKING:
    from lumi.data.tokenizers import Tokenizer
    from lumi.run import Run


@dataclass
class TextStream:
    name: str  # the corpus spec
    tokens: np.ndarray
    target_bytes: np.ndarray
    documents: int
    scope: str  # which documents: "whole corpus" or "the run's validation split"


def corpus_stream(spec: str, tokenizer: Tokenizer, run: Run | None = None) -> TextStream:
    """The token stream of corpus ``spec`` under ``tokenizer``; the run's val split if it trained on it."""
    from lumi.data.corpora import load_corpus

    if run is not None and _same_corpus(spec, run):
        data = run.data()
        return TextStream(
            spec,
            np.asarray(data.tokens("val")),
            np.asarray(data.target_bytes("val")),
            len(data.document_starts("val")),
            "the run's validation split (it trained on this corpus)",
        )
    corpus = load_corpus(spec)
    pieces: list[np.ndarray] = []
    for doc, ids in zip(
        corpus.documents, tokenizer.encode_batch([d.text for d in corpus.documents]), strict=True
    ):
        covered = int(tokenizer.token_bytes[ids].sum())
        if covered != doc.nbytes:  # a lossy tokenizer cannot give an honest BPB
            raise LumiError(
                f"corpus {spec!r}, document {doc.id!r}: tokenizer {tokenizer.spec} covers {covered} of its "
                f"{doc.nbytes} bytes; it cannot be scored losslessly with this run's tokenizer"
            )
        pieces.append(np.concatenate(([tokenizer.sep_id], np.asarray(ids, dtype=np.int64))))
    if not pieces:
        raise LumiError(f"corpus {spec!r} has no documents")
    tokens = np.concatenate(pieces).astype(np.int64)
    return TextStream(spec, tokens, tokenizer.token_bytes[tokens], len(pieces), "whole corpus")


def _same_corpus(spec: str, run: Run) -> bool:
    trained = run.config.data.corpus
    return spec.strip() == str(trained).strip()

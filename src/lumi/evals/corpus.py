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
    from lumi.data.corpora import Document
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
    return document_stream(spec, corpus.documents, tokenizer, "whole corpus")


def document_stream(spec: str, documents: list[Document], tokenizer: Tokenizer, scope: str) -> TextStream:
    """Documents encoded as everywhere in Lumi ([separator, *tokens] each) with their per-target bytes.
    Every document must round-trip byte for byte (Tokenizer.round_trip_problem): a lossy tokenizer cannot
    give an honest BPB, so the first document that does not is named, with where it differs."""
    pieces: list[np.ndarray] = []
    for doc, ids in zip(documents, tokenizer.encode_batch([d.text for d in documents]), strict=True):
        problem = tokenizer.round_trip_problem(doc.text, ids)
        if problem is not None:
            raise LumiError(
                f"corpus {spec!r}, document {doc.id!r} does not tokenize losslessly with the run's tokenizer "
                f"{tokenizer.spec}: {problem}; it cannot be scored (or trained on) with this tokenizer"
            )
        pieces.append(np.concatenate(([tokenizer.sep_id], np.asarray(ids, dtype=np.int64))))
    if not pieces:
        raise LumiError(f"corpus {spec!r} has no documents for {scope}")
    tokens = np.concatenate(pieces).astype(np.int64)
    return TextStream(spec, tokens, tokenizer.token_bytes[tokens], len(pieces), scope)


def _same_corpus(spec: str, run: Run) -> bool:
    trained = run.config.data.corpus
    return spec.strip() == str(trained).strip()

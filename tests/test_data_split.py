"""The train/validation split: by document, deterministic, ~10% of bytes, no leaks, dedupe, chunking."""

from __future__ import annotations

import random

import pytest

from lumi.data.corpora import Document, load_corpus
from lumi.data.split import VAL_FRACTION, chunk_document, split_documents
from lumi.errors import LumiError


@pytest.mark.parametrize("name", ["shakespeare", "milton", "pystdlib"])
def test_builtin_corpora_split_without_leaks(name, shakespeare_archive):
    corpus = load_corpus(name)
    split = split_documents(corpus.documents)
    train_ids, val_ids = {d.id for d in split.train}, {d.id for d in split.val}
    assert train_ids and val_ids
    assert not train_ids & val_ids
    assert not {d.sha256 for d in split.train} & {d.sha256 for d in split.val}  # no identical text either
    assert not split.chunked  # whole documents for the built-ins
    # Every kept document is on exactly one side; dropped ones are accounted for.
    dropped = {d["id"] for d in split.duplicates} | set(split.empty)
    assert train_ids | val_ids | dropped == {d.id for d in corpus.documents}
    val_bytes = sum(d.nbytes for d in split.val)
    total = val_bytes + sum(d.nbytes for d in split.train)
    assert 0.5 * VAL_FRACTION <= val_bytes / total <= VAL_FRACTION
    # Deterministic: same corpus, same split, even with the documents handed over in another order.
    shuffled = list(corpus.documents)
    random.Random(0).shuffle(shuffled)
    again = split_documents(shuffled)
    assert [d.id for d in again.val] == [d.id for d in split.val]
    assert again.describe() == split.describe()


def test_exact_split_of_shakespeare_is_stable(shakespeare_archive):
    """The split is part of the corpus version: changing the rule must be a deliberate, visible change."""
    split = split_documents(load_corpus("shakespeare").documents)
    assert [d.id for d in split.val] == ["henry_viii", "lovers_complaint", "macbeth", "phoenix_and_the_turtle",
                                         "taming_of_the_shrew", "timon_of_athens"]


def test_duplicates_and_empty_documents_are_dropped():
    docs = [Document("b", "same text"), Document("a", "same text"), Document("c", ""),
            *[Document(f"d{i}", f"document number {i}\n" * 10) for i in range(30)]]
    split = split_documents(docs)
    assert split.duplicates == [{"id": "b", "same_as": "a"}]
    assert split.empty == ["c"]
    kept = [d.id for d in split.train + split.val]
    assert "a" in kept and "b" not in kept and "c" not in kept
    assert len(kept) == 31


def test_one_huge_document_is_chunked_so_validation_is_not_empty():
    text = "".join(f"line {i} of the only document, with ü and 😀\n" for i in range(20000))
    split = split_documents([Document("only", text)])
    assert split.chunked
    assert split.val and split.train
    pieces = sorted(split.train + split.val, key=lambda d: int(d.id.split("#")[1]))
    assert "".join(p.text for p in pieces) == text
    val_bytes = sum(d.nbytes for d in split.val)
    assert 0.05 <= val_bytes / len(text.encode()) <= 0.10


def test_chunk_document_respects_lines_and_characters():
    doc = Document("x", "aaaa\nbb\ncccccccccc\n")
    pieces = chunk_document(doc, 6)
    assert [p.text for p in pieces] == ["aaaa\n", "bb\n", "cccccc", "cccc\n"]
    assert [p.id for p in pieces] == ["x#0", "x#1", "x#2", "x#3"]
    emoji = Document("e", "😀😀😀")  # 4 bytes each: never cut inside a character
    assert [p.text for p in chunk_document(emoji, 5)] == ["😀", "😀", "😀"]
    assert [p.text for p in chunk_document(emoji, 2)] == ["😀", "😀", "😀"]
    assert chunk_document(doc, 100) == [doc]


def test_too_small_corpus_is_an_error():
    with pytest.raises(LumiError, match="too small to split"):
        split_documents([Document("a", "x")])
    split = split_documents([Document("a", "hi"), Document("b", "yo")])
    assert len(split.val) >= 1 and len(split.train) >= 1

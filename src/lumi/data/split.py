"""Deterministic train/validation split by document (about 10% of the bytes to validation).

Rules, in order:
1. Empty documents are dropped; documents with identical text are deduplicated (the first by id
   is kept), so the same text can never be on both sides.
2. Documents are put in a fixed pseudo-random order: sha256("lumi-split-v1:" + id). Walking that
   order, a document goes to validation if it still fits in the validation budget
   (10% of all bytes); everything else is training. Whole documents only, never Python's hash().
3. Only if that leaves validation with less than half its budget (e.g. a corpus that is one huge
   file) are documents larger than half the budget cut into chunks of at most half the budget at
   line boundaries (ids `ID#0`, `ID#1`, ...; joined they give the document back exactly), and
   step 2 is redone on the chunks. A corpus too small to give both sides a piece is an error.

The same corpus content always gives the same split; the assignment is recorded in the manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from lumi.data.corpora import Document
from lumi.errors import LumiError

VAL_FRACTION = 0.1
SPLIT_SALT = "lumi-split-v1"


@dataclass
class Split:
    train: list[Document]
    val: list[Document]
    duplicates: list[dict] = field(default_factory=list)  # {"id": dropped, "same_as": kept}
    empty: list[str] = field(default_factory=list)  # ids of dropped empty documents
    chunked: bool = False
    val_fraction: float = VAL_FRACTION

    def documents(self, name: str) -> list[Document]:
        if name not in ("train", "val"):
            raise LumiError(f"unknown split {name!r}; accepted: 'train', 'val'")
        return self.train if name == "train" else self.val

    @property
    def assignment(self) -> list[dict]:
        """One record per document, in id order: id, split, sha256, bytes."""
        rows = [{"id": d.id, "split": "train", "sha256": d.sha256, "bytes": d.nbytes} for d in self.train]
        rows += [{"id": d.id, "split": "val", "sha256": d.sha256, "bytes": d.nbytes} for d in self.val]
        return sorted(rows, key=lambda r: r["id"])

    def split_hash(self, name: str) -> str:
        """sha256 of one side's (id, content) list: identifies e.g. the text a tokenizer was trained on."""
        digest = hashlib.sha256(f"lumi-split-side-v1:{name}\n".encode())
        for doc in self.documents(name):
            digest.update(f"{doc.id}\t{doc.sha256}\n".encode())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {
            "method": "by document; sha256-ordered greedy fill of the validation byte budget",
            "salt": SPLIT_SALT,
            "val_fraction": self.val_fraction,
            "chunked": self.chunked,
            "duplicates_dropped": self.duplicates,
            "empty_dropped": self.empty,
            "train_sha256": self.split_hash("train"),
            "val_sha256": self.split_hash("val"),
        }


def split_documents(documents: list[Document], val_fraction: float = VAL_FRACTION) -> Split:
    """Split documents into train/val as described in the module docstring."""
    if not 0.0 < val_fraction < 1.0:
        raise LumiError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    units, duplicates, empty = _dedupe(documents)
    total = sum(d.nbytes for d in units)
    budget = val_fraction * total
    val_ids = _fill(units, budget)
    chunked = False
    if sum(d.nbytes for d in units if d.id in val_ids) < budget / 2:
        units = [piece for d in units for piece in chunk_document(d, max(1, int(budget / 2)))]
        chunked = True
        val_ids = _fill(units, budget)
    if not val_ids and len(units) >= 2:  # tiny corpora: still give validation one piece
        val_ids = {min(units, key=_order_key).id}
    if not val_ids or len(val_ids) == len(units):
        raise LumiError(f"corpus is too small to split into training and validation ({total} bytes)")
    train = [d for d in units if d.id not in val_ids]
    val = [d for d in units if d.id in val_ids]
    return Split(train, val, duplicates, empty, chunked, val_fraction)


def chunk_document(doc: Document, max_bytes: int) -> list[Document]:
    """Cut a document into pieces of at most max_bytes UTF-8 bytes, preferring line ends.

    A piece is only longer than max_bytes when a single character is. ''.join(pieces) == text.
    """
    if doc.nbytes <= max_bytes:
        return [doc]
    data = doc.utf8
    pieces, start = [], 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start, end)
            if newline >= start:
                end = newline + 1
            else:
                while end > start and (data[end] & 0xC0) == 0x80:  # don't cut inside a character
                    end -= 1
                if end == start:  # one character longer than max_bytes
                    end = start + 1
                    while end < len(data) and (data[end] & 0xC0) == 0x80:
                        end += 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return [Document(f"{doc.id}#{i}", text) for i, text in enumerate(pieces)]


def _dedupe(documents: list[Document]) -> tuple[list[Document], list[dict], list[str]]:
    kept: dict[str, Document] = {}
    duplicates, empty = [], []
    for doc in sorted(documents, key=lambda d: d.id):
        if not doc.text:
            empty.append(doc.id)
        elif doc.sha256 in kept:
            duplicates.append({"id": doc.id, "same_as": kept[doc.sha256].id})
        else:
            kept[doc.sha256] = doc
    return list(kept.values()), duplicates, empty


def _order_key(doc: Document) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{doc.id}".encode()).hexdigest()


def _fill(units: list[Document], budget: float) -> set[str]:
    chosen, used = set(), 0
    for doc in sorted(units, key=_order_key):
        if used + doc.nbytes <= budget:
            chosen.add(doc.id)
            used += doc.nbytes
    return chosen

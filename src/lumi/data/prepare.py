"""`prepare`: corpus -> split -> tokenizer (trained on train only) -> token shards + manifest.

A prepared directory holds
    manifest.json                  what is inside (see `_manifest`); written last, so its presence
                                   means the directory is complete
    lumi_tokenizer.json            tokenizer spec + fingerprint (+ tokenizer.json / tokenizer.model)
    train.bin, val.bin             token shards (see lumi.data.shards)
    train.bytes.bin, val.bytes.bin only for a lossy tokenizer accepted with --allow-lossy: the bytes
                                   each position is charged (see "Lossless or refused" below)
Each split's stream is, for every document in id order, the separator followed by the document's
tokens. The separator covers 0 bytes, so the bytes of all targets of a split (every position
after the first) add up exactly to the UTF-8 length of its documents.

Lossless or refused: every document is round-tripped while its shard is written (the tokenizer's own
decoding gives the text back, and the per-token byte strings join to exactly its UTF-8 bytes). The
first document that fails is named with the byte offset and both snippets, and the tokenizer is
refused. With ``allow_lossy`` it is accepted: each position is charged its token's byte length, and a
changed document's difference to its original size is moved onto its last positions, so every BPB
still divides by the ORIGINAL bytes; the loss at the changed positions cannot be attributed to bytes.

A corpus mixture ("a:0.7,b:0.3", lumi.data.mixture) keeps each corpus's own split; one tokenizer is
trained on the union of the training splits; each split's stream holds the corpora one after another
(ids prefixed "a/", "b/") and the manifest's "mixture" records each corpus's token range per split.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lumi.data.corpora import Corpus, Document, load_corpus
from lumi.data.mixture import MixtureItem, mixture_spec, parse_mixture, single_corpus
from lumi.data.paths import default_data_dir
from lumi.data.shards import ShardWriter, dtype_for_vocab, read_header, read_shard
from lumi.data.split import Split, split_documents
from lumi.data.tokenizers import (
    EXTERNAL_KINDS,
    TOKENIZER_FILES,
    Tokenizer,
    load_tokenizer,
    parse_tokenizer_spec,
    train_tokenizer,
)
from lumi.errors import LumiError, write_error_text
from lumi.io import write_text_atomic
from lumi.lock import lock_directory

__all__ = ["SPLITS", "PreparedData", "default_data_dir", "load_prepared", "prepare"]

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
FORMAT = "lumi-prepared"
FORMAT_VERSION = 1
_BATCH_BYTES = 4 << 20  # tokenize about this much text per call (keeps memory flat, feeds the progress bar)
BYTES_DTYPE = np.dtype("<u4")  # per-position byte counts of a lossy tokenizer's splits
LOSSY_ACCOUNTING = (
    "lossy tokenizer accepted with --allow-lossy: each position is charged its token's byte length "
    "(the tokenizer's decoding of that id); where a document does not round-trip, the difference to its "
    "ORIGINAL UTF-8 size is added to its last position (or taken from its last positions), so BPB divides "
    "by the original bytes; the loss of the changed positions cannot be attributed to the bytes they cover"
)
LOSSLESS_ACCOUNTING = (
    "lossless: every document round-trips byte for byte and its tokens' byte lengths add up to its UTF-8 size"
)


class PreparedData:
    """A prepared data directory: manifest, tokenizer and memory-mapped token streams."""

    def __init__(self, directory: Path, manifest: dict, tokenizer: Tokenizer) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.last_prepare: dict = {}  # how `prepare` produced this object (reused/written, timings)
        self._tokens: dict[str, np.ndarray] = {}
        self._bytes: dict[str, np.ndarray] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def tokens(self, split: str) -> np.ndarray:
        """Memory-mapped token stream of a split: for each document [sep_id, *doc_tokens].

        Opening a shard checks every id against the vocabulary (one sequential pass, ~1 ms per MB), so a
        corrupt shard fails here with its file name instead of an IndexError in the middle of a run.
        """
        if split not in self._tokens:
            info = self._split_info(split)
            path = self.directory / info["file"]
            tokens = read_shard(path, info["tokens"], np.dtype(info["dtype"]))
            if tokens.size:
                top = int(tokens.max())
                if top >= self.vocab_size:
                    at = int(np.argmax(np.asarray(tokens) >= self.vocab_size))
                    raise LumiError(
                        f"{path}: token id {top} (first bad id at position {at}) is outside the "
                        f"vocabulary of {self.vocab_size} ids; the shard is corrupt — re-run "
                        f"`lumi data prepare --force`"
                    )
            self._tokens[split] = tokens
        return self._tokens[split]

    def verify_hashes(self) -> None:
        """sha256 of every shard against the manifest (reads each file once: ~0.3 s per 100 MB).

        Catches corruption that stays inside the vocabulary, which the id check on open cannot see.
        """
        from lumi.data.download import sha256_file

        for split in SPLITS:
            info = self._split_info(split)
            for file_key, hash_key in (("file", "sha256"), ("bytes_file", "bytes_sha256")):
                if file_key not in info:
                    continue
                path = self.directory / info[file_key]
                if sha256_file(path) != info[hash_key]:
                    raise LumiError(
                        f"{path}: content does not match the sha256 in {MANIFEST} (the shard was modified "
                        f"or is corrupt); re-run `lumi data prepare --force`"
                    )

    @property
    def lossless(self) -> bool:
        """False only for a lossy tokenizer accepted with --allow-lossy (see the module docstring)."""
        return bool(self.manifest["tokenizer"].get("lossless", True))

    def target_bytes(self, split: str) -> np.ndarray:
        """int64 UTF-8 bytes covered by the token at each position (0 at separators).

        From the tokenizer's per-token table, or for a lossy split from its per-position byte file,
        whose documents add up to their original UTF-8 sizes.
        """
        info = self._split_info(split)
        if "bytes_file" not in info:
            return self.tokenizer.token_bytes[np.asarray(self.tokens(split))]
        if split not in self._bytes:
            path = self.directory / info["bytes_file"]
            self._bytes[split] = np.asarray(read_shard(path, info["tokens"], BYTES_DTYPE)).astype(np.int64)
        return self._bytes[split]

    @property
    def corpora(self) -> list[str]:
        """The corpus names: one, or a mixture's corpora in stream order."""
        mixture = self.manifest.get("mixture")
        if not mixture:
            return [self.manifest["corpus"]["name"]]
        return [c["name"] for c in mixture["corpora"]]

    def corpus_ranges(self, split: str) -> dict[str, tuple[int, int]]:
        """Each corpus's [start, end) token positions in the split's stream (each starts at a separator)."""
        mixture = self.manifest.get("mixture")
        if not mixture:
            return {self.manifest["corpus"]["name"]: (0, int(self._split_info(split)["tokens"]))}
        return {
            c["name"]: (int(c["splits"][split]["start"]), int(c["splits"][split]["end"]))
            for c in mixture["corpora"]
        }

    def mixture_weights(self) -> dict[str, float] | None:
        """Sampling weights (summing to 1) of a mixture's corpora; None for a single corpus."""
        mixture = self.manifest.get("mixture")
        if not mixture:
            return None
        total = sum(float(c["weight"]) for c in mixture["corpora"])
        return {c["name"]: float(c["weight"]) / total for c in mixture["corpora"]}

    def train_mixture(self) -> tuple[list[tuple[int, int]], list[float]] | None:
        """(train token ranges, weights) in corpus order for lumi.train.batches; None for a single corpus."""
        weights = self.mixture_weights()
        if weights is None:
            return None
        ranges = self.corpus_ranges("train")
        return [ranges[name] for name in weights], list(weights.values())

    def document_starts(self, split: str) -> np.ndarray:
        """Positions of the separators, i.e. where each document begins."""
        return np.flatnonzero(np.asarray(self.tokens(split)) == self.tokenizer.sep_id)

    def fingerprint(self) -> str:
        """Identifies corpus content + split + tokenizer: equal fingerprints mean identical token streams."""
        return self.manifest["fingerprint"]

    def verify(self) -> None:
        """Full check (reads every token): file hashes, id range and exact byte totals vs the manifest."""
        self.verify_hashes()
        for split in SPLITS:
            info = self._split_info(split)
            path = self.directory / info["file"]
            self.tokens(split)  # checks the id range
            counted = int(self.target_bytes(split).sum())
            if counted != info["bytes"]:
                raise LumiError(f"{path}: tokens cover {counted} bytes but the manifest says {info['bytes']}")

    def summary(self) -> dict:
        """Per split: documents, bytes, tokens, bytes/token (separators not counted as tokens)."""
        out = {}
        for split in SPLITS:
            info = self._split_info(split)
            text_tokens = info["tokens"] - info["documents"]
            out[split] = {
                "documents": info["documents"],
                "bytes": info["bytes"],
                "tokens": info["tokens"],
                "bytes_per_token": info["bytes"] / text_tokens if text_tokens else float("nan"),
            }
        return out

    def _split_info(self, split: str) -> dict:
        splits = self.manifest["splits"]
        if split not in splits:
            raise LumiError(f"unknown split {split!r}; accepted: {', '.join(repr(s) for s in splits)}")
        return splits[split]

    def __repr__(self) -> str:
        return (
            f"PreparedData({str(self.directory)!r}, corpus={self.manifest['corpus']['name']!r}, "
            f"tokenizer={self.tokenizer.spec!r})"
        )


def load_prepared(directory: Path) -> PreparedData:
    """Open a directory written by `prepare`. LumiError naming the file if anything is missing or corrupt.

    Checks are O(1) per file (manifest, tokenizer fingerprint, shard headers and sizes);
    `PreparedData.verify()` reads everything.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    tokenizer = load_tokenizer(directory)
    if tokenizer.fingerprint() != manifest["tokenizer"]["fingerprint"]:
        raise LumiError(
            f"{directory / 'lumi_tokenizer.json'}: tokenizer fingerprint differs from the one in "
            f"{directory / MANIFEST}; re-run `lumi data prepare`"
        )
    data = PreparedData(directory, manifest, tokenizer)
    for split in SPLITS:
        info = data._split_info(split)
        path = directory / info["file"]
        dtype, count = read_header(path)
        if dtype != np.dtype(info["dtype"]):
            raise LumiError(
                f"{path}: token dtype is {dtype.name} but {MANIFEST} says {info['dtype']}; "
                "re-run `lumi data prepare`"
            )
        if count != info["tokens"]:
            raise LumiError(
                f"{path}: holds {count} tokens but {MANIFEST} says {info['tokens']}; "
                "re-run `lumi data prepare`"
            )
        if "bytes_file" in info:
            bytes_path = directory / info["bytes_file"]
            if read_header(bytes_path) != (BYTES_DTYPE, info["tokens"]):
                raise LumiError(
                    f"{bytes_path}: does not hold {info['tokens']} uint32 byte counts as {MANIFEST} says; "
                    "re-run `lumi data prepare`"
                )
    _check_mixture(directory, manifest)
    return data


def _check_mixture(directory: Path, manifest: dict) -> None:
    """A mixture's corpus ranges must tile each split's stream exactly."""
    mixture = manifest.get("mixture")
    if not mixture:
        return
    try:
        for split in SPLITS:
            at = 0
            for c in mixture["corpora"]:
                r = c["splits"][split]
                if int(r["start"]) != at or int(r["end"]) < at:
                    raise ValueError
                at = int(r["end"])
                float(c["weight"])
            if at != manifest["splits"][split]["tokens"]:
                raise ValueError
    except (KeyError, TypeError, ValueError):
        raise LumiError(
            f"{directory / MANIFEST}: the mixture's corpus ranges do not tile the token streams; "
            "re-run `lumi data prepare`"
        ) from None


def prepare(
    corpus: str,
    tokenizer: str,
    out: Path | None = None,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    allow_lossy: bool = False,
) -> PreparedData:
    """Prepare `corpus` with `tokenizer` into `out` (default: default_data_dir(corpus, tokenizer)).

    `corpus` is a corpus spec or a mixture "a:0.7,b:0.3" (lumi.data.mixture). Every document is
    round-tripped; a tokenizer that is not lossless is refused unless `allow_lossy` (module docstring).
    Re-running reuses what is valid: everything when nothing changed, or just the trained
    tokenizer when only the shards are damaged. `force=True` rebuilds from scratch.
    The returned object's `last_prepare` says what was reused and how fast tokenizing was.
    """
    if log is None:
        log = _stderr_log if progress else _silent
    spec = parse_tokenizer_spec(tokenizer)  # a bad spec fails before any download
    items = parse_mixture(corpus)  # a bad weight too
    # A brought tokenizer is read from its source every time (a changed file must not reuse old shards),
    # and before the corpus, so a missing file or an offline hub fails first.
    brought = train_tokenizer(str(spec), []) if spec.kind in EXTERNAL_KINDS else None
    if items is None:
        corpus_obj = load_corpus(single_corpus(corpus), log=log)
        split = split_documents(corpus_obj.documents)
        groups = {name: [(corpus_obj.name, split.documents(name))] for name in SPLITS}
        mixture = None
    else:
        corpus_obj, split, groups, mixture = _mixture(items, log)
    out = Path(out) if out is not None else default_data_dir(corpus_obj.name, str(spec))
    _check_output_dir(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a regular file, no permission, read-only file system ...
        raise LumiError(
            f"cannot create the data directory {out}: {write_error_text(e, out.parent)}"
        ) from None
    try:
        with lock_directory(out, "data directory", wait=True):  # a second `prepare` waits, then reuses
            return _prepare_locked(
                corpus_obj, split, groups, mixture, str(spec), brought, out, progress, force, log, allow_lossy
            )
    except (
        OSError
    ) as e:  # a full disk while writing shards, tokenizer or manifest: partial outputs are removed
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise LumiError(
            f"writing prepared data to {out} failed: {write_error_text(e, out)}"
            f"{'; nothing was kept' if created else '; its manifest was removed, re-run to rebuild'}"
        ) from None
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


Groups = dict[
    str, list[tuple[str, list[Document]]]
]  # split -> [(corpus name, its documents)] in stream order


def _mixture(
    items: list[MixtureItem], log: Callable[[str], None]
) -> tuple[Corpus, Split, Groups, list[dict]]:
    """Load and split each corpus of a mixture on its own, then combine them (ids prefixed "name/")."""
    corpora = [load_corpus(item.name, log=log) for item in items]
    names = [c.name for c in corpora]
    for n, name in enumerate(names):
        if name in names[:n]:
            raise LumiError(
                f"corpus mixture {mixture_spec(items)!r}: corpus {name!r} is named twice; give each corpus once"
            )
    splits = [split_documents(c.documents) for c in corpora]
    groups: Groups = {name: [] for name in SPLITS}
    duplicates: list[dict] = []
    empty: list[str] = []

    def prefixed(name: str, docs: list[Document]) -> list[Document]:
        return [Document(f"{name}/{d.id}", d.text) for d in docs]

    for c, sp in zip(corpora, splits, strict=True):
        groups["train"].append((c.name, prefixed(c.name, sp.train)))
        duplicates += [
            {"id": f"{c.name}/{d['id']}", "same_as": f"{c.name}/{d['same_as']}"} for d in sp.duplicates
        ]
        empty += [f"{c.name}/{e}" for e in sp.empty]
    # The same text in one corpus's training split and another's validation split would leak: drop it
    # from validation (recorded in the manifest). Corpora share no text in practice.
    train_text = {d.sha256: d.id for _, docs in groups["train"] for d in docs}
    for c, sp in zip(corpora, splits, strict=True):
        val = []
        for d in prefixed(c.name, sp.val):
            if d.sha256 in train_text:
                duplicates.append({"id": d.id, "same_as": train_text[d.sha256]})
            else:
                val.append(d)
        groups["val"].append((c.name, val))
    train = [d for _, docs in groups["train"] for d in docs]
    val = [d for _, docs in groups["val"] for d in docs]
    split = Split(train, val, duplicates, empty, any(sp.chunked for sp in splits), splits[0].val_fraction)
    combined = Corpus(
        name=mixture_spec([MixtureItem(c.name, item.weight) for c, item in zip(corpora, items, strict=True)]),
        documents=sorted(train + val, key=lambda d: d.id),
        description="mixture of "
        + ", ".join(f"{c.name} ({item.weight:g})" for c, item in zip(corpora, items, strict=True)),
        source={"mixture": [{"name": c.name, "fingerprint": c.fingerprint} for c in corpora]},
    )
    mixture = [
        {
            "name": c.name,
            "weight": item.weight,
            "fingerprint": c.fingerprint,
            "description": c.description,
            "documents": len(c.documents),
            "bytes": c.nbytes,
            "source": c.source,
            "split": sp.describe(),
        }
        for c, item, sp in zip(corpora, items, splits, strict=True)
    ]
    return combined, split, groups, mixture


def _prepare_locked(
    corpus: Corpus,
    split: Split,
    groups: Groups,
    mixture: list[dict] | None,
    spec: str,
    brought: Tokenizer | None,
    out: Path,
    progress: bool,
    force: bool,
    log: Callable[[str], None],
    allow_lossy: bool,
) -> PreparedData:
    started = time.perf_counter()
    old_manifest = None if force else _try_read_manifest(out)
    if old_manifest is not None and not force:
        reused = _try_reuse_all(out, old_manifest, corpus, split, spec, allow_lossy, brought)
        if reused is not None:
            reused.last_prepare = {
                "reused": True,
                "tokenizer": "reused",
                "shards": "reused",
                "seconds": time.perf_counter() - started,
            }
            return reused

    # From here on the directory is being rewritten: drop the manifest first, so an interruption
    # leaves a directory that says "incomplete" rather than a manifest describing other files.
    (out / MANIFEST).unlink(missing_ok=True)
    tok = brought
    tokenizer_status = "loaded"
    if tok is None and old_manifest is not None:
        tok = _try_reuse_tokenizer(out, old_manifest, split, spec)
        tokenizer_status = "reused"
    if tok is None:
        tokenizer_status = "trained" if spec != "bytes" else "built"
        t0 = time.perf_counter()
        if spec != "bytes":
            log(f"training {spec} on the train split ({_mb(sum(d.nbytes for d in split.train))} MB)...")
        tok = train_tokenizer(spec, (d.text for d in split.train))
        if spec != "bytes":
            log(f"trained {spec} in {time.perf_counter() - t0:.1f}s (vocabulary {tok.vocab_size})")
    for name in TOKENIZER_FILES:  # a previous tokenizer of another kind must not linger
        (out / name).unlink(missing_ok=True)
    tok.save(out)

    dtype = dtype_for_vocab(tok.vocab_size)
    splits, ranges, lossy = {}, {}, []
    speed = {"bytes": 0, "tokens": 0, "seconds": 0.0, "verify_seconds": 0.0}
    for name in SPLITS:
        info, timing, ranges[name], problems = _write_split(
            out, groups[name], tok, dtype, name, progress, allow_lossy
        )
        splits[name] = info
        lossy += problems
        speed["bytes"] += info["bytes"]
        speed["tokens"] += info["tokens"] - info["documents"]
        speed["seconds"] += timing["encode"]
        speed["verify_seconds"] += timing["verify"]
    if lossy:
        log(
            f"warning: {tok.spec} is lossy on {len(lossy)} document(s), first {lossy[0]['document']!r}: "
            f"{lossy[0]['problem']}; accepted with --allow-lossy (BPB divides by the original bytes)"
        )

    manifest = _manifest(corpus, split, tok, splits, lossy)
    if mixture is not None:
        for entry in mixture:
            entry["splits"] = {name: ranges[name][entry["name"]] for name in SPLITS}
        manifest["mixture"] = {
            "corpora": mixture,
            "sampling": "each training sequence's corpus is drawn by weight from (data_seed, step), then a "
            "window inside that corpus's training stream",
            "validation": "BPB per corpus on its own validation stream; the total is their nats summed over "
            "their bytes summed",
        }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    data = load_prepared(out)
    data.last_prepare = {
        "reused": False,
        "tokenizer": tokenizer_status,
        "shards": "written",
        "seconds": time.perf_counter() - started,
        "tokenize_seconds": speed["seconds"],
        "tokenize_mb_per_s": speed["bytes"] / 1e6 / max(speed["seconds"], 1e-9),
        "tokenize_tokens_per_s": speed["tokens"] / max(speed["seconds"], 1e-9),
        "round_trip_seconds": speed["verify_seconds"],
        "lossy_documents": len(lossy),
    }
    return data


_OUR_FILES = {
    MANIFEST,
    *TOKENIZER_FILES,
    *(f"{s}{ext}" for s in SPLITS for ext in (".bin", ".bytes.bin")),
    ".lock",
}


def _check_output_dir(out: Path) -> None:
    """Only write into a new/empty directory or one that `prepare` wrote: never mix with other files."""
    if out.exists() and not out.is_dir():
        raise LumiError(f"--out {out}: exists and is not a directory; choose a new or empty directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUR_FILES and ".tmp" not in p.name)
        if foreign:
            raise LumiError(
                f"--out {out}: holds files `lumi data prepare` did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
            )


def _write_split(
    out: Path,
    groups: list[tuple[str, list[Document]]],
    tok: Tokenizer,
    dtype: np.dtype,
    name: str,
    progress: bool,
    allow_lossy: bool,
) -> tuple[dict, dict[str, float], dict[str, dict], list[dict]]:
    """Tokenize the documents (corpus by corpus) into `<name>.bin`, round-tripping every document.

    Returns the split's manifest entry, timings (encode / verify seconds), each corpus's token range
    and the lossy documents (only with ``allow_lossy``; without it the first one raises LumiError).
    """
    from lumi.data.download import sha256_file
    from lumi.progress import ProgressLine

    path, bytes_path = out / f"{name}.bin", out / f"{name}.bytes.bin"
    bytes_path.unlink(missing_ok=True)
    docs = [d for _, group in groups for d in group]
    total_bytes = sum(d.nbytes for d in docs)
    n_tokens, done_bytes, timing = 0, 0, {"encode": 0.0, "verify": 0.0}
    ranges: dict[str, dict] = {}
    lossy: list[dict] = []
    bar = ProgressLine(f"tokenizing {name}", total_bytes, enabled=progress)
    # Per-position byte counts are only kept when a lossy tokenizer is allowed (dropped if none was lossy).
    nbytes_writer = ShardWriter(bytes_path, BYTES_DTYPE) if allow_lossy else None
    try:
        with ShardWriter(path, dtype) as writer:
            for corpus_name, group in groups:
                start = n_tokens
                for batch in _batches(group, _BATCH_BYTES):
                    t0 = time.perf_counter()
                    encoded = tok.encode_batch([d.text for d in batch])
                    t1 = time.perf_counter()
                    timing["encode"] += t1 - t0
                    for doc, ids in zip(batch, encoded, strict=True):  # one id array per text
                        problem = tok.round_trip_problem(doc.text, ids)
                        if problem is not None and not allow_lossy:
                            raise LumiError(
                                f"tokenizer {tok.spec} is not lossless on document {doc.id!r} ({name} split): "
                                f"{problem}; BPB needs every byte accounted for, so it is refused — use a "
                                f"lossless tokenizer (bytes, bpe:N, sp:N) or pass --allow-lossy"
                            )
                        stream = np.concatenate(([tok.sep_id], ids)).astype(np.int64)
                        writer.write(stream)
                        if nbytes_writer is not None:
                            nbytes_writer.write(_charged_bytes(tok.token_bytes[stream], doc.nbytes))
                        if problem is not None:
                            lossy.append({"document": doc.id, "split": name, "problem": problem})
                        n_tokens += len(stream)
                    timing["verify"] += time.perf_counter() - t1
                    done_bytes += sum(d.nbytes for d in batch)
                    rate = done_bytes / 1e6 / max(timing["encode"], 1e-9)
                    bar.update(
                        done_bytes,
                        f"{_mb(done_bytes)}/{_mb(total_bytes)} MB, {n_tokens:,} tokens, {rate:.1f} MB/s",
                    )
                ranges[corpus_name] = {
                    "start": start,
                    "end": n_tokens,
                    "documents": len(group),
                    "bytes": sum(d.nbytes for d in group),
                    "tokens": n_tokens - start,
                }
        if nbytes_writer is not None:
            nbytes_writer.commit()
    finally:
        bar.close()
        if nbytes_writer is not None:
            nbytes_writer.abort()  # no-op after commit; removes the temp file after an error
    info = {
        "file": path.name,
        "dtype": np.dtype(dtype).name,
        "documents": len(docs),
        "bytes": total_bytes,
        "tokens": n_tokens,
        "sha256": sha256_file(path),
    }
    if lossy:
        info["bytes_file"] = bytes_path.name
        info["bytes_sha256"] = sha256_file(bytes_path)
    else:
        bytes_path.unlink(missing_ok=True)
    return info, timing, ranges, lossy


def _charged_bytes(token_bytes: np.ndarray, original: int) -> np.ndarray:
    """Per-position bytes of one document ([separator, *tokens]) that add up to its ORIGINAL size:
    a shortfall goes onto the last position, an excess is taken from the last positions (never below 0)."""
    charged = np.asarray(token_bytes, dtype=np.int64).copy()
    diff = original - int(charged.sum())
    if diff > 0:
        charged[-1] += diff
    for i in range(len(charged) - 1, -1, -1):
        if diff >= 0:
            break
        take = min(int(charged[i]), -diff)
        charged[i] -= take
        diff += take
    return charged


def _batches(docs: list[Document], max_bytes: int) -> Iterator[list[Document]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += doc.nbytes
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _manifest(corpus: Corpus, split: Split, tok: Tokenizer, splits: dict, lossy: list[dict]) -> dict:
    from lumi import __version__

    tokenizer = {
        **tok.describe(),
        "trained_on": "train",
        "train_sha256": split.split_hash("train"),
        "lossless": not lossy,
        "round_trip": "every document: the tokenizer's decoding gives it back and its per-token byte "
        "strings join to its UTF-8 bytes",
        "byte_accounting": LOSSY_ACCOUNTING if lossy else LOSSLESS_ACCOUNTING,
    }
    if lossy:
        tokenizer["lossy_documents"] = len(lossy)
        tokenizer["lossy_examples"] = lossy[:5]
    fingerprint = hashlib.sha256(
        f"lumi-prepared-v1\n{corpus.fingerprint}\n{split.split_hash('train')}\n{split.split_hash('val')}\n"
        f"{tok.fingerprint()}\n".encode()
    ).hexdigest()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "lumi_version": __version__,
        "fingerprint": fingerprint,
        "corpus": {
            "name": corpus.name,
            "fingerprint": corpus.fingerprint,
            "description": corpus.description,
            "documents": len(corpus.documents),
            "bytes": corpus.nbytes,
            "source": corpus.source,
        },
        "split": split.describe(),
        "tokenizer": tokenizer,
        "stream": "per document: separator, then the document's tokens; the separator covers 0 bytes",
        "splits": splits,
        "documents": split.assignment,
    }


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise LumiError(f"{directory}: no such directory; create it with `lumi data prepare`")
    if not path.is_file():
        raise LumiError(
            f"{path}: not found; {directory} is not a complete prepared-data directory "
            "(run `lumi data prepare`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LumiError(f"{path}: not valid JSON ({e}); re-run `lumi data prepare`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LumiError(f"{path}: not a Lumi prepared-data manifest; re-run `lumi data prepare`")
    if manifest.get("version") != FORMAT_VERSION:
        raise LumiError(
            f"{path}: manifest version {manifest.get('version')} is not supported "
            f"(this Lumi reads {FORMAT_VERSION}); re-run `lumi data prepare`"
        )
    try:
        for split in SPLITS:
            info = manifest["splits"][split]
            for key in ("file", "dtype", "documents", "bytes", "tokens", "sha256"):
                info[key]
        manifest["tokenizer"]["fingerprint"]
        manifest["fingerprint"]
    except (KeyError, TypeError) as e:
        raise LumiError(f"{path}: manifest lacks the field {e}; re-run `lumi data prepare`") from None
    return manifest


def _try_read_manifest(directory: Path) -> dict | None:
    try:
        return _read_manifest(directory)
    except LumiError:
        return None


def _try_reuse_all(
    out: Path,
    manifest: dict,
    corpus: Corpus,
    split: Split,
    spec: str,
    allow_lossy: bool,
    brought: Tokenizer | None,
) -> PreparedData | None:
    if (
        manifest["corpus"].get("fingerprint") != corpus.fingerprint
        or manifest["corpus"].get("name") != corpus.name
        or not (manifest["tokenizer"].get("lossless", True) or allow_lossy)
        or (brought is not None and manifest["tokenizer"].get("fingerprint") != brought.fingerprint())
        or manifest["split"].get("train_sha256") != split.split_hash("train")
        or manifest["split"].get("val_sha256") != split.split_hash("val")
        or manifest["tokenizer"].get("spec") != spec
    ):
        return None
    try:
        data = load_prepared(out)
        data.verify()
    except LumiError:
        return None
    return data


def _try_reuse_tokenizer(out: Path, manifest: dict, split: Split, spec: str) -> Tokenizer | None:
    """The saved tokenizer, if it is the requested spec and was trained on this exact train split."""
    if manifest["tokenizer"].get("spec") != spec or manifest["tokenizer"].get(
        "train_sha256"
    ) != split.split_hash("train"):
        return None
    try:
        tok = load_tokenizer(out)
    except LumiError:
        return None
    return tok if tok.fingerprint() == manifest["tokenizer"]["fingerprint"] else None


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _silent(msg: str) -> None:
    pass

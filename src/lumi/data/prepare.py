"""`prepare`: corpus -> split -> tokenizer (trained on train only) -> token shards + manifest.

A prepared directory holds
    manifest.json                  what is inside (see `_manifest`); written last, so its presence
                                   means the directory is complete
    lumi_tokenizer.json            tokenizer spec + fingerprint (and tokenizer.json for BPE)
    train.bin, val.bin             token shards (see lumi.data.shards)
Each split's stream is, for every document in id order, the separator followed by the document's
tokens. The separator covers 0 bytes, so the bytes of all targets of a split (every position
after the first) add up exactly to the UTF-8 length of its documents.
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
from lumi.data.paths import default_data_dir
from lumi.data.shards import ShardWriter, dtype_for_vocab, read_header, read_shard
from lumi.data.split import Split, split_documents
from lumi.data.tokenizers import Tokenizer, load_tokenizer, parse_tokenizer_spec, train_tokenizer
from lumi.errors import LumiError, write_error_text
from lumi.io import write_text_atomic
from lumi.lock import lock_directory

__all__ = ["SPLITS", "PreparedData", "default_data_dir", "load_prepared", "prepare"]

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
FORMAT = "lumi-prepared"
FORMAT_VERSION = 1
_BATCH_BYTES = 4 << 20  # tokenize about this much text per call (keeps memory flat, feeds the progress bar)


class PreparedData:
    """A prepared data directory: manifest, tokenizer and memory-mapped token streams."""

    def __init__(self, directory: Path, manifest: dict, tokenizer: Tokenizer) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.last_prepare: dict = {}  # how `prepare` produced this object (reused/written, timings)
        self._tokens: dict[str, np.ndarray] = {}

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
            path = self.directory / info["file"]
            if sha256_file(path) != info["sha256"]:
                raise LumiError(
                    f"{path}: content does not match the sha256 in {MANIFEST} (the shard was modified or "
                    f"is corrupt); re-run `lumi data prepare --force`"
                )

    def target_bytes(self, split: str) -> np.ndarray:
        """int64 UTF-8 bytes covered by the token at each position (0 at separators)."""
        return self.tokenizer.token_bytes[np.asarray(self.tokens(split))]

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
            tokens = np.asarray(self.tokens(split))  # checks the id range
            counted = int(self.tokenizer.token_bytes[tokens].sum())
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
    return data


def prepare(
    corpus: str,
    tokenizer: str,
    out: Path | None = None,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> PreparedData:
    """Prepare `corpus` with `tokenizer` into `out` (default: default_data_dir(corpus, tokenizer)).

    Re-running reuses what is valid: everything when nothing changed, or just the trained
    tokenizer when only the shards are damaged. `force=True` rebuilds from scratch.
    The returned object's `last_prepare` says what was reused and how fast tokenizing was.
    """
    if log is None:
        log = _stderr_log if progress else _silent
    spec = parse_tokenizer_spec(tokenizer)  # a bad spec fails before any download
    corpus_obj = load_corpus(corpus, log=log)
    split = split_documents(corpus_obj.documents)
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
            return _prepare_locked(corpus_obj, split, str(spec), out, progress, force, log)
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


def _prepare_locked(
    corpus: Corpus,
    split: Split,
    spec: str,
    out: Path,
    progress: bool,
    force: bool,
    log: Callable[[str], None],
) -> PreparedData:
    started = time.perf_counter()
    old_manifest = None if force else _try_read_manifest(out)
    if old_manifest is not None and not force:
        reused = _try_reuse_all(out, old_manifest, corpus, split, spec)
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
    tok = None if old_manifest is None else _try_reuse_tokenizer(out, old_manifest, split, spec)
    tokenizer_status = "reused"
    if tok is None:
        tokenizer_status = "trained" if spec != "bytes" else "built"
        t0 = time.perf_counter()
        if spec != "bytes":
            log(f"training {spec} on the train split ({_mb(sum(d.nbytes for d in split.train))} MB)...")
        tok = train_tokenizer(spec, (d.text for d in split.train))
        if spec != "bytes":
            log(f"trained {spec} in {time.perf_counter() - t0:.1f}s (vocabulary {tok.vocab_size})")
        tok.save(out)

    dtype = dtype_for_vocab(tok.vocab_size)
    splits, speed = {}, {"bytes": 0, "tokens": 0, "seconds": 0.0}
    for name in SPLITS:
        docs = split.documents(name)
        info, seconds = _write_split(out / f"{name}.bin", docs, tok, dtype, name, progress)
        splits[name] = info
        speed["bytes"] += info["bytes"]
        speed["tokens"] += info["tokens"] - info["documents"]
        speed["seconds"] += seconds

    manifest = _manifest(corpus, split, tok, splits)
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
    }
    return data


_OUR_FILES = {MANIFEST, "lumi_tokenizer.json", "tokenizer.json", "train.bin", "val.bin", ".lock"}


def _check_output_dir(out: Path) -> None:
    """Only write into a new/empty directory or one that `prepare` wrote: never mix with other files."""
    if out.exists() and not out.is_dir():
        raise LumiError(f"--out {out}: exists and is not a directory; choose a new or empty directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUR_FILES and ".tmp-" not in p.name)
        if foreign:
            raise LumiError(
                f"--out {out}: holds files `lumi data prepare` did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
            )


def _write_split(
    path: Path, docs: list[Document], tok: Tokenizer, dtype: np.dtype, name: str, progress: bool
) -> tuple[dict, float]:
    """Tokenize documents into a shard; checks every document's byte count exactly."""
    from lumi.progress import ProgressLine

    total_bytes = sum(d.nbytes for d in docs)
    n_tokens, done_bytes, seconds = 0, 0, 0.0
    bar = ProgressLine(f"tokenizing {name}", total_bytes, enabled=progress)
    try:
        with ShardWriter(path, dtype) as writer:
            for batch in _batches(docs, _BATCH_BYTES):
                t0 = time.perf_counter()
                encoded = tok.encode_batch([d.text for d in batch])
                seconds += time.perf_counter() - t0
                for doc, ids in zip(batch, encoded, strict=True):  # one id array per text
                    covered = int(tok.token_bytes[ids].sum())
                    if covered != doc.nbytes:  # would be a tokenizer bug: refuse to write wrong accounting
                        raise RuntimeError(
                            f"tokenizer {tok.spec} covers {covered} bytes of document {doc.id!r}, "
                            f"which has {doc.nbytes}"
                        )
                    writer.write(np.concatenate(([tok.sep_id], ids)))
                    n_tokens += 1 + len(ids)
                done_bytes += sum(d.nbytes for d in batch)
                rate = done_bytes / 1e6 / max(seconds, 1e-9)
                bar.update(
                    done_bytes,
                    f"{_mb(done_bytes)}/{_mb(total_bytes)} MB, {n_tokens:,} tokens, {rate:.1f} MB/s",
                )
    finally:
        bar.close()
    from lumi.data.download import sha256_file

    info = {
        "file": path.name,
        "dtype": np.dtype(dtype).name,
        "documents": len(docs),
        "bytes": total_bytes,
        "tokens": n_tokens,
        "sha256": sha256_file(path),
    }
    return info, seconds


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


def _manifest(corpus: Corpus, split: Split, tok: Tokenizer, splits: dict) -> dict:
    from lumi import __version__

    tokenizer = {**tok.describe(), "trained_on": "train", "train_sha256": split.split_hash("train")}
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


def _try_reuse_all(out: Path, manifest: dict, corpus: Corpus, split: Split, spec: str) -> PreparedData | None:
    if (
        manifest["corpus"].get("fingerprint") != corpus.fingerprint
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

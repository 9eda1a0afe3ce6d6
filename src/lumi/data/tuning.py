"""The tuning split: hyperparameters are chosen on held-out *training* documents, never on validation.

``carve_tuning_split(data)`` writes a derived prepared directory whose ``train.bin`` is the first ~90%
of the parent's training stream and whose ``val.bin`` is the rest, cut at a document separator so no
document is on both sides. Tuning runs are ordinary `lumi train` runs on that directory: their "val" BPB
is the tuning-split BPB. A mixture's corpora are each cut on their own (the tuning split holds every corpus,
and the ranges in the manifest say where). The parent's validation split is never read or copied; final runs still train
on the parent's full training split and are scored on its validation split.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from lumi.data.paths import lumi_home
from lumi.data.prepare import BYTES_DTYPE, MANIFEST, PreparedData, load_prepared
from lumi.data.shards import write_shard
from lumi.data.tokenizers import TOKENIZER_FILES
from lumi.errors import LumiError

TUNE_FRACTION = 0.1  # of the training tokens, held out for scoring the tuning runs


def tuning_dir(data: PreparedData, fraction: float = TUNE_FRACTION) -> Path:
    """$LUMI_HOME/prepared/tune/<parent>-<fingerprint>-<percent>: one derived directory per parent content."""
    pct = f"{100 * fraction:g}".replace(".", "p")
    return lumi_home() / "prepared" / "tune" / f"{data.directory.name}-{data.fingerprint()[:12]}-{pct}pct"


def cut_position(tokens: np.ndarray, sep_id: int, fraction: float) -> int:
    """The separator position closest to (1 - fraction) of the stream, leaving a document on each side."""
    seps = np.flatnonzero(np.asarray(tokens) == sep_id)
    seps = seps[seps > 0]  # position 0 starts the first document: cutting there leaves nothing to train on
    if not len(seps):
        raise LumiError(
            "the training split holds a single document, so no tuning split can be carved from it at "
            "document boundaries; use a corpus with more documents"
        )
    target = (1.0 - fraction) * len(tokens)
    return int(seps[np.argmin(np.abs(seps - target))])


def carve_tuning_split(
    data: PreparedData, fraction: float = TUNE_FRACTION, out: Path | None = None
) -> PreparedData:
    """The derived directory (written once, then reused): train = parent train before the cut, val = after."""
    if not 0.0 < fraction < 0.5:
        raise LumiError(f"the tuning split fraction must be in (0, 0.5), got {fraction}")
    out = Path(out) if out is not None else tuning_dir(data, fraction)
    fingerprint = hashlib.sha256(
        f"lumi-tune-split-v1\n{data.fingerprint()}\n{fraction!r}\n".encode()
    ).hexdigest()
    if (out / MANIFEST).is_file():
        try:
            existing = load_prepared(out)
            if existing.fingerprint() == fingerprint:
                return existing
        except LumiError:
            pass
        shutil.rmtree(out)
    tokens = np.asarray(data.tokens("train"))
    charged = np.asarray(data.target_bytes("train"))
    # Each corpus (one, or a mixture's) is cut on its own, so the tuning split holds every corpus.
    ranges = data.corpus_ranges("train")
    cuts = {name: start + cut_position(tokens[start:end], data.tokenizer.sep_id, fraction)
            for name, (start, end) in ranges.items()}  # fmt: skip
    pieces = {
        "train": [(name, start, cuts[name]) for name, (start, _) in ranges.items()],
        "val": [(name, cuts[name], end) for name, (_, end) in ranges.items()],
    }
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # another process may carve the same split
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = tokens.dtype
    splits = {}
    new_ranges: dict[str, dict[str, dict]] = {name: {} for name in ranges}
    for name, parts in pieces.items():
        part = np.concatenate([tokens[a:b] for _, a, b in parts])
        nbytes = np.concatenate([charged[a:b] for _, a, b in parts])
        path = tmp / f"{name}.bin"
        write_shard(path, part, dtype)
        from lumi.data.download import sha256_file

        splits[name] = {
            "file": path.name,
            "dtype": np.dtype(dtype).name,
            "documents": int(np.count_nonzero(part == data.tokenizer.sep_id)),
            "bytes": int(nbytes.sum()),
            "tokens": len(part),
            "sha256": sha256_file(path),
        }
        if not data.lossless:  # the parent's per-position charges travel with the tokens
            write_shard(tmp / f"{name}.bytes.bin", nbytes, BYTES_DTYPE)
            splits[name]["bytes_file"] = f"{name}.bytes.bin"
            splits[name]["bytes_sha256"] = sha256_file(tmp / f"{name}.bytes.bin")
        at = 0
        for corpus, a, b in parts:
            new_ranges[corpus][name] = {
                "start": at,
                "end": at + (b - a),
                "documents": int(np.count_nonzero(tokens[a:b] == data.tokenizer.sep_id)),
                "bytes": int(charged[a:b].sum()),
                "tokens": b - a,
            }
            at += b - a
    for f in TOKENIZER_FILES:
        if (data.directory / f).is_file():
            shutil.copyfile(data.directory / f, tmp / f)
    manifest = copy.deepcopy(data.manifest)
    manifest["fingerprint"] = fingerprint
    manifest["splits"] = splits
    manifest["documents"] = []  # the parent's assignment lists validation documents: not carried over
    for entry in (manifest.get("mixture") or {}).get("corpora", []):
        entry["splits"] = new_ranges[entry["name"]]
    manifest["tuning_split"] = {
        "parent": str(data.directory),
        "parent_fingerprint": data.fingerprint(),
        "fraction": fraction,
        "cut_token": cuts if len(cuts) > 1 else next(iter(cuts.values())),
        "parent_train_tokens": len(tokens),
        "method": "each corpus's training stream cut at the document separator nearest (1 - fraction); "
        "train = before the cut, val (the tuning split) = after it; the parent's validation split is "
        "not used",
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:  # another process put the same split there first
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(out)

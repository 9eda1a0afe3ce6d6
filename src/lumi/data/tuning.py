"""The tuning split: hyperparameters are chosen on held-out *training* documents, never on validation.

``carve_tuning_split(data)`` writes a derived prepared directory whose ``train.bin`` is the first ~90%
of the parent's training stream and whose ``val.bin`` is the rest, cut at a document separator so no
document is on both sides. Tuning runs are ordinary `lumi train` runs on that directory: their "val" BPB
is the tuning-split BPB. The parent's validation split is never read or copied; final runs still train
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
from lumi.data.prepare import MANIFEST, PreparedData, load_prepared
from lumi.data.shards import write_shard
from lumi.errors import LumiError

TUNE_FRACTION = 0.1  # of the training tokens, held out for scoring the tuning runs
TOKENIZER_FILES = ("lumi_tokenizer.json", "tokenizer.json")


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
    cut = cut_position(tokens, data.tokenizer.sep_id, fraction)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # another process may carve the same split
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = tokens.dtype
    splits = {}
    for name, part in (("train", tokens[:cut]), ("val", tokens[cut:])):
        path = tmp / f"{name}.bin"
        write_shard(path, part, dtype)
        from lumi.data.download import sha256_file

        splits[name] = {
            "file": path.name,
            "dtype": np.dtype(dtype).name,
            "documents": int(np.count_nonzero(part == data.tokenizer.sep_id)),
            "bytes": int(data.tokenizer.token_bytes[part].sum()),
            "tokens": len(part),
            "sha256": sha256_file(path),
        }
    for f in TOKENIZER_FILES:
        if (data.directory / f).is_file():
            shutil.copyfile(data.directory / f, tmp / f)
    manifest = copy.deepcopy(data.manifest)
    manifest["fingerprint"] = fingerprint
    manifest["splits"] = splits
    manifest["documents"] = []  # the parent's assignment lists validation documents: not carried over
    manifest["tuning_split"] = {
        "parent": str(data.directory),
        "parent_fingerprint": data.fingerprint(),
        "fraction": fraction,
        "cut_token": cut,
        "parent_train_tokens": len(tokens),
        "method": "the parent's training stream cut at the document separator nearest (1 - fraction); "
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

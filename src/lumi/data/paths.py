"""Where Lumi keeps downloads and prepared data: $LUMI_HOME, default ~/.cache/lumi."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path


def lumi_home() -> Path:
    """Root of Lumi's cache: $LUMI_HOME if set, else ~/.cache/lumi."""
    env = os.environ.get("LUMI_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lumi"


def downloads_dir() -> Path:
    return lumi_home() / "downloads"


def default_data_dir(corpus: str | None = None, tokenizer: str | None = None) -> Path:
    """$LUMI_HOME/prepared, or with a corpus and tokenizer spec the directory `lumi data prepare` uses.

    Simple specs keep a readable name ("shakespeare__bpe-4096"); specs with paths, globs or
    other characters get a sanitised name plus a short hash, so two specs never share a directory.
    """
    root = lumi_home() / "prepared"
    if corpus is None and tokenizer is None:
        return root
    if corpus is None or tokenizer is None:
        raise ValueError("default_data_dir needs both a corpus and a tokenizer spec (or neither)")
    from lumi.data.tokenizers import parse_tokenizer_spec
    from lumi.errors import LumiError

    with contextlib.suppress(LumiError):
        tokenizer = str(parse_tokenizer_spec(tokenizer))  # " bpe:4096" and "bpe:4096" share a directory
    return root / f"{_safe_name(corpus.strip())}__{_safe_name(tokenizer)}"


def _safe_name(spec: str) -> str:
    if re.fullmatch(r"[a-z0-9_]+(:[A-Za-z0-9_.-]+)?", spec) and len(spec) <= 60 and ".." not in spec:
        return spec.replace(":", "-")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.")[:48] or "x"
    return f"{safe}-{hashlib.sha256(spec.encode('utf-8')).hexdigest()[:10]}"

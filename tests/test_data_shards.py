"""Token shards: header format, dtype choice, and clear errors for truncated/foreign/mismatched files."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from lumi.data.prepare import load_prepared
from lumi.data.shards import HEADER_SIZE, MAGIC, ShardWriter, dtype_for_vocab, read_header, read_shard, write_shard
from lumi.errors import LumiError


def test_dtype_choice():
    assert dtype_for_vocab(257) == np.uint16
    assert dtype_for_vocab(65536) == np.uint16  # ids 0..65535 fit
    assert dtype_for_vocab(65537) == np.uint32


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_round_trip_and_layout(tmp_path, dtype):
    tokens = np.array([256, 0, 1, 65535, 7], dtype=np.int64)
    path = tmp_path / "t.bin"
    write_shard(path, tokens, np.dtype(dtype))
    raw = path.read_bytes()
    assert raw[:8] == MAGIC == b"LUMITOK\0"
    assert struct.unpack("<IIQ", raw[8:24]) == (1, 1 if dtype == np.uint16 else 2, 5)
    assert len(raw) == HEADER_SIZE + 5 * np.dtype(dtype).itemsize
    got = read_shard(path, expected_count=5, expected_dtype=dtype)
    assert isinstance(got, np.memmap) and got.dtype == dtype
    assert got.tolist() == tokens.tolist()


def test_writer_streams_and_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "s.bin"
    with ShardWriter(path, np.uint16) as w:
        w.write(np.arange(3))
        w.write(np.arange(3, 10))
    assert read_shard(path).tolist() == list(range(10))
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "fail.bin", np.uint16) as w:
            w.write(np.arange(5))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]  # no temp file, no partial shard
    with pytest.raises(ValueError, match="cannot be stored"):
        with ShardWriter(tmp_path / "big.bin", np.uint16) as w:
            w.write(np.array([70000]))
    assert not (tmp_path / "big.bin").exists()


def _shard(tmp_path, n=100):
    path = tmp_path / "train.bin"
    write_shard(path, np.arange(n), np.uint16)
    return path


def test_truncated_shard(tmp_path):
    path = _shard(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(LumiError, match=rf"{path}: token shard is truncated"):
        read_shard(path)
    path.write_bytes(MAGIC[:5])
    with pytest.raises(LumiError, match=rf"{path}: token shard is truncated \(5 bytes"):
        read_shard(path)


def test_foreign_file(tmp_path):
    path = _shard(tmp_path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + path.read_bytes()[8:])
    with pytest.raises(LumiError, match=rf"{path}: not a Lumi token shard"):
        read_shard(path)
    path.write_bytes(b"hi")
    with pytest.raises(LumiError, match=rf"{path}: not a Lumi token shard"):
        read_shard(path)


def test_wrong_dtype_and_version(tmp_path):
    path = _shard(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[12:16] = struct.pack("<I", 9)
    path.write_bytes(bytes(raw))
    with pytest.raises(LumiError, match=rf"{path}: unknown token dtype code 9"):
        read_shard(path)
    path = _shard(tmp_path)
    with pytest.raises(LumiError, match=rf"{path}: token dtype is uint16 but the manifest says uint32"):
        read_shard(path, expected_dtype=np.uint32)
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(LumiError, match="format version 2 is not supported"):
        read_shard(path)


def test_count_mismatch_and_trailing_bytes(tmp_path):
    path = _shard(tmp_path)
    with pytest.raises(LumiError, match=rf"{path}: holds 100 tokens but the manifest says 99"):
        read_shard(path, expected_count=99)
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(LumiError, match="2 unexpected trailing bytes"):
        read_header(path)
    path.unlink()
    with pytest.raises(LumiError, match=rf"{path}: token shard is missing"):
        read_shard(path)


# --- the same damage inside a prepared directory: load_prepared and the CLI name the file ---------

@pytest.fixture
def damaged(tiny_prepared, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(tiny_prepared.directory, copy)
    return copy


def _cli_info(directory):
    return subprocess.run([sys.executable, "-m", "lumi", "data", "info", str(directory)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("damage,fragment", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "token shard is truncated"),
    (lambda p: p.write_bytes(b"GARBAGE!" + p.read_bytes()[8:]), "not a Lumi token shard"),
    (lambda p: p.write_bytes(p.read_bytes()[:12] + struct.pack("<I", 2) + p.read_bytes()[16:]),
     "token shard is truncated"),  # header claims uint32: the file is too short for that
    (lambda p: p.unlink(), "token shard is missing"),
])
def test_prepared_dir_with_damaged_shard(damaged, damage, fragment):
    damage(damaged / "val.bin")
    with pytest.raises(LumiError, match=fragment) as err:
        load_prepared(damaged)
    assert str(damaged / "val.bin") in str(err.value)
    proc = _cli_info(damaged)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(damaged / "val.bin") in proc.stderr and fragment in proc.stderr


def test_prepared_dir_with_shard_of_wrong_dtype(damaged):
    """A well-formed uint32 shard where the manifest says uint16: caught by the manifest check."""
    tokens = np.asarray(read_shard(damaged / "train.bin"))
    write_shard(damaged / "train.bin", tokens, np.uint32)
    with pytest.raises(LumiError, match=rf"{damaged / 'train.bin'}: token dtype is uint32 but manifest.json says uint16"):
        load_prepared(damaged)


def test_prepared_dir_with_shard_from_other_data(damaged):
    """A valid shard with a different token count than the manifest records."""
    write_shard(damaged / "train.bin", np.arange(10), np.uint16)
    with pytest.raises(LumiError, match=rf"{damaged / 'train.bin'}: holds 10 tokens but manifest.json says"):
        load_prepared(damaged)


def test_prepared_dir_manifest_problems(damaged):
    manifest = damaged / "manifest.json"
    manifest.write_text("{oops")
    with pytest.raises(LumiError, match=rf"{manifest}: not valid JSON"):
        load_prepared(damaged)
    manifest.unlink()
    with pytest.raises(LumiError, match=rf"{manifest}: not found"):
        load_prepared(damaged)

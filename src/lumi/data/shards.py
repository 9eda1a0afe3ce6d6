"""Token shards: one flat binary file per split, read with np.memmap.

Layout (little-endian), 32-byte header then the tokens:
    magic   8 bytes   b"LUMITOK\\0"
    version uint32    1
    dtype   uint32    1 = uint16, 2 = uint32
    count   uint64    number of tokens
    (8 reserved zero bytes)
    tokens  count * itemsize bytes
Files are written to a temporary name and renamed into place, so a shard is never half-written.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from lumi.errors import LumiError

MAGIC = b"LUMITOK\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
HEADER_SIZE = HEADER.size  # 32
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
CODE_OF_DTYPE = {v: k for k, v in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return DTYPE_CODES[1] if vocab_size <= 1 << 16 else DTYPE_CODES[2]


class ShardWriter:
    """Append token arrays, then `commit()`; leaving the `with` block on an error removes the temp file."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"shard dtype must be uint16 or uint32, not {dtype}")
        self.count = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = open(self._tmp, "wb")
        self._file.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], 0))
        self._limit = np.iinfo(self.dtype).max

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > self._limit):
            raise ValueError(f"token ids outside 0..{self._limit} cannot be stored as {self.dtype}")
        self._file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.count += int(tokens.size)

    def commit(self) -> None:
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], self.count))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._file.closed:
            self.commit()


def write_shard(path: Path, tokens: np.ndarray, dtype: np.dtype) -> None:
    with ShardWriter(path, dtype) as w:
        w.write(tokens)


def read_header(path: Path) -> tuple[np.dtype, int]:
    """(dtype, token count) of a shard, after checking magic, version, dtype and file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise LumiError(f"{path}: token shard is missing; re-run `lumi data prepare`") from None
    except OSError as e:
        raise LumiError(f"{path}: cannot read token shard ({e.strerror})") from None
    if len(head) < HEADER_SIZE:
        if head != MAGIC[: len(head)]:
            raise LumiError(f"{path}: not a Lumi token shard (wrong magic bytes); re-run `lumi data prepare`")
        raise LumiError(
            f"{path}: token shard is truncated ({size} bytes, the header alone is {HEADER_SIZE}); "
            "re-run `lumi data prepare`"
        )
    magic, version, code, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise LumiError(
            f"{path}: not a Lumi token shard (magic {magic!r}, expected {MAGIC!r}); "
            "re-run `lumi data prepare`"
        )
    if version != VERSION:
        raise LumiError(
            f"{path}: token shard format version {version} is not supported (this Lumi reads {VERSION})"
        )
    if code not in DTYPE_CODES:
        raise LumiError(
            f"{path}: unknown token dtype code {code} in the header (accepted: 1 = uint16, 2 = uint32)"
        )
    dtype = DTYPE_CODES[code]
    expected = HEADER_SIZE + count * dtype.itemsize
    if size < expected:
        raise LumiError(
            f"{path}: token shard is truncated ({size} bytes, header says {count} {dtype.name} tokens "
            f"= {expected} bytes); re-run `lumi data prepare`"
        )
    if size > expected:
        raise LumiError(
            f"{path}: token shard has {size - expected} unexpected trailing bytes "
            f"(header says {count} {dtype.name} tokens); re-run `lumi data prepare`"
        )
    return dtype, int(count)


def read_shard(
    path: Path, expected_count: int | None = None, expected_dtype: np.dtype | None = None
) -> np.ndarray:
    """Memory-map a shard read-only after validating it (and its count/dtype against the manifest)."""
    dtype, count = read_header(path)
    if expected_dtype is not None and dtype != np.dtype(expected_dtype):
        raise LumiError(
            f"{path}: token dtype is {dtype.name} but the manifest says {np.dtype(expected_dtype).name}; "
            "re-run `lumi data prepare`"
        )
    if expected_count is not None and count != expected_count:
        raise LumiError(
            f"{path}: holds {count} tokens but the manifest says {expected_count}; re-run `lumi data prepare`"
        )
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,))

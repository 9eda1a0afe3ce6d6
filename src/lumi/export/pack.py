"""`lumi pack`: a compressed, size-limited artifact of a trained model (parameter-golf style).

Artifact file: ``LUMIPACK`` | format version (1 byte) | codec id (1 byte) | sha256 of the compressed
payload (32 bytes) | compressed payload. The payload is an 8-byte little-endian header length, a JSON
header (model name and config, tokenizer, bits, one entry per tensor) and the tensor bytes: every
parameter with >= 2 dimensions quantised per row (lumi.export.quant; fp16 scales), every other tensor
(norm weights, biases, scalars, buffers) kept in float32. Tensors shared under two names (tied
embeddings) are stored once.
"""

from __future__ import annotations

import ast
import hashlib
import json
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lumi.errors import LumiError
from lumi.export.quant import QuantizedMatrix, dequantize, quantize

if TYPE_CHECKING:
    from lumi.data.tokenizers import Tokenizer
    from lumi.models.base import LumiModel

MAGIC = b"LUMIPACK"
VERSION = 1
CODECS = ("zlib", "lzma", "zstd")
_CODEC_IDS = {name: i + 1 for i, name in enumerate(CODECS)}
_PREFIX = struct.Struct("<8sBB32s")
SIZE_LIMIT = 16_000_000  # bytes, artifact + code (parameter golf)


@dataclass
class Packed:
    payload: bytes  # uncompressed
    quantized: int  # parameters stored as integer codes
    kept: int  # parameters / buffer elements kept in float32


def pack_model(name: str, model: LumiModel, tokenizer: Tokenizer, bits: int, facts: dict[str, Any]) -> Packed:
    """Quantise ``model``'s state into an uncompressed payload."""
    from dataclasses import asdict

    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    quantized = kept = 0
    for key, tensor in model.state_dict(keep_vars=False).items():
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        entry: dict[str, Any] = {"name": key, "shape": list(tensor.shape), "offset": offset}
        if tensor.is_floating_point() and tensor.dim() >= 2:
            qm = quantize(tensor, bits)
            parts = [qm.codes, qm.scales.astype("<f2").tobytes()]
            entry.update(kind="q", codes=len(qm.codes))
            quantized += tensor.numel()
        else:
            arr = tensor.detach().cpu()
            values = (arr.to(torch.float32) if arr.is_floating_point() else arr).numpy()
            parts = [values.astype(values.dtype.newbyteorder("<")).tobytes()]
            entry.update(kind="raw", dtype=str(values.dtype))
            kept += tensor.numel()
        nbytes = sum(len(p) for p in parts)
        entry["nbytes"] = nbytes
        offset += nbytes
        blobs += parts
        entries.append(entry)
    header = {
        "format": "lumi-pack",
        "version": VERSION,
        "model": name,
        "config": asdict(model.config),
        "bits": bits,
        "tokenizer": _tokenizer_record(tokenizer),
        "tensors": entries,
        "aliases": aliases,
        "source": facts,
    }
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return Packed(struct.pack("<Q", len(head)) + head + b"".join(blobs), quantized, kept)


def compress(payload: bytes, codec: str) -> bytes:
    """The artifact's bytes: prefix (magic, version, codec, sha256) + the compressed payload."""
    body = _compressor(codec)(payload)
    return _PREFIX.pack(MAGIC, VERSION, _CODEC_IDS[codec], hashlib.sha256(body).digest()) + body


def read_artifact(data: bytes, where: str) -> dict[str, Any]:
    """Verify and decompress an artifact; returns its header with the tensors restored (float32)."""
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise LumiError(f"{where} is not a Lumi pack file (it does not start with {MAGIC.decode()})")
    _, version, codec_id, digest = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise LumiError(
            f"{where}: pack format version {version} is not supported (this Lumi reads {VERSION})"
        )
    codec = next((c for c, i in _CODEC_IDS.items() if i == codec_id), None)
    if codec is None:
        raise LumiError(f"{where}: unknown codec id {codec_id}")
    body = data[_PREFIX.size :]
    actual = hashlib.sha256(body).digest()
    if actual != digest:
        raise LumiError(
            f"{where} is corrupted: checksum mismatch (sha256 of its payload {actual.hex()[:16]}... != recorded "
            f"{digest.hex()[:16]}...)"
        )
    payload = _decompressor(codec)(body)
    (head_len,) = struct.unpack_from("<Q", payload)
    header = json.loads(payload[8 : 8 + head_len].decode("utf-8"))
    blob = memoryview(payload)[8 + head_len :]
    state: dict[str, torch.Tensor] = {}
    for e in header["tensors"]:
        raw = bytes(blob[e["offset"] : e["offset"] + e["nbytes"]])
        shape = tuple(e["shape"])
        if e["kind"] == "q":
            codes, scales = raw[: e["codes"]], np.frombuffer(raw[e["codes"] :], dtype="<f2")
            state[e["name"]] = dequantize(QuantizedMatrix(shape, header["bits"], codes, scales))
        else:
            state[e["name"]] = torch.from_numpy(
                np.frombuffer(raw, dtype=np.dtype(e["dtype"])).copy().reshape(shape)
            )
    for alias, target in header["aliases"].items():
        state[alias] = state[target]
    header["state"] = state
    header["codec"] = codec
    return header


def unpacked_model(header: dict[str, Any]) -> tuple[LumiModel, Tokenizer]:
    """The model and tokenizer an artifact holds (weights dequantised to float32)."""
    from lumi.models.registry import model_from_config

    model = model_from_config(header["model"], header["config"])
    missing, unexpected = model.load_state_dict(header["state"], strict=False)
    if missing or unexpected:
        raise LumiError(
            f"the packed weights do not fit model {header['model']!r}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    return model.eval(), _tokenizer_from(header["tokenizer"])


def code_files(model_cls: type) -> list[Path]:
    """The source files a packed model needs to run: the model's module and, recursively, every `lumi`
    module it imports at module level, plus this module and the dequantiser."""
    import importlib.util
    import inspect

    start = Path(inspect.getfile(model_cls)).resolve()
    todo = [start, Path(__file__).resolve(), Path(dequantize.__code__.co_filename).resolve()]
    seen: list[Path] = []
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lumi":
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "lumi"]
            for mod in names:
                try:
                    spec = importlib.util.find_spec(mod)
                except (ImportError, ValueError):
                    continue
                if spec is not None and spec.origin and spec.origin.endswith(".py"):
                    todo.append(Path(spec.origin).resolve())
    return sorted(seen)


def parse_size(text: str) -> int:
    """'16MB' -> 16,000,000; '16MiB' -> 16,777,216; plain numbers are bytes."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]|[bB])?\s*", str(text))
    if not m:
        raise LumiError(f"size {text!r} does not parse; give bytes or a unit: 16MB, 15.5MB, 16MiB, 500kB")
    unit = (m.group(2) or "b").lower()
    mult = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}[unit]
    return int(float(m.group(1)) * mult)


# -- codecs and tokenizers ------------------------------------------------------------------------------


def _compressor(codec: str) -> Callable[[bytes], bytes]:
    if codec == "zlib":
        return lambda b: zlib.compress(b, 9)
    if codec == "lzma":
        return lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)
    if codec == "zstd":
        return _zstd().ZstdCompressor(level=22).compress
    raise LumiError(f"unknown codec {codec!r}; codecs: {', '.join(CODECS)}")


def _decompressor(codec: str) -> Callable[[bytes], bytes]:
    if codec == "zlib":
        return zlib.decompress
    if codec == "lzma":
        return lzma.decompress
    return _zstd().ZstdDecompressor().decompress


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise LumiError(
            "the zstd codec needs the `zstandard` package: pip install 'lumi-lab[pack]' (or use zlib / lzma)"
        ) from None
    return zstandard


def require_codec(codec: str) -> None:
    """LumiError naming what to install (or the codecs there are) unless ``codec`` can run here."""
    if codec not in CODECS:
        raise LumiError(f"unknown codec {codec!r}; codecs: {', '.join(CODECS)}")
    if codec == "zstd":
        _zstd()


def codec_available(codec: str) -> bool:
    try:
        require_codec(codec)
    except LumiError:
        return False
    return True


def _tokenizer_record(tokenizer: Tokenizer) -> dict[str, Any]:
    """bytes: the spec; bpe: its definition (JSON); any other kind (sp, file, hf): the files it saves."""
    import base64
    import tempfile

    from lumi.data.tokenizers import BpeTokenizer, BytesTokenizer

    if isinstance(tokenizer, BytesTokenizer):
        return {"spec": tokenizer.spec, "definition": None}
    if isinstance(tokenizer, BpeTokenizer):
        return {"spec": tokenizer.spec, "definition": tokenizer.definition}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        files = {
            p.name: base64.b64encode(p.read_bytes()).decode("ascii") for p in sorted(Path(tmp).iterdir())
        }
    return {"spec": tokenizer.spec, "files": files}


def _tokenizer_from(record: dict[str, Any]) -> Tokenizer:
    import base64
    import tempfile

    from lumi.data.tokenizers import BpeTokenizer, BytesTokenizer, load_tokenizer

    if record.get("spec") == "bytes":
        return BytesTokenizer()
    if isinstance(record.get("files"), dict):
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in record["files"].items():
                (Path(tmp) / Path(name).name).write_bytes(base64.b64decode(data))
            return load_tokenizer(Path(tmp))
    if record.get("definition") is None:
        raise LumiError(f"the pack's tokenizer {record.get('spec')!r} has no definition")
    return BpeTokenizer(json.dumps(record["definition"], ensure_ascii=False), str(record["spec"]))

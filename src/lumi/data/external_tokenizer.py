"""Tokenizers researchers bring: `file:PATH` (a Hugging Face tokenizer.json or a SentencePiece .model)
and `hf:NAME` (tokenizer.json from the Hugging Face hub, when online).

The file is copied into the prepared-data directory (self-contained) with its sha256 recorded. The
separator is the tokenizer's own end-of-text token when it has one (<|endoftext|>, </s>, ...), else a
special `<|sep|>` is added; it covers 0 bytes. Text that spells a special token is tokenized as text.

Per-token bytes of a tokenizer.json: a byte-level vocabulary (GPT-2 style) maps each character through
the 256-character byte alphabet; "<0xHH>" byte-fallback pieces are that byte; a Metaspace/"▁" vocabulary
turns "▁" into a space; anything else is the tokenizer's own decoding of the id alone. Whether that adds
up is not assumed: `prepare` round-trips every document and refuses a tokenizer that does not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from lumi.data.tokenizers import (
    HF_FILE,
    SEP_TOKEN,
    SP_FILE,
    Tokenizer,
    TokenizerSpec,
    _byte_alphabet,
    _utf8,
    check_vocab_fits,
    join_token_bytes,
)
from lumi.errors import LumiError
from lumi.io import write_bytes_atomic

# End-of-text tokens used as the separator when a tokenizer has one, in order of preference.
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SP_MAGIC_HINT = "a SentencePiece .model"


def check_tokenizer_file(path: str) -> str:
    """'hf-json' or 'sentencepiece'; LumiError naming the path when it is missing or neither format."""
    p = Path(path).expanduser()
    if not path:
        raise LumiError("tokenizer 'file:': give a path, e.g. file:gpt2/tokenizer.json")
    if not p.is_file():
        raise LumiError(f"tokenizer file:{path}: no such file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LumiError(f"tokenizer file:{path}: cannot read it ({e.strerror})") from None
    return _detect_format(data, f"tokenizer file:{path}")


def _detect_format(data: bytes, what: str) -> str:
    try:
        definition = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        definition = None
    if isinstance(definition, dict) and isinstance(definition.get("model"), dict):
        return "hf-json"
    if definition is None and _is_sentencepiece(data):
        return "sentencepiece"
    raise LumiError(
        f'{what}: neither a Hugging Face tokenizer.json (a JSON object with a "model") nor {SP_MAGIC_HINT}'
    )


def _is_sentencepiece(data: bytes) -> bool:
    try:
        import sentencepiece as spm
    except ImportError:
        raise LumiError(
            "reading a SentencePiece .model needs the `sentencepiece` package: pip install 'lumi-lab[sp]'"
        ) from None
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, TypeError):
        return False
    return int(sp.get_piece_size()) > 0


def load_external(spec: TokenizerSpec) -> Tokenizer:
    """The tokenizer of a `file:PATH` or `hf:NAME` spec, built from the file's bytes."""
    if spec.kind == "hf":
        path = _hub_tokenizer_file(spec.source)
    else:
        path = Path(spec.source).expanduser()
    fmt = check_tokenizer_file(str(path))
    data = path.read_bytes()
    meta = {"source": spec.source, "source_sha256": hashlib.sha256(data).hexdigest(), "format": fmt}
    return _build(data, fmt, str(spec), spec.kind, meta, f"tokenizer {spec}")


def load_saved(directory: Path, meta: dict) -> Tokenizer:
    """A SentencePiece or brought tokenizer saved in a prepared-data (or export) directory."""
    kind, spec = str(meta.get("kind")), str(meta.get("spec"))
    fmt = "sentencepiece" if kind in ("sp", "sp-bpe") else str(meta.get("format"))
    path = Path(directory) / (SP_FILE if fmt == "sentencepiece" else HF_FILE)
    if not path.is_file():
        raise LumiError(f"{path}: tokenizer file is missing; re-run `lumi data prepare`")
    keep = {k: meta[k] for k in ("source", "source_sha256", "format") if k in meta}
    try:
        return _build(path.read_bytes(), fmt, spec, kind, keep, str(path))
    except LumiError:
        raise
    except Exception as e:  # a damaged file
        raise LumiError(f"{path}: not a valid tokenizer file ({type(e).__name__}: {e})") from None


def _build(data: bytes, fmt: str, spec: str, kind: str, meta: dict, what: str) -> Tokenizer:
    if fmt == "sentencepiece":
        from lumi.data.sp_tokenizer import SentencePieceTokenizer

        try:
            return SentencePieceTokenizer(data, spec, kind, meta)
        except RuntimeError as e:
            raise LumiError(f"{what}: not a valid SentencePiece model ({e})") from None
    if fmt != "hf-json":
        raise LumiError(f"{what}: unknown tokenizer file format {fmt!r}; accepted: hf-json, sentencepiece")
    try:
        return HfJsonTokenizer(data.decode("utf-8"), spec, kind, meta)
    except LumiError:
        raise
    except Exception as e:  # tokenizers' own parse error
        raise LumiError(f"{what}: not a valid tokenizer.json ({type(e).__name__}: {str(e)[:200]})") from None


class HfJsonTokenizer(Tokenizer):
    """Any Hugging Face tokenizer.json, with a per-id byte table (see the module docstring)."""

    def __init__(self, json_text: str, spec: str, kind: str, meta: dict) -> None:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        self.spec, self.kind, self.meta = spec, kind, dict(meta)
        self._json = json_text
        definition = json.loads(json_text)
        hf = HFTokenizer.from_str(json_text)
        hf.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a separator
        specials = {int(i): t.content for i, t in hf.get_added_tokens_decoder().items() if t.special}
        sep = next((i for name in EOS_NAMES for i, c in specials.items() if c == name), None)
        if sep is None:
            hf.add_special_tokens([AddedToken(SEP_TOKEN, special=True, normalized=False)])
            sep = int(cast("int", hf.token_to_id(SEP_TOKEN)))  # just added: it has an id
            specials[sep] = SEP_TOKEN
        self._hf = hf
        self.sep_id = int(sep)
        self.vocab_size = int(hf.get_vocab_size(with_added_tokens=True))
        check_vocab_fits(self.vocab_size, f"tokenizer {spec!r}")
        self._id_bytes = _id_bytes(hf, definition, specials, self.vocab_size)
        self.token_bytes = np.fromiter(
            (len(b) for b in self._id_bytes), dtype=np.int64, count=self.vocab_size
        )

    def encode(self, text: str) -> list[int]:
        _utf8(text)
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        for t in texts:
            _utf8(t)
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        return join_token_bytes(self._id_bytes, ids)

    def own_decode(self, ids: Sequence[int] | np.ndarray) -> str | None:
        flat = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()]
        return str(self._hf.decode(flat, skip_special_tokens=False))

    def fingerprint(self) -> str:
        return hashlib.sha256(("lumi-tokenizer:hf-json:v1:" + self._json).encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), **self.meta}

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / HF_FILE, self._json.encode("utf-8"))
        self._write_meta(directory)


def _id_bytes(hf: Any, definition: dict, specials: dict[int, str], vocab_size: int) -> list[bytes]:
    vocab: dict[int, str] = {int(i): t for t, i in hf.get_vocab(with_added_tokens=True).items()}
    byte_of = _byte_alphabet()
    byte_level = _uses(definition.get("decoder"), "ByteLevel")
    metaspace = _uses(definition.get("decoder"), "Metaspace") or _uses(definition.get("decoder"), "Replace")
    byte_fallback = bool((definition.get("model") or {}).get("byte_fallback"))
    table: list[bytes] = []
    for i in range(vocab_size):
        token = vocab.get(i)
        if token is None or i in specials:
            table.append(b"")
        elif byte_level and all(c in byte_of for c in token):
            table.append(bytes(byte_of[c] for c in token))
        elif byte_fallback and _BYTE_PIECE.fullmatch(token):
            table.append(bytes([int(token[3:5], 16)]))
        elif metaspace:
            table.append(token.replace("\u2581", " ").encode("utf-8"))
        else:
            table.append(str(hf.decode([i], skip_special_tokens=False)).encode("utf-8"))
    return table


def _uses(component: Any, type_name: str) -> bool:
    """Whether a tokenizer.json component (or a Sequence of them) has the given type."""
    if not isinstance(component, dict):
        return False
    if component.get("type") == type_name:
        return True
    return any(_uses(c, type_name) for c in component.get("decoders") or component.get("pretokenizers") or [])


def _hub_tokenizer_file(name: str) -> Path:
    """tokenizer.json of hub repo ``name`` (the hub's own cache is used when offline)."""
    needs = (
        f"tokenizer hf:{name} needs the network (or a copy in the Hugging Face cache); download its "
        f"tokenizer.json elsewhere and use file:PATH instead"
    )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise LumiError(f"{needs} (the `huggingface_hub` package is not installed)") from None
    try:
        return Path(hf_hub_download(name, HF_FILE))
    except Exception as e:  # offline, unknown repo, no tokenizer.json, ...
        raise LumiError(f"{needs} ({type(e).__name__})") from None

"""SentencePiece tokenizers: `sp:N` / `sp-bpe:N` trained by Lumi, and `.model` files researchers bring.

Lumi trains SentencePiece with lossless settings: identity normalisation, no whitespace removal, no
dummy prefix (it would invent a leading space), byte fallback (any character outside the vocabulary
is spelled as its UTF-8 bytes), whitespace-only pieces allowed, "\\n" as a piece of its own and a
control symbol `<|sep|>` as the separator (control symbols cover 0 bytes and never match text).

Per-token bytes come from the model's own pieces: a byte piece "<0x0A>" is that one byte, "▁" is the
space it stands for ("▁ab" covers b" ab"), control and unknown pieces cover none. SentencePiece
cannot keep a literal "▁" (U+2581) in text (it decodes to a space), so Lumi spells that character
through its three byte pieces, which decode back to it exactly.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lumi.data.tokenizers import (
    SEP_TOKEN,
    SP_FILE,
    Tokenizer,
    TokenizerSpec,
    _utf8,
    check_vocab_fits,
    join_token_bytes,
)
from lumi.errors import LumiError
from lumi.io import write_bytes_atomic

SPACE_MARK = "\u2581"  # SentencePiece's visible space "▁"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _processor(model_proto: bytes) -> Any:
    try:
        import sentencepiece as spm
    except ImportError:
        raise LumiError(
            "SentencePiece tokenizers need the `sentencepiece` package: pip install 'lumi-lab[sp]'"
        ) from None
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_proto)
    return sp


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model with an exact byte string per id (see the module docstring)."""

    def __init__(self, model_proto: bytes, spec: str, kind: str, meta: dict | None = None) -> None:
        self.spec = spec
        self.kind = kind
        self.meta = dict(meta or {})  # source path / sha256 for brought files, written by save()
        model_proto = _with_separator(model_proto)
        self._proto = model_proto
        self._sp = _processor(model_proto)
        self.vocab_size = int(self._sp.get_piece_size())
        check_vocab_fits(self.vocab_size, f"SentencePiece model {spec!r}")
        sep = self._sp.piece_to_id(SEP_TOKEN)
        if self._sp.id_to_piece(sep) != SEP_TOKEN or not self._sp.is_control(sep):
            sep = self._sp.eos_id()  # a brought model's </s> (control: covers 0 bytes)
        self.sep_id = int(sep)
        self._id_bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]
        self.token_bytes = np.fromiter(
            (len(b) for b in self._id_bytes), dtype=np.int64, count=self.vocab_size
        )
        self._byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        self._has_bytes = all(self._sp.is_byte(i) for i in self._byte_ids)

    def _piece_bytes(self, i: int) -> bytes:
        sp = self._sp
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            return b""
        piece = sp.id_to_piece(i)
        m = _BYTE_PIECE.fullmatch(piece)
        if sp.is_byte(i) and m:
            return bytes([int(m.group(1), 16)])
        return piece.replace(SPACE_MARK, " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        _utf8(text)  # a clear error for lone surrogates
        if SPACE_MARK in text and self._has_bytes:
            return self._encode_with_marks(text)
        return list(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        for t in texts:
            _utf8(t)
        plain = [i for i, t in enumerate(texts) if not (SPACE_MARK in t and self._has_bytes)]
        out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(texts)
        threads = min(8, os.cpu_count() or 1)
        for i, ids in zip(
            plain, self._sp.encode([texts[i] for i in plain], num_threads=threads), strict=True
        ):
            out[i] = np.asarray(ids, dtype=np.int64)
        for i, t in enumerate(texts):
            if SPACE_MARK in t and self._has_bytes:
                out[i] = np.asarray(self._encode_with_marks(t), dtype=np.int64)
        return out

    def _encode_with_marks(self, text: str) -> list[int]:
        """A literal "▁" would decode as a space: spell it as its 3 byte pieces, the rest as usual."""
        mark = [self._byte_ids[b] for b in SPACE_MARK.encode("utf-8")]
        ids: list[int] = []
        for n, part in enumerate(text.split(SPACE_MARK)):
            if n:
                ids.extend(mark)
            if part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        return join_token_bytes(self._id_bytes, ids)

    def own_decode(self, ids: Sequence[int] | np.ndarray) -> str | None:
        return str(self._sp.decode(np.asarray(ids, dtype=np.int64).reshape(-1).tolist()))

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def fingerprint(self) -> str:
        return hashlib.sha256(b"lumi-tokenizer:sentencepiece:v1:" + self._proto).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), **self.meta}

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / SP_FILE, self._proto)
        self._write_meta(directory)


def train_sentencepiece(spec: TokenizerSpec, train_texts: Iterable[str]) -> SentencePieceTokenizer:
    """Train `sp:N` (unigram) or `sp-bpe:N` (BPE) on the training texts with lossless settings."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise LumiError(
            f"tokenizer {spec}: needs the `sentencepiece` package: pip install 'lumi-lab[sp]'"
        ) from None
    lines = list(_lines(train_texts))
    # Characters outside the vocabulary are spelled in bytes, so a lower coverage stays lossless: it is
    # lowered only when the corpus has more distinct characters than a small vocabulary can hold.
    for coverage in (0.9995, 0.999, 0.995, 0.99, 0.98):  # SentencePiece accepts 0.98 at least
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                model_type="unigram" if spec.kind == "sp" else "bpe",
                vocab_size=spec.vocab_size,
                hard_vocab_limit=False,  # a small corpus may support fewer pieces: vocab_size is the real size
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                character_coverage=coverage,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                control_symbols=[SEP_TOKEN],
                user_defined_symbols=["\n"],
                max_sentence_length=1 << 20,
                num_threads=1,  # the trained model must not depend on the machine's core count
                minloglevel=2,
            )
            break
        except RuntimeError as e:
            message = str(e).splitlines()[0]
            if "smaller than required_chars" not in message:
                raise LumiError(f"tokenizer {spec}: SentencePiece training failed ({message})") from None
    else:
        raise LumiError(
            f"tokenizer {spec}: the training text has too many distinct characters for {spec.vocab_size} "
            "ids; use a larger vocabulary"
        )
    return SentencePieceTokenizer(model.getvalue(), str(spec), spec.kind)


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Training sentences: the texts' lines, each with its "\\n" (only "\\n" ends a line here)."""
    for text in texts:
        parts = text.split("\n")
        for n, line in enumerate(parts):
            last = n == len(parts) - 1
            if line or not last:
                yield line if last else line + "\n"


def _with_separator(model_proto: bytes) -> bytes:
    """A brought model without a separator (no `<|sep|>`, no </s>) gets a control piece `<|sep|>` appended."""
    sp = _processor(model_proto)
    sep = sp.piece_to_id(SEP_TOKEN)
    if (sp.id_to_piece(sep) == SEP_TOKEN and sp.is_control(sep)) or sp.eos_id() >= 0:
        return model_proto
    from sentencepiece import sentencepiece_model_pb2

    pb: Any = sentencepiece_model_pb2  # generated protobuf code: no type information
    proto = pb.ModelProto()
    proto.ParseFromString(model_proto)
    piece = proto.pieces.add()
    piece.piece, piece.score, piece.type = SEP_TOKEN, 0.0, pb.ModelProto.SentencePiece.CONTROL
    return bytes(proto.SerializeToString())


def load_sp_file(path: Path, spec: str, kind: str, meta: dict) -> SentencePieceTokenizer:
    try:
        return SentencePieceTokenizer(Path(path).read_bytes(), spec, kind, meta)
    except LumiError:
        raise
    except (OSError, RuntimeError) as e:
        raise LumiError(f"{path}: not a valid SentencePiece model ({type(e).__name__}: {e})") from None

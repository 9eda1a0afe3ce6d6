"""Lossless tokenizers with exact per-token byte lengths: `bytes` and byte-level `bpe:N`.

Both kinds map every token id to a fixed byte string, so
    * decode(encode(text)) == text for any text that can be written as UTF-8, and
    * token_bytes[id] is the exact number of UTF-8 bytes the token covers,
which is what bits-per-byte needs. The document separator covers 0 bytes.

A single id (or any slice of a token stream) need not be valid UTF-8 on its own: a BPE token can
hold half of an emoji. `decode_bytes` returns the exact bytes; `decode` turns them into text and
replaces incomplete UTF-8 sequences with U+FFFD. Only complete streams round-trip, which is all
encode/decode promise. (To print a stream piece by piece, feed `decode_bytes` output to an
incremental UTF-8 decoder: `codecs.getincrementaldecoder("utf-8")()`.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from lumi.errors import LumiError, closest
from lumi.io import write_text_atomic

SEP_TOKEN = "<|sep|>"  # the BPE separator's name in tokenizer.json; it never matches text
N_SPECIAL = 1  # the separator
MIN_VOCAB = 256 + N_SPECIAL
MAX_VOCAB = 1 << 20
META_FILE = "lumi_tokenizer.json"
HF_FILE = "tokenizer.json"
ACCEPTED = (
    f'"bytes" (256 byte values + separator) or "bpe:N" (byte-level BPE, {MIN_VOCAB} <= N <= {MAX_VOCAB})'
)


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str  # "bytes" | "bpe"
    vocab_size: int  # requested size (bytes: always 257)

    def __str__(self) -> str:
        return "bytes" if self.kind == "bytes" else f"bpe:{self.vocab_size}"


def parse_tokenizer_spec(spec: str) -> TokenizerSpec:
    """'bytes' -> bytes tokenizer; 'bpe:N' -> byte-level BPE with N ids (separator included)."""
    text = str(spec).strip()
    if text == "bytes":
        return TokenizerSpec("bytes", MIN_VOCAB)
    m = re.fullmatch(r"bpe:(\d+)", text)
    if m:
        n = int(m.group(1))
        if n < MIN_VOCAB:
            raise LumiError(
                f"tokenizer {spec!r}: vocabulary size {n} is too small; byte-level BPE needs at least "
                f"{MIN_VOCAB} ids (256 byte values + {N_SPECIAL} separator), e.g. bpe:4096"
            )
        if n > MAX_VOCAB:
            raise LumiError(
                f"tokenizer {spec!r}: vocabulary size {n} is larger than the supported {MAX_VOCAB}"
            )
        return TokenizerSpec("bpe", n)
    hint = closest(text.split(":")[0], ["bytes", "bpe"])
    raise LumiError(f"unknown tokenizer spec {spec!r}{hint}; accepted: {ACCEPTED}")


class Tokenizer:
    """Base class. Subclasses set spec, kind, vocab_size, sep_id and token_bytes."""

    spec: str
    kind: str
    vocab_size: int
    sep_id: int
    token_bytes: np.ndarray  # int64[vocab_size]; the separator covers 0 bytes

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no separator added)."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of several texts, each as an int64 array (fast path used by `prepare`)."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The exact bytes the ids cover (separators cover none)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the ids; incomplete UTF-8 (e.g. half an emoji at a slice edge) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """sha256 of the tokenizer definition: equal fingerprints tokenize identically."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "vocab_size": int(self.vocab_size),
            "sep_id": int(self.sep_id),
            "fingerprint": self.fingerprint(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, vocab_size={self.vocab_size})"

    def _write_meta(self, directory: Path) -> None:
        meta = {"format": "lumi-tokenizer", "version": 1, **self.describe()}
        write_text_atomic(Path(directory) / META_FILE, json.dumps(meta, indent=2) + "\n")


class BytesTokenizer(Tokenizer):
    """Ids 0..255 are the UTF-8 byte values; id 256 is the document separator."""

    def __init__(self) -> None:
        self.spec = "bytes"
        self.kind = "bytes"
        self.vocab_size = 257
        self.sep_id = 256
        self.token_bytes = np.ones(self.vocab_size, dtype=np.int64)
        self.token_bytes[self.sep_id] = 0

    def encode(self, text: str) -> list[int]:
        return list(_utf8(text))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(_utf8(t), dtype=np.uint8).astype(np.int64) for t in texts]

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
            raise ValueError(f"token id {int(bad)} is outside the bytes vocabulary 0..{self.vocab_size - 1}")
        return arr[arr != self.sep_id].astype(np.uint8).tobytes()

    def fingerprint(self) -> str:
        return hashlib.sha256(b"lumi-tokenizer:bytes:v1:257:sep=256").hexdigest()

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._write_meta(directory)


class BpeTokenizer(Tokenizer):
    """Byte-level BPE (HF `tokenizers`): no normalizer, ByteLevel pre-tokenizer without prefix space.

    Every vocabulary entry is a string over the 256-character byte alphabet, i.e. a fixed byte
    string; the separator is a special token that is never matched inside text.
    """

    def __init__(self, hf_json: str, spec: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.spec = spec
        self.kind = "bpe"
        self._definition = json.loads(hf_json)
        self._hf = HFTokenizer.from_str(hf_json)
        # Text that happens to contain "<|sep|>" must be tokenized as text, not as a separator.
        try:
            self._hf.encode_special_tokens = True
        except AttributeError:
            raise LumiError(
                "byte-level BPE needs the `tokenizers` package >= 0.15.1: pip install -U tokenizers"
            ) from None
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        sep = self._hf.token_to_id(SEP_TOKEN)
        if sep is None:
            raise LumiError(f"BPE tokenizer definition has no {SEP_TOKEN!r} separator token")
        self.sep_id = int(sep)
        self._id_bytes = _id_byte_strings(
            self._hf.get_vocab(with_added_tokens=True), self.vocab_size, self.sep_id
        )
        self.token_bytes = np.fromiter(
            (len(b) for b in self._id_bytes), dtype=np.int64, count=self.vocab_size
        )

    def encode(self, text: str) -> list[int]:
        try:
            return self._hf.encode(text, add_special_tokens=False).ids
        except Exception:
            _utf8(text)  # raises a clear error for text that is not valid Unicode
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        try:
            encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        except Exception:
            for t in texts:
                _utf8(t)
            raise
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        table = self._id_bytes
        try:
            return b"".join([table[i] for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()])
        except IndexError:
            bad = next(i for i in np.asarray(ids).reshape(-1).tolist() if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{self.vocab_size - 1}") from None

    @property
    def definition(self) -> dict:
        """The Hugging Face tokenizer.json this tokenizer is built from (export writes it)."""
        return json.loads(json.dumps(self._definition))

    def fingerprint(self) -> str:
        canonical = json.dumps(self._definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(("lumi-tokenizer:bpe:v1:" + canonical).encode("utf-8")).hexdigest()

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            directory / HF_FILE, json.dumps(self._definition, ensure_ascii=False, indent=1) + "\n"
        )
        self._write_meta(directory)


def train_tokenizer(spec: str, train_texts: Iterable[str]) -> Tokenizer:
    """Build the tokenizer named by `spec`. BPE is trained on `train_texts` (the TRAIN split only).

    BPE may end up with fewer than N ids when the text has too few distinct pairs to merge;
    `vocab_size` is always the real size.
    """
    parsed = parse_tokenizer_spec(spec)
    if parsed.kind == "bytes":
        return BytesTokenizer()
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=parsed.vocab_size,
        special_tokens=[SEP_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text is encodable
        show_progress=False,
    )
    hf.train_from_iterator(iter(train_texts), trainer=trainer)
    return BpeTokenizer(hf.to_str(), str(parsed))


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load a tokenizer saved with `save`; LumiError naming the file if it is missing or changed."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    meta = _read_json(meta_path, "tokenizer description")
    kind, spec, expected = meta.get("kind"), meta.get("spec"), meta.get("fingerprint")
    if kind == "bytes":
        tok: Tokenizer = BytesTokenizer()
    elif kind == "bpe":
        hf_path = directory / HF_FILE
        if not hf_path.is_file():
            raise LumiError(f"{hf_path}: BPE tokenizer file is missing; re-run `lumi data prepare`")
        try:
            tok = BpeTokenizer(hf_path.read_text(encoding="utf-8"), str(spec))
        except LumiError:
            raise
        except Exception as e:  # a damaged tokenizer.json
            raise LumiError(f"{hf_path}: not a valid BPE tokenizer file ({type(e).__name__}: {e})") from None
    else:
        raise LumiError(f"{meta_path}: unknown tokenizer kind {kind!r}; accepted: 'bytes', 'bpe'")
    if expected != tok.fingerprint():
        raise LumiError(
            f"{directory}: tokenizer files do not match the fingerprint recorded in {META_FILE} "
            f"(edited or damaged); re-run `lumi data prepare`"
        )
    return tok


# GPT-2 style byte <-> printable character table used by the ByteLevel pre-tokenizer: printable
# Latin-1 bytes stand for themselves, the other 68 bytes are shifted to U+0100.. in byte order.
def _byte_alphabet() -> dict[str, int]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    char_of = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in char_of)
    for n, b in enumerate(shifted):
        char_of[b] = chr(256 + n)
    return {c: b for b, c in char_of.items()}


def _id_byte_strings(vocab: dict[str, int], vocab_size: int, sep_id: int) -> list[bytes]:
    from tokenizers import pre_tokenizers

    byte_of = _byte_alphabet()
    if set(byte_of) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError(
            "this version of `tokenizers` uses a different byte-level alphabet than Lumi expects"
        )
    table: list[bytes | None] = [None] * vocab_size
    for token, i in vocab.items():
        if i == sep_id:
            table[i] = b""
            continue
        try:
            table[i] = bytes(byte_of[c] for c in token)
        except KeyError:
            raise LumiError(
                f"BPE token {token!r} (id {i}) is not a byte-level token; cannot count its bytes"
            ) from None
    missing = [i for i, b in enumerate(table) if b is None]
    if missing:
        raise LumiError(f"BPE vocabulary has no token for id(s) {missing[:5]}; the tokenizer file is damaged")
    strings = cast("list[bytes]", table)  # no None left: checked just above
    single = {b for b in strings if len(b) == 1}
    if len(single) != 256:
        raise LumiError(
            "BPE vocabulary lacks some of the 256 single-byte tokens, so some text could not be encoded"
        )
    return strings


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LumiError(
            f"text has a lone surrogate {text[e.start]!r} at index {e.start}; only text that can be written "
            "as UTF-8 can be tokenized"
        ) from None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise LumiError(f"{path}: {what} is missing; re-run `lumi data prepare`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LumiError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LumiError(f"{path}: {what} should be a JSON object")
    return data

"""Tokenizers with exact per-token byte lengths: `bytes`, byte-level `bpe:N`, SentencePiece `sp:N` /
`sp-bpe:N`, and the ones researchers bring (`file:PATH` = a tokenizer.json or SentencePiece .model,
`hf:NAME` = a Hugging Face hub tokenizer).

Every kind maps each token id to a fixed byte string (`token_bytes[id]` is its length), so BPB can
count the exact bytes a token covers. `bytes` and `bpe` are lossless by construction. The others are
checked document by document at prepare time (`round_trip_problem`): the tokenizer's own decoding
must give the text back and the per-token byte strings must join to the document's UTF-8 bytes, or
the tokenizer is refused for BPB (see lumi.data.prepare and docs/data.md). The document separator
covers 0 bytes.

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
MAX_UINT32_VOCAB = 1 << 32  # token shards store ids as uint32 at most
META_FILE = "lumi_tokenizer.json"
HF_FILE = "tokenizer.json"
SP_FILE = "tokenizer.model"
SP_KINDS = ("sp", "sp-bpe")  # SentencePiece unigram / BPE, trained by Lumi on the train split
EXTERNAL_KINDS = ("file", "hf")  # tokenizers researchers bring
TOKENIZER_FILES = (META_FILE, HF_FILE, SP_FILE)  # every file a tokenizer may save into a data directory
ACCEPTED = (
    f'"bytes" (256 byte values + separator), "bpe:N" (byte-level BPE, {MIN_VOCAB} <= N <= {MAX_VOCAB}), '
    '"sp:N" / "sp-bpe:N" (SentencePiece unigram / BPE, lossless settings), "file:PATH" (a tokenizer.json '
    'or SentencePiece .model) or "hf:NAME" (a Hugging Face hub tokenizer, needs the network once)'
)


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str  # "bytes" | "bpe" | "sp" | "sp-bpe" | "file" | "hf"
    vocab_size: int  # requested size (bytes: always 257; file/hf: 0, known once loaded)
    source: str = ""  # file: the path; hf: the hub name

    def __str__(self) -> str:
        if self.kind == "bytes":
            return "bytes"
        if self.kind in EXTERNAL_KINDS:
            return f"{self.kind}:{self.source}"
        return f"{self.kind}:{self.vocab_size}"


def parse_tokenizer_spec(spec: str) -> TokenizerSpec:
    """'bytes', 'bpe:N', 'sp:N', 'sp-bpe:N', 'file:PATH' or 'hf:NAME' (see ACCEPTED).

    A `file:` spec is checked here (the file exists and is a tokenizer.json or a SentencePiece model),
    so a bad spec fails before any corpus is loaded.
    """
    text = str(spec).strip()
    if text == "bytes":
        return TokenizerSpec("bytes", MIN_VOCAB)
    if text.startswith("file:"):
        from lumi.data.external_tokenizer import check_tokenizer_file

        path = text[len("file:") :].strip()
        check_tokenizer_file(path)
        return TokenizerSpec("file", 0, path)
    if text.startswith("hf:"):
        name = text[len("hf:") :].strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", name):
            raise LumiError(
                f"tokenizer {spec!r}: {name!r} is not a Hugging Face hub name (e.g. hf:gpt2 or hf:ORG/NAME)"
            )
        return TokenizerSpec("hf", 0, name)
    m = re.fullmatch(r"(bpe|sp|sp-bpe):(\d+)", text)
    if m:
        kind, n = m.group(1), int(m.group(2))
        what = "byte-level BPE" if kind == "bpe" else "SentencePiece with byte fallback"
        if n < MIN_VOCAB:
            raise LumiError(
                f"tokenizer {spec!r}: vocabulary size {n} is too small; {what} needs at least "
                f"{MIN_VOCAB} ids (256 byte values + {N_SPECIAL} separator), e.g. {kind}:4096"
            )
        check_vocab_fits(n, f"tokenizer {spec!r}")
        if n > MAX_VOCAB:
            raise LumiError(
                f"tokenizer {spec!r}: vocabulary size {n} is larger than the supported {MAX_VOCAB}"
            )
        return TokenizerSpec(kind, n)
    hint = closest(text.split(":")[0], ["bytes", "bpe", "sp", "sp-bpe", "file", "hf"])
    raise LumiError(f"unknown tokenizer spec {spec!r}{hint}; accepted: {ACCEPTED}")


def check_vocab_fits(vocab_size: int, what: str) -> None:
    """Token shards hold uint32 ids at most: a larger vocabulary is refused, naming ``what``."""
    if vocab_size > MAX_UINT32_VOCAB:
        raise LumiError(
            f"{what}: vocabulary of {vocab_size:,} ids does not fit uint32 token ids "
            f"(at most {MAX_UINT32_VOCAB:,})"
        )


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

    def own_decode(self, ids: Sequence[int] | np.ndarray) -> str | None:
        """The tokenizer library's own decoding of ids, when it differs from joining `token_bytes`
        (SentencePiece, tokenizer.json); None for kinds whose decoding *is* that join."""
        return None

    def round_trip_problem(self, text: str, ids: Sequence[int] | np.ndarray) -> str | None:
        """None when ``ids`` give ``text`` back exactly, else where they first differ (one line).

        Both must hold: the library's own decoding gives the text back, and the per-token byte strings
        (what BPB counts) join to exactly the text's UTF-8 bytes.
        """
        original = _utf8(text)
        own = self.own_decode(ids)
        if own is not None and own != text:
            decoded = own.encode("utf-8", errors="surrogatepass")
            return _first_difference(original, decoded, "decoding gives")
        joined = self.decode_bytes(ids)
        if joined != original:
            return _first_difference(original, joined, "the per-token byte strings give")
        return None

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
        return join_token_bytes(self._id_bytes, ids)

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
    """Build the tokenizer named by `spec`. BPE and SentencePiece are trained on `train_texts` (the TRAIN
    split only); `file:` and `hf:` tokenizers are loaded as they are (`train_texts` is not read).

    BPE and SentencePiece may end up with fewer than N ids when the text has too few distinct pieces;
    `vocab_size` is always the real size.
    """
    parsed = parse_tokenizer_spec(spec)
    if parsed.kind == "bytes":
        return BytesTokenizer()
    if parsed.kind in SP_KINDS:
        from lumi.data.sp_tokenizer import train_sentencepiece

        return train_sentencepiece(parsed, train_texts)
    if parsed.kind in EXTERNAL_KINDS:
        from lumi.data.external_tokenizer import load_external

        return load_external(parsed)
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
    elif kind in SP_KINDS or kind in EXTERNAL_KINDS:
        from lumi.data.external_tokenizer import load_saved

        tok = load_saved(directory, meta)
    else:
        raise LumiError(
            f"{meta_path}: unknown tokenizer kind {kind!r}; accepted: 'bytes', 'bpe', 'sp', 'sp-bpe', "
            "'file', 'hf'"
        )
    if expected != tok.fingerprint():
        raise LumiError(
            f"{directory}: tokenizer files do not match the fingerprint recorded in {META_FILE} "
            f"(edited or damaged); re-run `lumi data prepare`"
        )
    return tok


def join_token_bytes(table: Sequence[bytes], ids: Sequence[int] | np.ndarray) -> bytes:
    """The bytes of ``ids`` from a per-id byte table; ValueError naming the first id outside it (a negative
    id must not silently index from the end)."""
    flat = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    bad = [i for i in flat if not 0 <= i < len(table)][:1]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary 0..{len(table) - 1}")
    return b"".join([table[i] for i in flat])


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


def _first_difference(original: bytes, got: bytes, how: str) -> str:
    """'at byte offset N the text has 'abc' but <how> 'abd'' with ~20 characters of each side."""
    offset = next(
        (i for i, (a, b) in enumerate(zip(original, got, strict=False)) if a != b),
        min(len(original), len(got)),
    )
    start = max(0, offset - 4)  # a little context before the first differing byte

    def snippet(data: bytes) -> str:
        return repr(data[start : offset + 20].decode("utf-8", errors="replace"))

    return (
        f"at byte offset {offset} the text has {snippet(original)} but {how} {snippet(got)} "
        f"({len(original)} vs {len(got)} bytes in all)"
    )


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

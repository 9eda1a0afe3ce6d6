"""Tokenizers: spec parsing, lossless round trips on hard text, exact per-token byte lengths."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lumi.data.tokenizers import (
    MIN_VOCAB,
    SEP_TOKEN,
    BytesTokenizer,
    TokenizerSpec,
    load_tokenizer,
    parse_tokenizer_spec,
    train_tokenizer,
)
from lumi.errors import LumiError

HARD_TEXTS = [
    "",
    " ",
    "   leading and trailing   ",
    "line\r\nwindows\r\n\r\n",
    "\r",
    "nul\x00byte\x00",
    "\x01\x02\x7f control",
    "e\u0301 combining acute",
    "\u0301",  # a lone combining mark
    "\u0301\u0302\u0303",
    "emoji 😀👩‍👩‍👧‍👦🏳️‍🌈 zwj sequences",
    "中文字符 日本語 한국어 العربية עברית",
    "\ufeffBOM at start",
    "\U0010ffff max code point \U00010000",
    "\u2028 line separator \u2029 paragraph separator \x85 NEL",
    "tabs\t\tand\u00a0nbsp",
    "\t\tleading tabs and a trailing tab\t",
    "runs  of   spaces    between     words      and\t \t mixed",
    "  two leading spaces",
    "\n\nleading newlines\n\n\n",
    "\u2581 SentencePiece's space mark \u2581\u2581 as text\u2581",
    "digits 0123456789 3.14159 1e-9",
    f"text containing the separator name {SEP_TOKEN} literally",
    "<|endoftext|> <s> </s> [CLS] <unk> <0x41> <pad>",  # special and byte-piece names are just text
    "ĠĊ Ġ these are byte-level alphabet characters themselves",
    "a" * 5000,
]

TRAIN_TEXTS = [
    "To be, or not to be, that is the question.\n" * 50,
    "Héllo wörld, naïve café — 😀 ✓ 中文\r\n" * 40,
    "def main():\n    return 42\n" * 40,
]


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe:400", TRAIN_TEXTS)


KINDS = ["bytes", "bpe", "sp", "sp-bpe", "file:tokenizer.json", "file:.model"]


@pytest.fixture(scope="module")
def tokenizer_of(bpe, tmp_path_factory):
    """Every tokenizer kind, built once per module: Lumi's own four, and a tokenizer.json and a SentencePiece
    .model brought as files (the .json written here, GPT-2 style; the .model is sp's, saved)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("brought")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(TRAIN_TEXTS, trainers.BpeTrainer(
        vocab_size=350, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    (root / "tokenizer.json").write_text(hf.to_str(), encoding="utf-8")
    sp = train_tokenizer("sp:400", TRAIN_TEXTS)
    (root / "sp.model").write_bytes(sp.model_proto)
    made = {
        "bytes": BytesTokenizer(),
        "bpe": bpe,
        "sp": sp,
        "sp-bpe": train_tokenizer("sp-bpe:400", TRAIN_TEXTS),
        "file:tokenizer.json": train_tokenizer(f"file:{root / 'tokenizer.json'}", []),
        "file:.model": train_tokenizer(f"file:{root / 'sp.model'}", []),
    }
    return made.__getitem__


def _random_text(rng: random.Random, n: int) -> str:
    """Random text over every plane, skipping surrogates (which cannot be written as UTF-8)."""
    pools = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF), (0x300, 0x36F)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def test_parse_specs():
    assert parse_tokenizer_spec("bytes") == TokenizerSpec("bytes", 257)
    assert parse_tokenizer_spec("bpe:4096") == TokenizerSpec("bpe", 4096)
    assert str(parse_tokenizer_spec(" bpe:512 ")) == "bpe:512"
    assert parse_tokenizer_spec(f"bpe:{MIN_VOCAB}").vocab_size == 257


@pytest.mark.parametrize("spec,fragment", [
    ("bpe:256", "too small"),
    ("bpe:10", "at least 257"),
    ("bpe:", "unknown tokenizer spec"),
    ("bpe:abc", "unknown tokenizer spec"),
    ("byte", "did you mean 'bytes'"),
    ("wordpiece:1000", "accepted"),
    ("bpe:99999999", "larger than"),
])
def test_bad_specs(spec, fragment):
    with pytest.raises(LumiError, match=fragment):
        parse_tokenizer_spec(spec)


def test_bytes_tokenizer_layout():
    tok = BytesTokenizer()
    assert (tok.vocab_size, tok.sep_id) == (257, 256)
    assert tok.token_bytes.dtype == np.int64
    assert tok.token_bytes.tolist() == [1] * 256 + [0]
    assert tok.encode("aé") == [0x61, 0xC3, 0xA9]
    assert tok.decode([tok.sep_id, 0x61, tok.sep_id]) == "a"  # separators cover no bytes


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_exact_bytes_on_hard_text(kind, tokenizer_of):
    tok = tokenizer_of(kind)
    for text in HARD_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, repr(text)
        assert tok.decode_bytes(ids) == text.encode("utf-8")
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
        assert tok.sep_id not in ids
        assert tok.round_trip_problem(text, ids) is None  # the library's own decoding agrees too
    batch = tok.encode_batch(HARD_TEXTS)
    assert [b.tolist() for b in batch] == [tok.encode(t) for t in HARD_TEXTS]
    assert tok.token_bytes[tok.sep_id] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_random_unicode(kind, tokenizer_of):
    tok = tokenizer_of(kind)
    rng = random.Random(1234)
    for _ in range(200):
        text = _random_text(rng, rng.randint(0, 60))
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
        assert tok.round_trip_problem(text, ids) is None


def test_bpe_layout(bpe):
    assert bpe.vocab_size <= 400
    assert bpe.token_bytes.shape == (bpe.vocab_size,)
    assert bpe.token_bytes[bpe.sep_id] == 0
    assert (np.delete(bpe.token_bytes, bpe.sep_id) >= 1).all()
    # It learned multi-byte merges, and every single byte value has its own token.
    assert bpe.token_bytes.max() > 3
    assert sorted(bpe.decode_bytes([i]) for i in range(bpe.vocab_size) if bpe.token_bytes[i] == 1) == \
        [bytes([b]) for b in range(256)]
    # Each id's byte length is exactly the length of the bytes it decodes to.
    assert [len(bpe.decode_bytes([i])) for i in range(bpe.vocab_size)] == bpe.token_bytes.tolist()


def test_bpe_compresses_training_text(bpe):
    text = TRAIN_TEXTS[0]
    assert len(bpe.encode(text)) < len(text.encode("utf-8")) / 3


def test_separator_name_in_text_is_just_text(bpe):
    ids = bpe.encode(SEP_TOKEN)
    assert bpe.sep_id not in ids
    assert int(bpe.token_bytes[ids].sum()) == len(SEP_TOKEN)


def test_partial_utf8_decodes_with_replacement(bpe):
    tok = BytesTokenizer()
    ids = tok.encode("😀")  # four bytes
    assert tok.decode(ids[:2]) == "\ufffd"
    assert tok.decode_bytes(ids[:2]) == "😀".encode()[:2]
    # Concatenating the bytes of the pieces always gives back the whole.
    ids = bpe.encode("naïve 中文 😀")
    assert b"".join(bpe.decode_bytes([i]) for i in ids).decode("utf-8") == "naïve 中文 😀"


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_range_ids_are_rejected(kind, tokenizer_of):
    tok = tokenizer_of(kind)
    for bad in (tok.vocab_size, -1):  # a negative id must not index the table from its end
        with pytest.raises(ValueError, match="outside"):
            tok.decode([bad])


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_lone_surrogate_is_a_clear_error(kind, bpe):
    tok = BytesTokenizer() if kind == "bytes" else bpe
    with pytest.raises(LumiError, match="surrogate"):
        tok.encode("ok \ud800 bad")


def test_vocab_size_is_respected_and_training_is_deterministic():
    a = train_tokenizer("bpe:300", TRAIN_TEXTS)
    b = train_tokenizer("bpe:300", TRAIN_TEXTS)
    assert a.vocab_size == 300
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != train_tokenizer("bpe:301", TRAIN_TEXTS).fingerprint()
    assert a.fingerprint() != train_tokenizer("bpe:300", TRAIN_TEXTS[:2]).fingerprint()
    assert BytesTokenizer().fingerprint() != a.fingerprint()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tokenizer_of, tmp_path):
    tok = tokenizer_of(kind)
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok)
    assert loaded.spec == tok.spec
    assert loaded.fingerprint() == tok.fingerprint()
    assert np.array_equal(loaded.token_bytes, tok.token_bytes)
    for text in HARD_TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    if kind == "bpe":
        assert (tmp_path / "tokenizer.json").is_file()  # standard HF format


def test_load_errors_name_the_file(bpe, tmp_path):
    with pytest.raises(LumiError, match=r"lumi_tokenizer\.json"):
        load_tokenizer(tmp_path)
    bpe.save(tmp_path)
    hf_file = tmp_path / "tokenizer.json"
    definition = json.loads(hf_file.read_text())
    first_merge = definition["model"]["merges"].pop()  # an edited tokenizer must not load silently
    assert first_merge
    hf_file.write_text(json.dumps(definition))
    with pytest.raises(LumiError, match="fingerprint"):
        load_tokenizer(tmp_path)
    hf_file.write_text("{not json")
    with pytest.raises(LumiError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)
    hf_file.unlink()
    with pytest.raises(LumiError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_survives_a_pack_header(kind, tokenizer_of):
    """`lumi pack` stores the tokenizer inside the artifact (JSON header); every kind comes back the same."""
    import json

    from lumi.export.pack import _tokenizer_from, _tokenizer_record

    tok = tokenizer_of(kind)
    back = _tokenizer_from(json.loads(json.dumps(_tokenizer_record(tok))))
    assert back.fingerprint() == tok.fingerprint() and back.spec == tok.spec
    for text in HARD_TEXTS:
        assert back.encode(text) == tok.encode(text)

"""SentencePiece (sp:N / sp-bpe:N), brought tokenizers (file:PATH, hf:NAME) and the lossless-or-refused rule."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from lumi.cli import main as lumi_main
from lumi.data import load_corpus, load_prepared, prepare
from lumi.data.split import split_documents
from lumi.data.tokenizers import SEP_TOKEN, check_vocab_fits, parse_tokenizer_spec, train_tokenizer
from lumi.errors import LumiError

TEXTS = [
    "To be, or not to be, that is the question.\n" * 30,
    "Héllo  wörld,\tnaïve café — 😀 中文\r\n" * 20,
    "def main():\n    return 42\n" * 30,
]


def _write_corpus(root: Path, texts: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (root / name).write_bytes(text.encode("utf-8"))
    return root


@pytest.fixture(scope="module")
def default_sp_model(tmp_path_factory) -> Path:
    """A SentencePiece model with the library's DEFAULT (lossy) settings: nmt_nfkc normalisation, extra
    whitespace removed, a dummy prefix."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=120,
                                   hard_vocab_limit=False, minloglevel=2)
    path = tmp_path_factory.mktemp("spdefault") / "default.model"
    path.write_bytes(model.getvalue())
    return path


def test_specs():
    assert str(parse_tokenizer_spec("sp:8192")) == "sp:8192"
    assert parse_tokenizer_spec("sp-bpe:1024").kind == "sp-bpe"
    assert str(parse_tokenizer_spec("hf:gpt2")) == "hf:gpt2"
    with pytest.raises(LumiError, match="does not fit uint32"):
        parse_tokenizer_spec("sp:5000000000")
    with pytest.raises(LumiError, match="vocabulary of 4,294,967,297 ids does not fit uint32"):
        check_vocab_fits((1 << 32) + 1, "tokenizer file:x.json")
    check_vocab_fits(1 << 32, "fine")
    with pytest.raises(LumiError, match="not a Hugging Face hub name"):
        parse_tokenizer_spec("hf:bad name")


def test_sp_is_trained_lossless_and_counts_pieces_exactly():
    from sentencepiece import sentencepiece_model_pb2 as pb

    tok = train_tokenizer("sp:300", TEXTS)
    proto = pb.ModelProto()
    proto.ParseFromString(tok.model_proto)
    n = proto.normalizer_spec
    assert (n.name, n.add_dummy_prefix, n.remove_extra_whitespaces) == ("identity", False, False)
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.allow_whitespace_only_pieces
    assert tok.sep_id == tok._sp.piece_to_id(SEP_TOKEN) and tok.token_bytes[tok.sep_id] == 0
    for i in range(tok.vocab_size):
        piece = tok._sp.id_to_piece(i)
        if tok._sp.is_byte(i):  # "<0x0A>" covers exactly that byte
            assert tok.decode_bytes([i]) == bytes([int(piece[3:5], 16)])
        elif not (tok._sp.is_control(i) or tok._sp.is_unknown(i)):  # "▁ab" covers b" ab"
            assert tok.decode_bytes([i]) == piece.replace("\u2581", " ").encode()
    assert any("\u2581" in tok._sp.id_to_piece(i) for i in range(tok.vocab_size))  # spaces were learned
    assert train_tokenizer("sp:300", TEXTS).fingerprint() == tok.fingerprint()  # deterministic
    # "▁" in the text is spelled with byte pieces (SentencePiece alone would turn it into a space).
    ids = tok.encode("a\u2581b")
    assert tok.decode(ids) == "a\u2581b" and tok._sp.decode(ids) == "a\u2581b"


@pytest.mark.parametrize("spec", ["sp:400", "sp-bpe:400"])
def test_exact_bytes_through_prepare(spec, tiny_corpus_dir, tmp_path):
    """The shared tiny corpus (CRLF, NUL, tabs, emoji, code) through prepare: exact bytes, lossless streams."""
    corpus = f"files:{tiny_corpus_dir}"
    data = prepare(corpus, spec, out=tmp_path / "sp", progress=False)
    assert data.lossless and data.manifest["tokenizer"]["lossless"] is True
    assert (data.directory / "tokenizer.model").is_file()
    split = split_documents(load_corpus(corpus).documents)
    for name in ("train", "val"):
        docs = split.documents(name)
        expected = sum(d.nbytes for d in docs)
        assert int(data.target_bytes(name).sum()) == int(data.target_bytes(name)[1:].sum()) == expected
        tokens = np.asarray(data.tokens(name))
        starts = np.append(data.document_starts(name), len(tokens))
        for doc, s, e in zip(docs, starts[:-1], starts[1:], strict=True):
            assert data.tokenizer.decode(tokens[s + 1:e]) == doc.text
    again = load_prepared(data.directory)
    again.verify()
    assert again.tokenizer.fingerprint() == data.tokenizer.fingerprint()


def test_default_sentencepiece_is_refused_naming_the_offset(default_sp_model, tmp_path):
    # Every line starts "To be  " (two spaces): the default model removes one, so whichever document comes
    # first, the first changed byte is at offset 6.
    corpus = _write_corpus(tmp_path / "c", {f"{n}.txt": f"To be  or not to be {n}\n" * 5 for n in "abc"})
    with pytest.raises(LumiError) as err:
        prepare(f"files:{corpus}", f"file:{default_sp_model}", out=tmp_path / "out", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "--allow-lossy" in msg
    assert "is not lossless on document 'c/" in msg
    assert "at byte offset 6 the text has ' be  or not to" in msg  # from 4 bytes before the offset
    assert "but decoding gives ' be or not to" in msg
    assert not (tmp_path / "out").exists()


def test_allow_lossy_divides_by_the_original_bytes(default_sp_model, tmp_path):
    texts = {"a.txt": "plain words here\n" * 5, "b.txt": "double  space\n" * 5, "c.txt": "more plain words\n" * 5}
    corpus = _write_corpus(tmp_path / "c", texts)
    data = prepare(f"files:{corpus}", f"file:{default_sp_model}", out=tmp_path / "out", progress=False,
                   allow_lossy=True)
    split = split_documents(load_corpus(f"files:{corpus}").documents)  # recomputed independently
    assert not data.lossless and data.last_prepare["lossy_documents"] == len(split.train) + len(split.val)
    tok = data.manifest["tokenizer"]
    assert tok["lossless"] is False and "ORIGINAL" in tok["byte_accounting"] and tok["lossy_examples"]
    for name in ("train", "val"):
        info = data.manifest["splits"][name]
        assert info["bytes_file"] == f"{name}.bytes.bin"
        # BPB's denominator is the original UTF-8 size of the split, not what the tokenizer decodes to.
        original = sum(len(d.text.encode("utf-8")) for d in split.documents(name))
        assert int(data.target_bytes(name).sum()) == info["bytes"] == original
    # Where a document's token byte lengths do not add up to its original size, its positions were re-charged.
    table = data.tokenizer.token_bytes[np.asarray(data.tokens("train"))]
    assert not np.array_equal(table, data.target_bytes("train"))
    load_prepared(data.directory).verify()
    assert prepare(f"files:{corpus}", f"file:{default_sp_model}", out=tmp_path / "out", progress=False,
                   allow_lossy=True).last_prepare["reused"]
    with pytest.raises(LumiError, match="not lossless"):  # never reused silently without the flag
        prepare(f"files:{corpus}", f"file:{default_sp_model}", out=tmp_path / "out", progress=False)


def test_brought_tokenizer_json(tiny_corpus_dir, tmp_path):
    """A GPT-2 style tokenizer.json the test writes itself: lossless, its <|endoftext|> is the separator,
    the file is copied beside the shards with its sha256, and a changed file is not reused."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    src = tmp_path / "mine" / "tokenizer.json"
    src.parent.mkdir()
    src.write_text(hf.to_str(), encoding="utf-8")
    corpus = _write_corpus(tmp_path / "c", {"x.txt": "text with <|endoftext|> inside\n" * 3,
                                            "y.txt": "more text\n" * 4, "z.txt": "and more\n" * 5})
    data = prepare(f"files:{corpus}", f"file:{src}", out=tmp_path / "out", progress=False)
    tok = data.tokenizer
    assert tok.sep_id == hf.token_to_id("<|endoftext|>") and tok.token_bytes[tok.sep_id] == 0
    assert data.lossless
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == src.read_bytes()
    import hashlib

    assert data.manifest["tokenizer"]["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert "<|endoftext|>" in tok.decode(tok.encode("a <|endoftext|> b"))
    load_prepared(data.directory).verify()
    # A tokenizer.json without an end-of-text token gets Lumi's separator added.
    plain = HFTokenizer(models.BPE())
    plain.pre_tokenizer, plain.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    plain.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    src.write_text(plain.to_str(), encoding="utf-8")
    again = prepare(f"files:{corpus}", f"file:{src}", out=tmp_path / "out", progress=False)
    assert not again.last_prepare["reused"]  # the file changed: shards are rebuilt
    assert again.tokenizer.sep_id == again.tokenizer.vocab_size - 1 and again.lossless


def test_lossy_tokenizer_json_is_refused(tiny_corpus_dir, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    path = tmp_path / "lower.json"
    path.write_text(hf.to_str(), encoding="utf-8")
    with pytest.raises(LumiError, match=r"at byte offset 0 the text has 'To be.* but decoding gives 'to be"):
        prepare(f"files:{tiny_corpus_dir}", f"file:{path}", out=tmp_path / "out", progress=False)


@pytest.mark.parametrize("spec,fragment", [
    ("file:NOPE", "no such file"),
    ("file:NOTTOK", "neither a Hugging Face tokenizer.json"),
    ("file:JSONNOTTOK", "neither a Hugging Face tokenizer.json"),
    ("file:", "give a path"),
])
def test_bad_tokenizer_files_are_one_line_exit_2(spec, fragment, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    (tmp_path / "other.json").write_text('{"vocab": {}}')
    spec = (spec.replace("NOPE", str(tmp_path / "missing.json")).replace("JSONNOTTOK", str(tmp_path / "other.json"))
            .replace("NOTTOK", str(tmp_path / "notes.txt")))
    code = lumi_main(["data", "prepare", "--tokenizer", spec, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("lumi data: error: ") and fragment in err
    assert not (tmp_path / "out").exists()


def test_hf_name_offline_is_one_line(tmp_path, monkeypatch, capsys):
    """Offline (the hub unreachable, an empty cache): one line naming the network and file:PATH, exit code 2."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    code = lumi_main(["data", "prepare", "--tokenizer", "hf:gpt2", "--corpus", "files:/never-read",
                      "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "tokenizer hf:gpt2 needs the network" in err and "use file:PATH instead" in err


def test_lossy_data_is_not_trained_on_by_accident(default_sp_model, tmp_path):
    from lumi.train.config import load_config
    from lumi.train.distributed import DistInfo
    from lumi.train.runtime import load_data

    corpus = _write_corpus(tmp_path / "c", {"a.txt": "a  b\n" * 9, "b.txt": "c  d\n" * 9, "c.txt": "e f\n" * 9})
    data = prepare(f"files:{corpus}", f"file:{default_sp_model}", out=tmp_path / "out", progress=False,
                   allow_lossy=True)
    cfg = load_config(None, [f"data.dir={data.directory}"])
    with pytest.raises(LumiError, match=r"data\.allow_lossy=true"):
        load_data(cfg, False, DistInfo())
    cfg = load_config(None, [f"data.dir={data.directory}", "data.allow_lossy=true"])
    assert not load_data(cfg, False, DistInfo()).lossless
    assert json.loads((data.directory / "manifest.json").read_text())["tokenizer"]["lossy_documents"] > 0

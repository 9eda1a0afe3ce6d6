"""Validation BPB protocol: every position but the first scored once, bytes == UTF-8 size of the split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lumi.metrics.bpb import bits_per_byte
from lumi.metrics.evaluate import eval_windows, evaluate_bpb, unigram_bpb



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

@pytest.fixture(scope="module", params=["bytes", "bpe:300"])
def prepared(request, tiny_corpus_dir, tmp_path_factory):
    from lumi.data import prepare

    out = tmp_path_factory.mktemp("prep") / request.param.replace(":", "-")
    return prepare(f"files:{tiny_corpus_dir}", request.param, out=out, progress=False)


def _val_text_bytes(tiny_corpus_dir) -> int:
    """UTF-8 size of the validation documents, computed from the corpus, not from tokens."""
    from lumi.data.corpora import load_corpus
    from lumi.data.split import split_documents

    docs = split_documents(load_corpus(f"files:{tiny_corpus_dir}").documents).documents("val")
    assert docs, "the tiny corpus must have a validation document"
    return sum(len(d.text.encode("utf-8")) for d in docs)


def test_windows_cover_every_target_once():
    assert eval_windows(11, 4) == [(0, 4, 0), (4, 4, 0), (8, 2, 0)]
    assert eval_windows(9, 4) == [(0, 4, 0), (4, 4, 0)]
    assert eval_windows(11, 4, max_targets=5) == [(0, 4, 0), (4, 1, 0)]
    # sliding windows: after the first window only the last `stride` targets of each window count
    assert eval_windows(11, 4, stride=2) == [(0, 4, 0), (2, 4, 2), (4, 4, 2), (6, 4, 2)]
    for n, t, stride in [(2, 5, 5), (100, 7, 7), (64, 8, 8), (65, 8, 8), (100, 7, 3), (64, 8, 1), (65, 8, 5)]:
        covered = [s + 1 + i for s, length, skip in eval_windows(n, t, stride=stride) for i in range(skip, length)]
        assert covered == list(range(1, n))  # every target exactly once
        for s, length, skip in eval_windows(n, t, stride=stride)[1:]:
            assert skip >= t - stride or length < t  # at least T - S tokens of context


def test_sliding_windows_give_more_context_and_the_same_accounting(prepared):
    from lumi.metrics.evaluate import position_buckets
    from lumi.models import build_model

    torch.manual_seed(0)
    model = build_model("llama", "nano", vocab_size=prepared.vocab_size)
    tokens, nbytes = prepared.tokens("val"), prepared.target_bytes("val")
    plain = evaluate_bpb(model, tokens, nbytes, seq_len=16, batch_size=4, device="cpu")
    slid = evaluate_bpb(model, tokens, nbytes, seq_len=16, batch_size=4, device="cpu", stride=4)
    assert (slid["bytes"], slid["targets"]) == (plain["bytes"], plain["targets"])
    assert slid["protocol"]["stride"] == 4 and slid["protocol"]["windows"] > plain["protocol"]["windows"]
    # the position buckets partition the same targets and bytes
    for out in (plain, slid):
        assert sum(b["targets"] for b in out["by_position"]) == out["targets"]
        assert sum(b["bytes"] for b in out["by_position"]) == out["bytes"]
    assert min(b["first"] for b in slid["by_position"] if b["first"] > 1) >= 9  # only the first window has short context
    assert position_buckets(16) == [(1, 8), (9, 16)] and position_buckets(200) == [(1, 8), (9, 32), (33, 128), (129, 200)]
    assert evaluate_bpb(model, tokens, nbytes, seq_len=16, batch_size=4, device="cpu", stride=16)["bpb"] == plain["bpb"]


def test_bytes_equal_utf8_size_of_val_text(prepared, tiny_corpus_dir):
    from lumi.models import build_model

    torch.manual_seed(0)
    model = build_model("llama", "nano", vocab_size=prepared.vocab_size)
    tokens, nbytes = prepared.tokens("val"), prepared.target_bytes("val")
    out = evaluate_bpb(model, tokens, nbytes, seq_len=16, batch_size=4, device="cpu")
    assert out["bytes"] == _val_text_bytes(tiny_corpus_dir)  # exact
    assert out["targets"] == len(tokens) - 1
    p = out["protocol"]
    assert (p["seq_len"], p["stride"], p["windows"]) == (16, 16, math.ceil((len(tokens) - 1) / 16))
    assert p["documents"] == "concatenated, context crosses boundaries" and p["subset"] == "full split"
    # near-uniform init: loss close to ln V
    assert abs(out["loss"] - math.log(prepared.vocab_size)) < 0.5


def test_matches_a_direct_computation(prepared):
    from lumi.models import build_model

    torch.manual_seed(1)
    model = build_model("llama", "nano", vocab_size=prepared.vocab_size).eval()
    tokens = np.asarray(prepared.tokens("val")).astype(np.int64)
    nbytes = np.asarray(prepared.target_bytes("val"))
    seq_len, nll_total = 12, 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, seq_len):
            x = torch.from_numpy(tokens[start:start + seq_len][None])
            y = torch.from_numpy(tokens[start + 1:start + seq_len + 1])
            x = x[:, :len(y)]
            nll_total += float(F.cross_entropy(model(x)[0].double(), y, reduction="sum"))
    want = bits_per_byte(nll_total, int(nbytes[1:].sum()))
    got = evaluate_bpb(model.train(), tokens, nbytes, seq_len=seq_len, batch_size=3, device="cpu")
    assert got["bpb"] == pytest.approx(want, rel=1e-5)
    assert model.training  # restored


def test_prefix_subset(prepared):
    from lumi.models import build_model

    model = build_model("llama", "nano", vocab_size=prepared.vocab_size)
    tokens, nbytes = prepared.tokens("val"), prepared.target_bytes("val")
    out = evaluate_bpb(model, tokens, nbytes, seq_len=16, batch_size=4, device="cpu", max_targets=40)
    assert out["targets"] == 40 and out["bytes"] == int(np.asarray(nbytes)[1:41].sum())
    assert out["protocol"]["subset"] == "first 40 targets"


def test_unigram_baseline_by_hand(prepared):
    vocab = prepared.vocab_size
    counts = np.bincount(np.asarray(prepared.tokens("train")), minlength=vocab)
    val = np.asarray(prepared.tokens("val"))
    nll = -sum(math.log((counts[t] + 1) / (counts.sum() + vocab)) for t in val[1:])
    out = unigram_bpb(prepared)
    assert out["bpb"] == pytest.approx(nll / (math.log(2) * int(prepared.target_bytes("val")[1:].sum())), rel=1e-9)
    assert out["targets"] == len(val) - 1

"""Corpus mixtures: spec parsing, per-corpus splits and ranges, sampling by weight, BPB per corpus summing
to the total by bytes, and a training run that reports both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from lumi.cli import main as lumi_main
from lumi.data import load_corpus, load_prepared, prepare
from lumi.data.mixture import MixtureItem, corpus_list_to_spec, parse_mixture
from lumi.data.split import split_documents
from lumi.errors import LumiError
from lumi.metrics.evaluate import evaluate_bpb, evaluate_bpb_by_corpus
from lumi.train.batches import mixture_offsets, step_batch
from lumi.train.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

PROSE = {f"p{i}.txt": f"Prose line {i}: to be, or not to be, that is the question.\n" * (8 + i) for i in range(8)}
CODE = {f"c{i}.txt": f"def f{i}(x):\n    return x * {i}  # code\n\n" * (10 + i) for i in range(8)}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for name, files in (("prose", PROSE), ("code", CODE)):
        (root / name).mkdir()
        for fname, text in files.items():
            (root / name / fname).write_text(text, encoding="utf-8")
    return f"files:{root / 'prose'}", f"files:{root / 'code'}"


@pytest.fixture(scope="module")
def mixed(corpora, tmp_path_factory):
    prose, code = corpora
    return prepare(f"{prose}:0.7,{code}:0.3", "bpe:300", out=tmp_path_factory.mktemp("prep") / "mix",
                   progress=False)


def test_parse_specs():
    assert parse_mixture("shakespeare") is None
    assert parse_mixture("files:a.txt,b.txt") is None  # a files: spec with commas is one corpus
    assert parse_mixture("hf:wikitext:wikitext-2-raw-v1") is None
    assert parse_mixture(" shakespeare:0.7 , pystdlib:0.3 ") == [MixtureItem("shakespeare", 0.7),
                                                                 MixtureItem("pystdlib", 0.3)]
    assert parse_mixture("shakespeare:2") is None  # one corpus: just that corpus
    assert parse_mixture("files:/x/prose:1,milton:3")[0] == MixtureItem("files:/x/prose", 1.0)
    assert corpus_list_to_spec([{"name": "shakespeare", "weight": 0.7}, {"name": "pystdlib", "weight": 0.3}],
                               "cfg") == "shakespeare:0.7,pystdlib:0.3"


@pytest.mark.parametrize("spec,fragment", [
    ("shakespeare:0.7,pystdlib:-0.3", "the weight of 'pystdlib' must be a positive number, got '-0.3'"),
    ("shakespeare:0,pystdlib:1", "the weight of 'shakespeare' must be a positive number, got '0'"),
    ("shakespeare:abc,pystdlib:0.3", "the weight of 'shakespeare' is 'abc', not a number"),
    ("shakespeare:nan,pystdlib:1", "must be a positive number"),
    ("shakespeare:0.5,shakespeare:0.5", "corpus 'shakespeare' is named twice"),
    ("shakespeare:0.5,pystdlib", "'pystdlib' has no weight"),
])
def test_bad_mixtures_are_one_line_exit_2(spec, fragment, tmp_path, capsys):
    code = lumi_main(["data", "prepare", "--corpus", spec, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("lumi data: error: ") and fragment in err, err
    assert not (tmp_path / "out").exists()


def test_yaml_list_form(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": {"corpus": [{"name": "shakespeare", "weight": 0.7},
                                                        {"name": "pystdlib", "weight": 0.3}]}}))
    assert load_config(path).data.corpus == "shakespeare:0.7,pystdlib:0.3"
    path.write_text(yaml.safe_dump({"data": {"corpus": [{"name": "milton", "weight": -1}]}}))
    with pytest.raises(LumiError, match="the weight of 'milton' must be a positive number"):
        load_config(path)
    path.write_text(yaml.safe_dump({"data": {"corpus": [{"name": "a", "weight": 1}, {"name": "a", "weight": 2}]}}))
    with pytest.raises(LumiError, match="named twice"):
        load_config(path)


def test_each_corpus_keeps_its_own_split_and_range(mixed, corpora):
    assert mixed.corpora == list(corpora)
    assert mixed.mixture_weights() == pytest.approx({corpora[0]: 0.7, corpora[1]: 0.3})
    for split in ("train", "val"):
        ranges = mixed.corpus_ranges(split)
        tokens = np.asarray(mixed.tokens(split))
        nbytes = mixed.target_bytes(split)
        bounds = list(ranges.values())
        assert bounds[0][0] == 0 and bounds[-1][1] == len(tokens)
        for corpus, (start, end) in ranges.items():
            own = split_documents(load_corpus(corpus).documents).documents(split)  # the corpus's own split
            assert int(nbytes[start:end].sum()) == sum(d.nbytes for d in own)  # exact bytes per corpus
            assert tokens[start] == mixed.tokenizer.sep_id
            starts = np.flatnonzero(tokens[start:end] == mixed.tokenizer.sep_id)
            assert len(starts) == len(own)
            text = mixed.tokenizer.decode(tokens[start:end])
            assert text == "".join(d.text for d in own)
    ids = {r["id"] for r in mixed.manifest["documents"]}
    assert all(i.startswith((corpora[0] + "/", corpora[1] + "/")) for i in ids)
    load_prepared(mixed.directory).verify()


def test_sampling_matches_the_weights(mixed):
    """Over 400 steps x 16 rows the share of each corpus is within 0.03 of its weight (3.7 standard deviations
    of a binomial share at p = 0.3); every window lies inside its corpus; the same (seed, step) repeats."""
    ranges, weights = mixed.train_mixture()
    seq_len, rows = 8, 16
    picks = []
    for step in range(400):
        corpus, offsets = mixture_offsets(7, step, ranges, weights, seq_len, rows)
        for c, o in zip(corpus, offsets, strict=True):
            start, end = ranges[c]
            assert start <= o and o + seq_len + 1 <= end
        picks.append(corpus)
    share = np.bincount(np.concatenate(picks), minlength=2) / (400 * rows)
    assert abs(share[0] - 0.7) < 0.03 and abs(share[1] - 0.3) < 0.03
    x1, y1 = step_batch(mixed.tokens("train"), 7, 3, seq_len, rows, mixture=(ranges, weights))
    x2, y2 = step_batch(mixed.tokens("train"), 7, 3, seq_len, rows, mixture=(ranges, weights))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x0, _ = step_batch(mixed.tokens("train"), 7, 3, seq_len, rows)  # one corpus: unchanged behaviour
    assert x0.shape == x1.shape
    with pytest.raises(LumiError, match="fewer than seq_len"):
        mixture_offsets(0, 0, [(0, 5), (5, 500)], [1, 1], 8, 4)


def test_per_corpus_bpb_sums_to_the_total_by_bytes(mixed):
    from lumi.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("llama", "nano", {}, vocab_size=mixed.vocab_size)
    ranges = mixed.corpus_ranges("val")
    result = evaluate_bpb_by_corpus(model, mixed.tokens("val"), mixed.target_bytes("val"), ranges, 16, 8, "cpu")
    parts = result["by_corpus"]
    assert list(parts) == list(ranges)
    assert sum(p["bytes"] for p in parts.values()) == result["bytes"] == mixed.manifest["splits"]["val"]["bytes"]
    # bpb x bytes (= nats / ln 2) adds up across corpora to the total's.
    assert sum(p["bpb"] * p["bytes"] for p in parts.values()) == pytest.approx(result["bpb"] * result["bytes"],
                                                                              rel=1e-12)
    for name, (start, end) in ranges.items():  # each corpus is scored on its own stream
        alone = evaluate_bpb(model, mixed.tokens("val")[start:end], mixed.target_bytes("val")[start:end], 16, 8,
                             "cpu")
        assert parts[name]["bpb"] == pytest.approx(alone["bpb"], rel=1e-9)


def test_training_reports_bpb_per_corpus(mixed, corpora, tmp_path):
    from lumi.run import read_metrics
    from lumi.train.loop import train

    cfg = load_config(None, [
        "model.preset=nano", f"data.dir={mixed.directory}", "train.seq_len=16", "train.batch_size=4",
        "train.budget=4steps", "train.log_every=2", "train.eval_every_s=null", "train.eval_every_steps=2",
        "train.eval_tokens=64", "train.checkpoint_every_s=null", "train.checkpoint_every_steps=null",
        "train.peak_flops=1e11", "train.threads=1",
    ])
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "completed"
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    for row in evals:
        assert {f"val_bpb/{c}" for c in corpora} <= set(row)
    final = json.loads((tmp_path / "run" / "summary.json").read_text())
    per = {c: final[f"final_val_bpb/{c}"] for c in corpora}
    val = {c: mixed.manifest["mixture"]["corpora"][i]["splits"]["val"]["bytes"] for i, c in enumerate(corpora)}
    assert sum(per[c] * val[c] for c in corpora) == pytest.approx(final["final_val_bpb"] * sum(val.values()),
                                                                 rel=1e-9)
    assert final["final_val_protocol"]["subset"] == "full split of every corpus"


def test_tuning_split_cuts_each_corpus(mixed, tmp_path):
    from lumi.data.tuning import carve_tuning_split

    tune = carve_tuning_split(mixed, out=tmp_path / "tune")
    tune.verify()
    assert tune.corpora == mixed.corpora
    parent = mixed.corpus_ranges("train")
    for name in mixed.corpora:
        (a, b), (c, d) = tune.corpus_ranges("train")[name], tune.corpus_ranges("val")[name]
        assert b > a and d > c  # every corpus is on both sides of the tuning split
        assert (b - a) + (d - c) == parent[name][1] - parent[name][0]
    assert tune.manifest["splits"]["train"]["bytes"] + tune.manifest["splits"]["val"]["bytes"] == \
        mixed.manifest["splits"]["train"]["bytes"]

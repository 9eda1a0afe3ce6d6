"""`lumi adapt`: adapters on a frozen core (LoRA via peft, bricks, full), the gates, merge, eval / generate."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lumi.adapt.directory import AdapterDirectory
from lumi.adapt.gates import evaluate_gate
from lumi.adapt.methods import (
    attach,
    brick_param_count,
    lora_param_count,
    merge,
    resolve_brick_targets,
    resolve_linear_targets,
)
from lumi.adapt.runner import AdaptOptions, adapt
from lumi.cli import main
from lumi.errors import LumiError
from lumi.models import build_model
from lumi.models.base import LumiModel, ModelConfig
from lumi.run import Run
from lumi.train.checkpoint import save_checkpoint
from lumi.train.config import load_config, parse_budget
from lumi.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def core(tiny_corpus_dir, tmp_path_factory) -> Path:
    """llama:nano trained 40 steps on the tiny corpus (bytes): the frozen core every test adapts."""
    torch.set_num_threads(1)
    cfg = load_config(None, [
        "model.preset=nano", f"data.corpus=files:{tiny_corpus_dir}", "data.tokenizer=bytes",
        "train.seq_len=32", "train.batch_size=8", "train.budget=40steps", "train.eval_every_s=null",
        "train.eval_tokens=256", "train.checkpoint_every_s=null", "train.peak_flops=1e11", "train.threads=1",
        "train.causality_preflight=false", "train.causality_audit=false", "train.final_eval=subset",
    ])  # fmt: skip
    run = tmp_path_factory.mktemp("adapt") / "core"
    train(cfg, run, progress=False)
    return run


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> str:
    """A small, very regular code domain (ten documents): easy to gain on in a few steps."""
    d = tmp_path_factory.mktemp("domain") / "code"
    d.mkdir()
    for i in range(10):
        text = "".join(f"def add_{i}_{j}(x):\n    return x + {j}\n\n" for j in range(30))
        (d / f"m{i}.txt").write_text(text, encoding="utf-8")
    return f"files:{d}"


def core_model(core: Path) -> LumiModel:
    return Run(core).load_model()


def probe(model: LumiModel) -> torch.Tensor:
    return (torch.arange(64).reshape(2, 32) * 7) % model.config.vocab_size


@pytest.mark.parametrize("method", ["lora", "brick"])
def test_the_adapted_model_starts_exactly_at_the_core(core, method):
    model = core_model(core)
    x = probe(model)
    with torch.no_grad():
        before = model(x)
    torch.manual_seed(0)
    adapter = attach(model, method, 4, None, None)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # exactly, not approximately
        assert {n for n, p in model.named_parameters() if p.requires_grad} and all(
            not p.requires_grad
            for n, p in model.named_parameters()
            if "lora_" not in n and "adapter_bricks" not in n
        )  # the core is frozen, only the adapter trains
        for p in model.parameters():  # the adapter is really in the forward path
            if p.requires_grad:
                p.normal_(0, 0.1)
        assert not torch.allclose(model(x), before)
    assert len(adapter.modules) == (8 if method == "lora" else 2)


def test_parameter_counts_match_the_formulas():
    torch.manual_seed(0)
    gqa = build_model("llama", "nano", {"n_kv_heads": 1}, vocab_size=257)  # d 64, 2 heads of 32: k/v give 32
    rank = 4
    modules = resolve_linear_targets(gqa, None)
    assert [m.rsplit(".", 1)[-1] for m in modules] == ["q_proj", "k_proj", "v_proj", "o_proj"] * 2
    expected = 2 * rank * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))  # r (in + out) per projection
    assert lora_param_count(gqa, modules, rank) == expected == 3584
    attach(gqa, "lora", rank, None, None)
    assert sum(p.numel() for p in gqa.parameters() if p.requires_grad) == expected
    # bricks: 2 r d per block; spacebyte's local (d 32) and global (d 64) stacks have different widths
    sb = build_model("spacebyte", "nano", vocab_size=257)
    widths = resolve_brick_targets(sb, None)
    c = sb.config
    assert sorted(set(widths.values())) == [c.d_local, c.d_global]
    by_width = 2 * rank * (c.d_local * (len(widths) - c.n_global_layers) + c.d_global * c.n_global_layers)
    assert brick_param_count(widths, rank) == by_width
    attach(sb, "brick", rank, None, None)
    assert sum(p.numel() for p in sb.parameters() if p.requires_grad) == by_width


def test_bricks_say_which_models_they_cannot_attach_to_and_targets_are_checked():
    class Flat(LumiModel[ModelConfig]):
        def __init__(self) -> None:
            super().__init__(ModelConfig(vocab_size=16))
            self.embed = torch.nn.Embedding(16, 8)
            self.head = torch.nn.Linear(8, 16)

        def forward(self, tokens):
            return self.head(self.embed(tokens))

    with pytest.raises(LumiError, match="cannot attach to Flat: it has no list of residual blocks"):
        attach(Flat(), "brick", 2, None, None)
    model = build_model("llama", "nano", vocab_size=257)
    with pytest.raises(LumiError, match=r"did you mean 'blocks'"):
        resolve_brick_targets(model, ["blocs"])
    assert list(resolve_brick_targets(model, ["blocks.1"])) == ["blocks.1"]
    with pytest.raises(LumiError, match=r"did you mean 'q_proj'"):
        resolve_linear_targets(model, ["q_prj"])
    with pytest.raises(LumiError, match=r"is a RMSNorm, not an nn\.Linear"):
        resolve_linear_targets(model, ["attn_norm"])


def test_merged_lora_logits_equal_the_adapted_model():
    torch.manual_seed(0)
    model = build_model("llama", "nano", vocab_size=257)
    adapter = attach(model, "lora", 4, 8.0, ["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained-looking adapter, not the zero start
        x = probe(model)
        adapted = model(x)
        merged = merge(model, adapter)
        folded = merged(x)
    assert sorted(n for n, _ in merged.named_parameters()) == sorted(
        n for n, _ in build_model("llama", "nano", vocab_size=257).named_parameters()
    )  # the core's own module names again: any verb can read it
    torch.testing.assert_close(folded, adapted, atol=1e-5, rtol=1e-5)


def test_a_destructive_full_fine_tune_fails_the_preservation_gate(core, domain, tmp_path):
    o = AdaptOptions(domain, "full", parse_budget("8steps"), seeds=2, lr=1.0, eval_tokens=512, out=tmp_path / "o",
                     progress=False)  # fmt: skip
    r = adapt(core, o)
    assert r["gate"]["preservation"]["verdict"] == "fail" and r["gate"]["verdict"] == "fail"
    assert all(s["forgetting"] > 0.5 or s["diverged"] for s in r["seeds"])


def test_gate_rules_on_known_numbers():
    ok = evaluate_gate(2.0, {0: 1.90, 1: 1.91, 2: 1.89}, 1.0, {0: 1.001, 1: 1.002, 2: 1.0015})
    assert (ok.domain.verdict, ok.preservation.verdict, ok.verdict) == ("pass", "pass", "pass")
    assert ok.domain.mean == pytest.approx(-0.1) and ok.domain.ci_high < -0.02
    small = evaluate_gate(2.0, {0: 1.995, 1: 1.996, 2: 1.994}, 1.0, {0: 1.0, 1: 1.0, 2: 1.0})
    assert (small.domain.evidence, small.preservation.evidence) == (
        "refuted",
        "shown",
    )  # zero spread: the point
    assert small.verdict == "fail"
    wide = evaluate_gate(2.0, {0: 1.9, 1: 1.9}, 1.0, {0: 0.99, 1: 1.05})  # a gate passes on evidence only
    assert (wide.preservation.verdict, wide.preservation.evidence, wide.verdict) == (
        "fail",
        "inconclusive",
        "fail",
    )
    one = evaluate_gate(2.0, {0: 1.5}, 1.0, {0: 1.0})
    assert one.domain.evidence == "no interval" and one.verdict == "fail" and one.domain.ci_low is None
    diverged = evaluate_gate(2.0, {0: 1.9, 1: math.nan}, 1.0, {0: 1.0, 1: math.nan})
    assert diverged.preservation.evidence == "diverged" and diverged.verdict == "fail"


def test_the_verb_end_to_end_with_merge_eval_and_generate(core, domain, tmp_path, capsys):
    out = tmp_path / "lora"
    rc = main(["adapt", str(core), "--corpus", domain, "--method", "lora", "--rank", "4", "--budget", "15steps",
               "--seeds", "2", "--lr", "1e-2", "--merge", "--out", str(out), "--json"])  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert rc == (0 if r["gate"]["verdict"] == "pass" else 1)
    assert [s["seed"] for s in r["seeds"]] == [0, 1] and all(s["steps"] == 15 for s in r["seeds"])
    assert all(s["gain"] > 0.1 for s in r["seeds"])  # a very regular domain: clearly learnt
    assert r["seeds"][0]["domain_after"] != r["seeds"][1]["domain_after"]  # seeds differ (init, data order)
    assert r["trainable_params"] == 8 * 4 * (64 + 64)
    for s in r["seeds"]:
        cfg = json.loads((out / f"seed-{s['seed']}" / "adapter_config.json").read_text())
        weights = out / f"seed-{s['seed']}" / "adapter.safetensors"
        assert (
            cfg["trainable_params"] == r["trainable_params"]
            and cfg["adapter_bytes"] == weights.stat().st_size
        )
        assert cfg["core_run"] == str(core.resolve()) and cfg["method"] == "lora" and cfg["rank"] == 4
        assert s["merge_max_logit_diff"] <= 1e-4
    report = (out / "report.md").read_text()
    assert "| 0 | 15 |" in report and "| 1 | 15 |" in report and "Gate:" in report
    # lumi eval on an adapter: the same numbers as adapt measured (same protocol), the domain on its val split
    assert main(["eval", str(out / "seed-1"), "--corpus", domain, "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["corpora"][0]["bpb"] == pytest.approx(r["seeds"][1]["domain_after"], abs=1e-9)
    assert e["val_bpb"] == pytest.approx(r["seeds"][1]["general_after"], abs=1e-9)
    assert "validation split" in e["corpora"][0]["scope"] and e["adapter"]["seed"] == 1
    assert (out / "seed-1" / "eval" / "results.json").is_file()
    # the merged run is a normal run directory with the same general BPB
    assert main(["eval", str(out / "merged-seed-1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(e["val_bpb"], abs=1e-5)
    assert main(["generate", str(out / "seed-0"), "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["new_tokens"] == 8
    assert main(["eval", str(out)]) == 2
    assert "holds the adapters of 2 seeds; give one of them" in capsys.readouterr().err


def test_a_brick_run_through_the_cli(core, domain, tmp_path, capsys):
    out = tmp_path / "brick"
    rc = main(["adapt", str(core), "--corpus", domain, "--method", "brick", "--rank", "4", "--budget", "10steps",
               "--seeds", "1", "--lr", "1e-2", "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1 and "Gate: FAIL" in text and "(no interval)" in text  # one seed: no interval
    r = json.loads((out / "results.json").read_text())
    assert r["trainable_params"] == 2 * 2 * 4 * 64 and r["modules"] == ["blocks.0", "blocks.1"]
    assert r["seeds"][0]["gain"] > 0


def _no_checkpoint_run(core: Path, tmp_path: Path) -> str:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((core / "config.yaml").read_text())
    return str(bare)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no-checkpoint", "has no complete checkpoint"),
        ("unknown-target", "no layer of that name (did you mean 'q_proj'?)"),
        ("merge-brick", "a brick cannot be merged"),
        ("same-corpus", "is the corpus run"),
        ("lossy", "does not tokenize losslessly with the run's tokenizer bytes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, needle, core, domain, tmp_path, capsys, monkeypatch):
    run, corpus, extra = str(core), domain, ["--method", "lora"]
    if case == "no-checkpoint":
        run = _no_checkpoint_run(core, tmp_path)
    elif case == "unknown-target":
        extra += ["--targets", "q_prj"]
    elif case == "merge-brick":
        extra = ["--method", "brick", "--merge"]
    elif case == "same-corpus":
        corpus = yaml.safe_load((core / "config.yaml").read_text())["data"]["corpus"]
    elif case == "lossy":  # a tokenizer that normalises tabs to spaces, as some do: not lossless
        from lumi.data.tokenizers import BytesTokenizer

        encode = BytesTokenizer.encode_batch
        monkeypatch.setattr(BytesTokenizer, "encode_batch",
                            lambda self, texts: encode(self, [t.replace("\t", "    ") for t in texts]))  # fmt: skip
        lossy = tmp_path / "tabs"
        lossy.mkdir()
        for i in range(4):
            (lossy / f"t{i}.txt").write_text(f"if x:\n\treturn {i}\n" * 20, encoding="utf-8")
        corpus = f"files:{lossy}"
    rc = main(["adapt", run, "--corpus", corpus, *extra, "--budget", "2steps", "--seeds", "1",
               "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and err.count("\n") == 0 and err.startswith("lumi adapt: error:")


def test_an_adapter_refuses_a_core_that_trained_on(core, domain, tmp_path):
    moved = tmp_path / "core-copy"
    shutil.copytree(core, moved)
    out = tmp_path / "o"
    adapt(moved, AdaptOptions(domain, "brick", parse_budget("2steps"), seeds=1, rank=2, eval_tokens=64, out=out,
                              progress=False))  # fmt: skip
    adapter = AdapterDirectory.find(out / "seed-0")
    assert adapter is not None and adapter.load_model() is not None
    model = Run(moved).load_model()
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    save_checkpoint(moved / "checkpoints", model, {}, copy.deepcopy(Run(moved).checkpoint_state()))
    with pytest.raises(LumiError, match="no longer has the weights this adapter was trained on"):
        adapter.load_model()

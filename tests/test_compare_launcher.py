"""`lumi compare --launcher slurm` through submitit: the real submission path with submitit's LocalExecutor
(launcher.cluster: local spawns real job processes), the ledger of job ids, collecting without resubmitting,
resubmitting a failed run; and the one-line errors for a missing submitit and a refused sbatch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from lumi.cli import main
from lumi.compare.launchers import LauncherSettings, SubmititLauncher, launcher_section, make_launcher
from lumi.compare.runner import RunJob
from lumi.errors import LumiError

FLAKY_PLUGIN = '''
"""llama:nano whose runs of arm b fail their training forwards (8 rows; no check uses 8) while $FLAKY_MARKER exists."""
import os
import sys

from lumi import register
from lumi.models.llama import Llama, LlamaConfig


@register("flaky", description="fails while a marker file exists", presets={"nano": dict(n_layers=1, d_model=32,
                                                                                         n_heads=2)})
class Flaky(Llama):
    config_class = LlamaConfig

    def forward(self, tokens, cache=None):
        marked = os.path.exists(os.environ.get("FLAKY_MARKER", "/nonexistent"))
        if marked and self.training and tokens.shape[0] == 8 and "/b/seed-" in " ".join(sys.argv):
            raise RuntimeError("planted failure while the marker exists")
        return super().forward(tokens, cache)
'''


def _spec(tmp_path: Path, corpus: Path) -> Path:
    spec = {
        "arms": ["a=flaky:nano", "b=flaky:nano"],  # one definition: lumi check runs once
        "seeds": [0],
        "budget": "10steps",
        "jobs": 2,
        "data": {"corpus": f"files:{corpus}", "tokenizer": "bytes"},
        "train": {"seq_len": 32, "batch_size": 8, "eval_every_steps": 10, "eval_every_s": None,
                  "eval_tokens": 256, "log_every": 5, "checkpoint_every_s": None, "peak_flops": 1e11},
        "launcher": {"cluster": "local", "time_limit_min": 10},  # submitit's LocalExecutor: real processes
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_slurm_launcher_submits_collects_and_resubmits_failed_runs(tiny_corpus_dir, tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "flaky.py"
    plugin.write_text(FLAKY_PLUGIN)
    marker = tmp_path / "fail-now"
    marker.write_text("")
    monkeypatch.setenv("FLAKY_MARKER", str(marker))  # the job processes inherit it
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(_spec(tmp_path, tiny_corpus_dir)), "--launcher", "slurm",
            "--model-file", str(plugin), "--out", str(out), "--no-progress", "--no-plots"]
    base, flaky = out / "runs" / "a" / "seed-0", out / "runs" / "b" / "seed-0"
    ledger_path = out / "launcher" / "jobs.json"

    # 1) Both runs go out as one job array; the flaky one fails, the baseline completes.
    assert main(args) == 0
    capsys.readouterr()
    ledger = json.loads(ledger_path.read_text())
    assert ledger["submitting"] is None and sorted(ledger["runs"]) == ["runs/a/seed-0", "runs/b/seed-0"]
    first_ids = {k: r["job_id"] for k, r in ledger["runs"].items()}
    assert len(set(first_ids.values())) == 2 and all(r["state"] == "FINISHED" for r in ledger["runs"].values())
    assert _status(base)["status"] == "completed" and _status(base)["steps"] == 10
    assert _status(flaky)["status"] == "failed" and "planted failure" in _status(flaky)["error"]
    assert "$ " in (out / "logs" / "a" / "seed-0.log").read_text()  # the same log as the local pool
    results = json.loads((out / "results.json").read_text())
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["completed", "failed"]

    # 2) Re-run: results are collected, nothing is submitted (the failed run is kept, as locally).
    marker.unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 reused" in err and "1 failed (kept" in err
    assert {k: r["job_id"] for k, r in json.loads(ledger_path.read_text())["runs"].items()} == first_ids

    # 3) --retry-failed resubmits only the failed run; it completes now.
    assert main([*args, "--retry-failed"]) == 0
    ids = {k: r["job_id"] for k, r in json.loads(ledger_path.read_text())["runs"].items()}
    assert ids["runs/a/seed-0"] == first_ids["runs/a/seed-0"]
    assert ids["runs/b/seed-0"] != first_ids["runs/b/seed-0"]
    assert _status(flaky)["status"] == "completed" and _status(flaky)["steps"] == 10
    assert [p.name for p in flaky.parent.iterdir() if p.name.startswith("seed-0.failed")] == ["seed-0.failed"]
    results = json.loads((out / "results.json").read_text())
    assert [a["runs"][0]["status"] for a in results["arms"]] == ["completed", "completed"]


def test_missing_submitit_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    with pytest.raises(LumiError, match=r"needs submitit, which is not installed: pip install 'lumi-lab\[slurm\]'"):
        make_launcher(LauncherSettings(kind="slurm"), tmp_path)
    assert main(["compare", "llama:nano", "--launcher", "slurm", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lumi-lab[slurm]" in err and not (tmp_path / "c").exists()


def test_refused_sbatch_shows_the_schedulers_message_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no Slurm on this machine: refused before any work
    assert main(["compare", "llama:nano", "--launcher", "slurm", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot use the slurm launcher" in err and "srun" in err
    assert not (tmp_path / "c").exists()

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nogpu' >&2\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    comp = tmp_path / "cmp"
    launcher = SubmititLauncher(LauncherSettings(kind="slurm", partition="nogpu"), comp)
    job = RunJob("llama", 0, comp / "runs" / "llama" / "seed-0", comp / "configs" / "x.yaml",
                 comp / "logs" / "llama" / "seed-0.log")
    with pytest.raises(LumiError, match=r"submitting 1 runs to slurm failed: sbatch: error: invalid partition "
                                        r"specified: nogpu"):
        launcher.run([job], 1, lambda j: None, lambda j: None, lambda r: None)
    ledger = json.loads((comp / "launcher" / "jobs.json").read_text())
    assert ledger == {"runs": {}, "submitting": None}  # nothing half-submitted left behind


def test_launcher_section_errors_name_the_field():
    assert launcher_section(None, "spec.yaml").kind == "local"
    s = launcher_section({"kind": "slurm", "partition": "gpu", "gpus_per_run": 1, "sbatch": {"account": "lab"}}, "s")
    assert (s.kind, s.partition, s.gpus_per_run, s.sbatch) == ("slurm", "gpu", 1, {"account": "lab"})
    with pytest.raises(LumiError, match=r"spec.yaml: unknown key launcher.partiton \(did you mean 'partition'"):
        launcher_section({"partiton": "gpu"}, "spec.yaml")
    with pytest.raises(LumiError, match=r"spec.yaml: launcher.kind must be one of local, slurm, got 'k8s'"):
        launcher_section({"kind": "k8s"}, "spec.yaml")
    with pytest.raises(LumiError, match=r"launcher.gpus_per_run must be a whole number >= 0"):
        launcher_section({"gpus_per_run": -1}, "spec.yaml")

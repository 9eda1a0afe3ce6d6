"""A comparison directory is safe to share and to resume: resumed children get the user's plugin files
from compare's own config (never from the run directory), one `lumi compare` writes a directory at a
time, a child stopped by an interrupt is `interrupted` (never `failed`), and a closed stdout stops nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lumi.cli.common import PipeSafeStream
from lumi.compare.runner import RunJob


def test_resumed_child_gets_the_plugin_files_from_compares_config(tmp_path):
    cfg = tmp_path / "configs" / "seed-0.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(yaml.safe_dump({"model": {"name": "mine", "files": ["/abs/my_arch.py", "/abs/other.py"]}}))
    job = RunJob("mine", 0, tmp_path / "runs" / "seed-0", cfg, tmp_path / "log")
    fresh = job.command()
    assert fresh[-4:] == ["--config", str(cfg), "--out", str(tmp_path / "runs" / "seed-0")]
    assert "--model-file" not in fresh  # a fresh child reads them from the config compare wrote
    job.resume = True
    resumed = job.command()
    assert resumed[resumed.index("--resume") + 1] == str(tmp_path / "runs" / "seed-0")
    assert resumed[-4:] == ["--model-file", "/abs/my_arch.py", "--model-file", "/abs/other.py"]
    assert RunJob("x", 0, Path("r"), tmp_path / "missing.yaml", Path("l"), resume=True).plugin_files() == []


def test_second_compare_on_the_same_directory_is_refused(tmp_path, capsys):
    from lumi.cli import main
    from lumi.lock import lock_directory

    out = tmp_path / "cmp"
    out.mkdir()
    with lock_directory(out, "comparison directory"):  # as if another `lumi compare` were running there
        code = main(["compare", "llama:nano", "llama:nano+qk_norm=true", "--seeds", "1", "--budget", "10steps",
                     "--out", str(out), "--no-progress", "--corpus", "files:/nonexistent/*.txt"])
        assert code == 2
    err = capsys.readouterr().err
    assert f"comparison directory '{out}' is in use by another lumi process (PID {os.getpid()})" in err
    assert not (out / "compare.yaml").exists()


def test_compare_out_below_a_regular_file_is_one_line(tmp_path, capsys):
    from lumi.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["compare", "llama:nano", "llama:nano+qk_norm=true", "--out", str(blocker / "cmp"),
                 "--no-progress"]) == 2
    assert f"cannot create the comparison directory {blocker / 'cmp'}: Not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(("code", "status", "words"), [
    (130, "interrupted", "stopped by an interrupt"),
    (-signal.SIGINT, "interrupted", "stopped by an interrupt"),  # SIGINT before lumi's handler was installed
    (-signal.SIGTERM, "interrupted", "stopped by an interrupt"),
    (-signal.SIGKILL, "failed", "was killed by signal 9 (SIGKILL) without writing a final status"),
    (1, "failed", "exited with code 1 without writing a final status"),
])
def test_a_child_without_a_final_status_is_recorded_by_how_it_ended(tmp_path, code, status, words):
    from lumi.compare.comparison import _mark_killed

    job = RunJob("a", 0, tmp_path / "run", tmp_path / "cfg.yaml", tmp_path / "log", returncode=code)
    _mark_killed(job, lambda msg: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == status and words in summary["error"]
    assert "out of memory" not in summary["error"]  # a guess the message should not make


def test_closed_stdout_does_not_stop_the_work():
    """`lumi ... | head`: once the reader is gone, output is dropped instead of raising mid-run."""
    r, w = os.pipe()
    os.close(r)
    stream = PipeSafeStream(os.fdopen(w, "w", buffering=1))
    for _ in range(3):
        print("a progress line", file=stream, flush=True)  # would raise BrokenPipeError unwrapped
    assert stream.broken


def test_piped_lumi_models_ends_cleanly():
    proc = subprocess.run(f"{sys.executable} -m lumi models | head -c 10", shell=True, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src")),
                          timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr

"""A comparison directory is safe to share and to resume: resumed children get the user's plugin files
from compare's own config (never from the run directory)."""

from __future__ import annotations

from pathlib import Path

import yaml

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

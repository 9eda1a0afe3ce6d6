"""DDP: two CPU processes (gloo, torchrun) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lumi.train.config import load_config
from lumi.train.loop import train
from lumi.run import read_metrics

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def test_two_processes_match_one_process(tiny_corpus_dir, tmp_path):
    cfg = load_config(None, [
        "model.preset=nano", f"data.corpus=files:{tiny_corpus_dir}", "data.tokenizer=bytes",
        "train.seq_len=32", "train.batch_size=8", "train.budget=16steps", "train.log_every=1",
        "train.eval_every_s=null", "train.eval_every_steps=8", "train.eval_tokens=200",
        "train.checkpoint_every_s=null", "train.peak_flops=1e11", "train.threads=1",
    ])
    cfg_file = tmp_path / "cfg.yaml"
    cfg.save_yaml(cfg_file)
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lumi", "train", "--config", str(cfg_file), "--out", str(two), "--no-progress", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = tmp_path / "one"
    train(load_config(cfg_file), one, progress=False)  # the single-process reference, meanwhile
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

    s2 = json.loads(out)  # only rank 0 prints the summary
    s1 = json.loads((one / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["status"] == "completed" and s2["tokens"] == s1["tokens"]
    rows1, rows2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in rows2] == [(r["kind"], r["step"]) for r in rows1]  # rank 0 writes only
    loss1 = [r["loss"] for r in rows1 if r["kind"] == "train"]
    loss2 = [r["loss"] for r in rows2 if r["kind"] == "train"]
    assert len(loss1) == 16 and loss2 == pytest.approx(loss1, rel=1e-4, abs=1e-5)
    bpb1 = [r["val_bpb"] for r in rows1 if r["kind"] == "eval"]
    bpb2 = [r["val_bpb"] for r in rows2 if r["kind"] == "eval"]
    assert bpb2 == pytest.approx(bpb1, rel=1e-4)  # evaluation windows split across ranks, sums all-reduced
    state = json.loads((two / "checkpoints/latest/state.json").read_text())
    assert len(state["rng"]) == 2  # every rank's RNG state is saved for an exact resume
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "config.yaml", "env.json", "metrics.jsonl",
                                                    "summary.json"]

"""FSDP2 (train.parallel=fsdp): two CPU processes (gloo, torchrun) train like one process with the same
global batch (the default optimizer: Muon on gathered matrices + AdamW), write the single-process checkpoint
format, and survive SIGKILL + --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lumi.errors import LumiError
from lumi.run import read_metrics
from lumi.train import checkpoint as ckpt
from lumi.train.config import load_config
from lumi.train.loop import train

REPO = Path(__file__).resolve().parents[1]
STEPS = 60

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def _config(corpus: Path, *extra: str):
    return load_config(None, [
        "model.preset=nano", f"data.corpus=files:{corpus}", "data.tokenizer=bytes",
        "train.seq_len=32", "train.batch_size=8", "train.grad_accum=2", f"train.budget={STEPS}steps",
        "train.log_every=1", "train.eval_every_s=null", "train.eval_every_steps=30", "train.eval_tokens=200",
        "train.final_eval=subset", "train.checkpoint_every_s=null", "train.checkpoint_every_steps=5",
        "train.peak_flops=1e11", "train.threads=1", *extra,
    ])


def _torchrun(*args: str, cwd: Path) -> subprocess.Popen:
    """``lumi train`` under torchrun with 2 processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lumi", "train", *args, "--no-progress", "--json"],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _latest_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoints" / "latest" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def fsdp_runs(tiny_corpus_dir, tmp_path_factory):
    """An FSDP run on 2 processes and the same config as one plain process (trained meanwhile)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg_file = tmp / "fsdp.yaml"
    _config(tiny_corpus_dir, "train.parallel=fsdp").save_yaml(cfg_file)
    two = tmp / "two"
    proc = _torchrun("--config", str(cfg_file), "--out", str(two), cwd=tmp)
    one = tmp / "one"
    train(_config(tiny_corpus_dir), one, progress=False)  # the single-process reference (ddp: no wrapper)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return cfg_file, one, two, json.loads(out)


def test_fsdp_two_processes_match_one_process_and_write_the_same_checkpoint(fsdp_runs):
    _, one, two, s2 = fsdp_runs
    s1 = json.loads((one / "summary.json").read_text())
    assert s2["world_size"] == 2 and s2["status"] == "completed" and s2["tokens"] == s1["tokens"]
    assert s2["causality_audit"]["passed"]  # the audit probed the gathered (plain) weights
    rows1, rows2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in rows2] == [(r["kind"], r["step"]) for r in rows1]
    loss1 = [r["loss"] for r in rows1 if r["kind"] == "train"]
    loss2 = [r["loss"] for r in rows2 if r["kind"] == "train"]
    assert len(loss1) == STEPS and loss2 == pytest.approx(loss1, rel=1e-4, abs=1e-5)
    bpb1 = [r["val_bpb"] for r in rows1 if r["kind"] == "eval"]
    bpb2 = [r["val_bpb"] for r in rows2 if r["kind"] == "eval"]
    assert len(bpb1) == 3 and bpb2 == pytest.approx(bpb1, rel=1e-4)

    # Full state dicts gathered on rank 0: the checkpoint has the single-process layout and numbers.
    c1, c2 = one / "checkpoints/latest", two / "checkpoints/latest"
    assert sorted(p.name for p in c2.iterdir()) == sorted(p.name for p in c1.iterdir())
    w1, w2 = load_file(c1 / ckpt.WEIGHTS), load_file(c2 / ckpt.WEIGHTS)
    assert sorted(w2) == sorted(w1)
    assert all(torch.allclose(w2[k], w1[k], rtol=1e-3, atol=1e-4) for k in w1)
    o1, o2 = ckpt.load_optimizer_state(c1), ckpt.load_optimizer_state(c2)
    assert sorted(o2) == sorted(o1) == ["adamw", "muon"]
    for part, key in (("adamw", "exp_avg"), ("muon", "momentum_buffer")):
        assert [g["params"] for g in o2[part]["param_groups"]] == [g["params"] for g in o1[part]["param_groups"]]
        assert sorted(o2[part]["state"]) == sorted(o1[part]["state"])
        for i, st in o1[part]["state"].items():
            assert o2[part]["state"][i][key].shape == st[key].shape
            assert torch.allclose(o2[part]["state"][i][key], st[key], rtol=1e-3, atol=1e-5)
    assert all(float(st["step"]) == STEPS for st in o2["adamw"]["state"].values())


def test_fsdp_sigkill_then_resume_matches_uninterrupted_run(fsdp_runs, tmp_path):
    cfg_file, _, reference, _ = fsdp_runs
    killed = tmp_path / "killed"
    proc = _torchrun("--config", str(cfg_file), "--out", str(killed), cwd=tmp_path)
    deadline = time.time() + 180
    while (_latest_step(killed) or 0) < 10:
        assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()}"
        assert time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    ranks = _children(proc.pid)  # torchrun starts each rank in a session of its own
    assert len(ranks) == 2
    for pid in [*ranks, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    at_kill = ckpt.load_state(ckpt.find_checkpoint(killed / "checkpoints"))["step"]
    assert 10 <= at_kill < STEPS

    resumed = _torchrun("--resume", str(killed), cwd=tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    s = json.loads(out)
    assert s["status"] == "completed" and s["resumed_from_step"] == at_kill and s["steps"] == STEPS

    def rows(run):
        return [(r["kind"], r["step"], r.get("loss"), r.get("lr"), r.get("val_bpb"))
                for r in read_metrics(run / "metrics.jsonl")]

    assert rows(killed) == rows(reference)  # exact: weights, optimizer state and RNG all came back
    wk, wr = load_file(killed / "checkpoints/latest" / ckpt.WEIGHTS), load_file(reference / "checkpoints/latest"
                                                                                 / ckpt.WEIGHTS)
    assert all(torch.equal(wk[k], wr[k]) for k in wr)


def test_fsdp_refusals_are_one_line(tiny_corpus_dir, tmp_path):
    with pytest.raises(LumiError, match=r"train.parallel=fsdp needs several processes: start it with torchrun"):
        train(_config(tiny_corpus_dir, "train.parallel=fsdp"), tmp_path / "single", progress=False)
    assert not (tmp_path / "single").exists()  # refused before anything was written
    with pytest.raises(LumiError, match=r"train.parallel"):
        _config(tiny_corpus_dir, "train.parallel=zero3")

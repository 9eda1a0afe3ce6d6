"""The training loop end to end on a tiny corpus: run directory, determinism, divergence, resume, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lumi.errors import LumiError
from lumi.train import checkpoint as ckpt
from lumi.train.batches import step_batch
from lumi.train.config import load_config
from lumi.train.loop import train
from lumi.run import read_metrics

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def tiny(corpus_dir: Path, *overrides: str):
    """llama:nano on the tiny corpus, bytes tokenizer, deterministic cadence (no time-based events)."""
    return load_config(None, [
        "model.preset=nano", f"data.corpus=files:{corpus_dir}", "data.tokenizer=bytes",
        "train.seq_len=32", "train.batch_size=4", "train.budget=30steps", "train.log_every=5",
        "train.eval_every_s=null", "train.eval_every_steps=10", "train.eval_tokens=128",
        "train.checkpoint_every_s=null", "train.checkpoint_every_steps=10", "train.peak_flops=1e11",
        "train.threads=1", *overrides,
    ])


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))


def test_run_directory_is_complete(tiny_corpus_dir, tmp_path):
    cfg = tiny(tiny_corpus_dir)
    run = tmp_path / "run"
    s = train(cfg, run, progress=False)
    assert s["status"] == "completed" and s["error"] is None and s["steps"] == 30
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "env.json", "metrics.jsonl",
                                                    "summary.json"]
    assert load_config(run / "config.yaml") == cfg  # re-running the saved config reproduces the run
    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "device", "threads", "hostname", "git_rev"} <= set(env) and env["threads"] == 1
    summary = json.loads((run / "summary.json").read_text())
    for key in ("model", "preset", "params", "non_embedding_params", "active_params", "flops_per_token", "seq_len",
                "steps", "tokens", "flops", "wall_s", "tok_per_s", "final_val_bpb", "final_val_protocol", "status",
                "error", "diverged_at_step"):
        assert key in summary, key
    assert summary["tokens"] == 30 * 4 * 32 and summary["flops"] == summary["tokens"] * summary["flops_per_token"]
    assert summary["final_val_protocol"]["subset"] == "full split"
    assert summary["final_val_bpb"] < summary["unigram_val_bpb"]

    rows = read_metrics(run / "metrics.jsonl")
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert train_steps == [5, 10, 15, 20, 25, 30]
    for r in rows:
        if r["kind"] == "train":
            assert {"step", "tokens", "loss", "lr", "tok_per_s", "flops", "elapsed_s", "mfu"} <= set(r)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["step"], r["final"]) for r in evals] == [(10, False), (20, False), (30, False), (30, True)]
    assert all(r["protocol"]["targets"] == 128 for r in evals[:3])
    assert {"val_bpb", "val_loss", "train_loss_ema", "tokens", "flops", "elapsed_s"} <= set(evals[0])
    assert rows[-1]["val_bpb"] == summary["final_val_bpb"]

    latest = run / "checkpoints" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == sorted(ckpt.FILES)
    assert json.loads((latest / "model_config.json").read_text())["vocab_size"] == 257
    state = json.loads((latest / "state.json").read_text())
    assert state["step"] == 30 and state["data"]["next_step"] == 30 and state["rng"]
    opt = torch.load(latest / "optimizer.pt", weights_only=True)
    assert "adamw" in opt
    assert not list((run / "checkpoints").glob(".tmp*"))


def test_same_seed_is_bit_for_bit_and_seeds_split(tiny_corpus_dir, tmp_path):
    a = train(tiny(tiny_corpus_dir, "train.budget=12steps"), tmp_path / "a", progress=False)
    b = train(tiny(tiny_corpus_dir, "train.budget=12steps"), tmp_path / "b", progress=False)
    assert a["final_val_bpb"] == b["final_val_bpb"]
    assert [r["loss"] for r in train_rows(tmp_path / "a")] == [r["loss"] for r in train_rows(tmp_path / "b")]
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # Same init, different data order: different losses; same data, different init: different weights.
    c = tiny(tiny_corpus_dir, "train.budget=12steps", "train.data_seed=5")
    train(c, tmp_path / "c", progress=False)
    assert [r["loss"] for r in train_rows(tmp_path / "c")] != [r["loss"] for r in train_rows(tmp_path / "a")]


def test_data_order_is_paired_and_ranks_take_disjoint_slices():
    stream = np.arange(1000, dtype=np.uint16)
    x, y = step_batch(stream, data_seed=3, step=7, seq_len=16, batch_size=8)
    x2, _ = step_batch(stream, data_seed=3, step=7, seq_len=16, batch_size=8)
    assert torch.equal(x, x2) and torch.equal(y[:, :-1], x[:, 1:])
    halves = [step_batch(stream, 3, 7, 16, 8, rank=r, world_size=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), x)
    assert not torch.equal(step_batch(stream, 3, 8, 16, 8)[0], x)
    assert not torch.equal(step_batch(stream, 4, 7, 16, 8)[0], x)


NAN_PLUGIN = '''
from lumi import register
from lumi.models.llama import Llama, LlamaConfig


@register("nanbomb", description="llama whose logits turn NaN from its 8th training forward on",
          presets={"nano": dict(n_layers=1, d_model=32, n_heads=2)})
class NanBomb(Llama):
    config_class = LlamaConfig
    calls = 0

    def forward(self, tokens, cache=None):
        out = super().forward(tokens, cache)
        if self.training:
            self.calls += 1
            if self.calls >= 8:
                out = out * float("nan")
        return out
'''


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_corpus_dir, tmp_path):
    plugin = tmp_path / "nanbomb.py"
    plugin.write_text(NAN_PLUGIN)
    cfg = tiny(tiny_corpus_dir, "model.name=nanbomb", f"model.files=[{plugin}]", "train.checkpoint_every_steps=5")
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["status"] == "diverged" and s["diverged_at_step"] == 8 and s["steps"] == 7
    assert "at step 8" in s["error"] and "last good checkpoint: step 5" in s["error"]
    assert s["final_val_bpb"] is None
    latest = ckpt.find_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt.load_state(latest)["step"] == 5
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "run").values())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def _lumi(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "lumi", "train", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _latest_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoints" / "latest" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_corpus_dir, tmp_path):
    cfg = tiny(tiny_corpus_dir, "train.budget=150steps", "train.checkpoint_every_steps=10",
               "train.eval_every_steps=50", "train.eval_tokens=64", "train.final_eval=subset")
    cfg_file = tmp_path / "cfg.yaml"
    cfg.save_yaml(cfg_file)

    killed = tmp_path / "killed"
    proc = _lumi("--config", str(cfg_file), "--out", str(killed))
    deadline = time.time() + 180
    while (_latest_step(killed) or 0) < 30:
        assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()}"
        assert time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = ckpt.load_state(ckpt.find_checkpoint(killed / "checkpoints"))["step"]
    assert 30 <= at_kill < 150

    resumed = _lumi("--resume", str(killed))
    reference = tmp_path / "reference"
    train(load_config(cfg_file), reference, progress=False)  # meanwhile, the uninterrupted run in this process
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    s = json.loads((killed / "summary.json").read_text())
    assert s["status"] == "completed" and s["resumed_from_step"] == at_kill and s["steps"] == 150

    def rows(run):
        return [(r["kind"], r["step"], r.get("loss"), r.get("lr"), r.get("val_bpb"))
                for r in read_metrics(run / "metrics.jsonl")]

    assert rows(killed) == rows(reference)  # same rows, no duplicates from the replayed steps
    wk, wr = weights(killed), weights(reference)
    assert all(torch.equal(wk[k], wr[k]) for k in wr)
    opt_k = torch.load(killed / "checkpoints/latest/optimizer.pt", weights_only=True)
    opt_r = torch.load(reference / "checkpoints/latest/optimizer.pt", weights_only=True)
    for pid, st in opt_r["adamw"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_k["adamw"]["state"][pid]["exp_avg_sq"])


def test_sigterm_checkpoints_and_marks_interrupted(tiny_corpus_dir, tmp_path, capsys):
    from lumi.cli import main

    cfg = tiny(tiny_corpus_dir, "train.budget=100000steps", "train.checkpoint_every_steps=5",
               "train.eval_every_steps=null", "train.final_eval=none")
    cfg_file = tmp_path / "cfg.yaml"
    cfg.save_yaml(cfg_file)
    run = tmp_path / "run"

    def send_sigterm_after_first_checkpoint():
        while (_latest_step(run) or 0) < 5:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal to this process; the trainer's handler takes it

    killer = threading.Thread(target=send_sigterm_after_first_checkpoint, daemon=True)
    killer.start()
    code = main(["train", "--config", str(cfg_file), "--out", str(run), "--no-progress"])
    killer.join(timeout=10)
    assert code == 130
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and "SIGTERM" in s["error"]
    assert ckpt.load_state(ckpt.find_checkpoint(run / "checkpoints"))["step"] == s["steps"]
    assert "interrupted" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_resume_with_a_different_config_is_refused(tiny_corpus_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny(tiny_corpus_dir, "train.budget=5steps"), run, progress=False)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(LumiError, match=r"optim\.lr: 0\.003 -> 0\.01"):
        train(tiny(tiny_corpus_dir, "train.budget=5steps", "optim.lr=0.01"), run, resume=True, progress=False)
    with pytest.raises(LumiError, match="already exists"):
        train(tiny(tiny_corpus_dir, "train.budget=5steps"), run, progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing overwritten


def test_vocab_mismatch_is_refused_before_anything_is_written(tiny_corpus_dir, tmp_path):
    with pytest.raises(LumiError, match=r"vocab_size=300 does not match .*\(257 tokens"):
        train(tiny(tiny_corpus_dir, "model.overrides.vocab_size=300"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_corpus_dir, tmp_path, monkeypatch):
    from lumi.models import build_model

    model = build_model("llama", "nano", vocab_size=50)
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, model, {"adamw": {}}, {"step": 1})

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(LumiError, match="No space left on device.*last good checkpoint .*latest is intact"):
        ckpt.save_checkpoint(root, model, {"adamw": {}}, {"step": 2})
    assert ckpt.load_state(ckpt.find_checkpoint(root))["step"] == 1
    assert sorted(p.name for p in root.iterdir()) == ["latest"]  # no half-written directory left behind
    fresh = build_model("llama", "nano", vocab_size=50)
    ckpt.load_model_weights(root / "latest", fresh)
    assert not torch.equal(fresh.embed.weight, model.embed.weight)


def test_muon_and_grad_accumulation(tiny_corpus_dir, tmp_path):
    muon = train(tiny(tiny_corpus_dir, "optim.name=muon", "train.budget=20steps"), tmp_path / "muon", progress=False)
    losses = [r["loss"] for r in train_rows(tmp_path / "muon")]
    assert muon["status"] == "completed" and losses[-1] < losses[0] - 1.0
    opt = torch.load(tmp_path / "muon/checkpoints/latest/optimizer.pt", weights_only=True)
    assert set(opt) == {"muon", "adamw"}

    # Accumulating 2 x 2 sequences is the same optimizer step as 1 x 4 (up to float summation order).
    one = tiny(tiny_corpus_dir, "train.budget=10steps")
    two = tiny(tiny_corpus_dir, "train.budget=10steps", "train.grad_accum=2")
    train(one, tmp_path / "one", progress=False)
    train(two, tmp_path / "two", progress=False)
    l1 = [r["loss"] for r in train_rows(tmp_path / "one")]
    l2 = [r["loss"] for r in train_rows(tmp_path / "two")]
    assert l1 == pytest.approx(l2, rel=1e-4)


def test_time_budget_ends_annealed(tiny_corpus_dir, tmp_path):
    s = train(tiny(tiny_corpus_dir, "train.budget=2s", "train.log_every=1", "train.eval_every_steps=null",
                   "train.final_eval=subset"), tmp_path / "run", progress=False)
    rows = train_rows(tmp_path / "run")
    assert s["status"] == "completed" and s["train_s"] >= 2.0
    assert max(r["lr_mult"] for r in rows) == pytest.approx(1.0)
    assert rows[-1]["lr_mult"] < 0.15  # warmdown keyed to elapsed time reached (almost) zero
    assert s["steps"] == rows[-1]["step"] and math.isfinite(s["final_val_bpb"])


def test_cli_bad_input_exits_2_with_one_line(tiny_corpus_dir, tmp_path, monkeypatch, capsys):
    from lumi.cli import main

    monkeypatch.chdir(tmp_path)
    corpus = f"--corpus=files:{tiny_corpus_dir}"
    cases = [
        (["train", "llama:nano", "--budget", "10M", corpus, "--tokenizer", "bytes"], "no unit"),
        (["train", "llama:nano", "--set", "optim.lrr=1", corpus], "did you mean 'lr'"),
        (["train", "llama:nano", "--set", "n_layer=1", corpus], "did you mean 'n_layers'"),
        (["train", "lama:nano", corpus], "did you mean 'llama'"),
        (["train", "llama:pico", corpus], "unknown preset 'pico'"),
        (["train", "--resume", str(tmp_path / "nope")], "no config.yaml"),
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lumi train: error:") and needle in lines[0], captured.err
        assert captured.out == ""
    assert not (tmp_path / "runs").exists()


def test_cli_trains_and_prints_summary(tiny_corpus_dir, tmp_path, monkeypatch, capsys):
    from lumi.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "llama:nano", f"--corpus=files:{tiny_corpus_dir}", "--tokenizer", "bytes", "--budget",
                 "6steps", "--set", "train.seq_len=32", "--set", "train.threads=1", "--set", "train.peak_flops=1e11",
                 "--set", "d_model=32", "--name", "hello", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["run_dir"] == "runs/hello"
    saved = yaml.safe_load((tmp_path / "runs/hello/config.yaml").read_text())
    assert saved["name"] == "hello" and saved["model"]["overrides"] == {"d_model": 32}
    assert main(["eval", "runs/hello", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(summary["final_val_bpb"], rel=1e-6)
    assert main(["train", "--resume", "runs/hello", "--budget", "7steps"]) == 2
    assert "train.budget: '6steps' -> '7steps'" in capsys.readouterr().err

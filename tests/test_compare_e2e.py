"""End-to-end `lumi compare` on a tiny corpus: real `lumi train` subprocesses, real Ctrl-C, real plugins.

- interrupt a half-finished comparison, re-run it: the finished run is reused, the interrupted one
  resumed from its checkpoint, the rest trained; a third run repeats nothing;
- a different spec in the same directory is refused (exit 2);
- an arm whose forward crashes mid-run fails alone, the others finish, the report marks it;
- an arm that sees the future is refused before training, or trained and flagged with --allow-leaky.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumi.cli import main

TRAIN_SETTINGS = ["--set", "train.seq_len=32", "--set", "train.batch_size=8", "--set", "train.eval_every_steps=10",
                  "--set", "train.eval_tokens=1024", "--set", "train.log_every=5",
                  "--set", "train.checkpoint_every_steps=5", "--set", "train.eval_every_s=null"]

PLUGIN = '''
"""Toy models for the compare tests: `crashy` raises after 5 training steps, `peek` sees the next token."""
from dataclasses import dataclass

import torch
from torch import nn

import lumi


@dataclass
class ToyConfig(lumi.ModelConfig):
    d_model: int = 32
    leak: bool = False


class Toy(lumi.LumiModel):
    config_class = ToyConfig
    check_overfit_steps = 150
    check_overfit_lr = 2e-2
    crash_after = None  # training forwards with the training batch of 8 (no check uses 8 rows) before raising

    def __init__(self, config):
        super().__init__(config)
        d, v = config.d_model, config.vocab_size
        self.embed = nn.Embedding(v, d)
        self.mix = nn.Linear(2 * d, d, bias=False)
        self.lm_head = nn.Linear(d, v, bias=False)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)
        self.calls = 0

    def forward(self, tokens):
        if self.crash_after is not None and self.training and tokens.shape[0] == 8:
            self.calls += 1
            if self.calls > self.crash_after:
                raise RuntimeError(f"simulated crash in forward at training step {self.calls}")
        x = self.embed(tokens)
        other = torch.roll(x, -1 if self.config.leak else 1, dims=1)  # leak: position t sees token t+1
        if not self.config.leak:
            other[:, 0] = 0
        return self.lm_head(torch.relu(self.mix(torch.cat([x, other], dim=-1))))

    def flops_per_token(self, seq_len):
        d, v = self.config.d_model, self.config.vocab_size
        return 3 * 2 * (2 * d * d + d * v)


@lumi.register("crashy", description="crashes after 5 training steps", presets={"tiny": {"d_model": 32}})
class Crashy(Toy):
    crash_after = 5


@lumi.register("peek", description="sees the next token", presets={"tiny": {"d_model": 32, "leak": True}})
class Peek(Toy):
    pass
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tiny_corpus")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while two cats sit on warm mats and sing".split()
    for i in range(12):
        lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(40)]
        (d / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return f"files:{d}/*.txt"


def common(corpus: str, out: Path) -> list[str]:
    return ["--corpus", corpus, "--tokenizer", "bytes", "--out", str(out), "--no-progress", *TRAIN_SETTINGS]


def status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_interrupt_resume_and_never_repeat(corpus, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "llama:nano", "relu2=llama:nano+mlp=relu2", "--seeds", "2", "--budget", "60steps",
            "--jobs", "1", *common(corpus, out)]
    base0 = out / "runs" / "llama-nano" / "seed-0"
    idea0 = out / "runs" / "relu2" / "seed-0"
    # 1) Start it, and Ctrl-C once the first run finished and the second has a checkpoint.
    proc = subprocess.Popen([sys.executable, "-m", "lumi", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if status(base0) == "completed" and (idea0 / "checkpoints" / "latest" / "model.safetensors").is_file():
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"comparison ended before it could be interrupted:\n{proc.communicate()[0]}"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output
    assert "re-run the same command to resume" in output
    assert status(base0) == "completed"
    assert status(idea0) in ("interrupted", "completed")  # completed only if it ended before the signal landed
    assert not (out / "runs" / "llama-nano" / "seed-1").exists()
    base0_mtime = (base0 / "summary.json").stat().st_mtime_ns
    # A partial report is written even for an interrupted comparison.
    partial = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in partial["arms"][0]["runs"]] == ["completed", "missing"]

    # 2) Re-run: reuse base seed 0, resume the interrupted run, train the two missing ones.
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "1 reused" in captured.err or "2 reused" in captured.err
    assert (base0 / "summary.json").stat().st_mtime_ns == base0_mtime
    if "interrupted" in (out / "logs" / "relu2" / "seed-0.log").read_text():
        assert "--resume" in (out / "logs" / "relu2" / "seed-0.log").read_text()
    results = json.loads((out / "results.json").read_text())
    for arm in results["arms"]:
        assert [r["status"] for r in arm["runs"]] == ["completed", "completed"]
        assert [r["steps"] for r in arm["runs"]] == [60, 60]
        assert arm["bpb"]["n"] == 2
    rows = [json.loads(x) for x in (idea0 / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r.get("kind") == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 60  # resumed, not restarted twice
    vs = results["arms"][1]["vs_baseline"]
    assert vs["n"] == 2 and vs["seeds"] == [0, 1] and vs["p_permutation"] is not None
    assert results["matched"] == "tokens" and results["arms"][1]["plan"]["steps"] == 60
    md = (out / "report.md").read_text()
    assert "| relu2 |" in md and "Δ vs baseline" in md
    assert "lumi compare" in captured.out and "report:" in captured.out

    # 3) Once more: everything reused, no run directory touched.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/summary.json")}
    assert len(mtimes) == 4
    assert main(args) == 0
    assert "4 reused" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/summary.json")} == mtimes

    # 4) A different spec in the same directory is refused before anything runs (--force: test_compare_spec.py).
    changed = [a if a != "60steps" else "80steps" for a in args]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "different spec" in err and "--force" in err and "budget" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/summary.json")} == mtimes


@pytest.mark.slow
def test_crashing_arm_and_leaky_arm(corpus, tmp_path, capsys):
    plugin = tmp_path / "toys.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "cmp"
    args = ["compare", "llama:nano", "crashy:tiny", "peek:tiny", "--model-file", str(plugin), "--seeds", "1",
            "--budget", "20steps", "--jobs", "2", *common(corpus, out)]
    # The leaky arm is refused before anything trains.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'peek:tiny' failed lumi check" in err and "causality" in err and "--allow-leaky" in err
    assert not (out / "runs").exists()

    # With --allow-leaky it trains, flagged suspicious; the crashing arm fails alone. --bench adds each
    # arm's inference speed to the report (a model without a cache is decoded without one, and says so).
    assert main([*args, "--allow-leaky", "--json", "--bench"]) == 0
    results = json.loads(capsys.readouterr().out)
    bench = results["bench"]["arms"]
    assert bench["llama:nano"]["has_cache"] and bench["llama:nano"]["cache_bytes_per_token"] == 2 * 2 * 2 * 32 * 4
    assert bench["peek:tiny"]["has_cache"] is False and bench["peek:tiny"]["decode_b1_tok_per_s"] > 0
    assert results["bench"]["shape"]["seq_len"] == 32
    arms = {a["label"]: a for a in results["arms"]}
    assert arms["llama:nano"]["runs"][0]["status"] == "completed"
    crash = arms["crashy:tiny"]["runs"][0]
    assert crash["status"] == "failed" and "simulated crash" in crash["error"]
    assert arms["crashy:tiny"]["vs_baseline"]["verdict"] == "not enough seeds"
    peek = arms["peek:tiny"]
    # Trained to the end, but its final weights fail the causality audit: LEAK, never paired, no verdict.
    assert peek["check_passed"] is False and peek["runs"][0]["status"] == "LEAK"
    assert peek["runs"][0]["usable"] is False and peek["runs"][0]["causality_audit"]["passed"] is False
    assert peek["vs_baseline"]["verdict"] == "no verdict (LEAK)" and not peek["vs_baseline"]["clears_threshold"]
    assert "suspicious" in [d["label"] for d in peek["runs"][0]["diagnoses"]]
    notes = "\n".join(results["notes"])
    assert "crashy:tiny seed 0: failed" in notes and "peek:tiny: failed lumi check" in notes
    assert "peek:tiny seed 0: LEAK, excluded from every verdict: audit of the trained weights: LEAK at" in notes
    md = (out / "report.md").read_text()
    assert "| crashy:tiny | 0 | failed |" in md and "suspicious" in md
    assert "peek:tiny vs llama:nano: no verdict (LEAK)" in md
    assert "## Inference speed" in md and "(no cache)" in md
    assert "<h2>Inference speed</h2>" in (out / "report.html").read_text()
    assert arms["peek:tiny"]["check"]["results"][1]["name"] == "causality_perturbation"

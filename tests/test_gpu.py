"""The GPU path: bf16 autocast, SDPA's flash kernel, torch.compile, DDP / FSDP2 over NCCL, KV-cache generation,
memory and MFU numbers. Every test skips cleanly without CUDA (the multi-process ones without 2 GPUs);
scripts/gpu-check runs this file and the throughput measurements on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lumi.run import read_metrics
from lumi.train.config import load_config
from lumi.train.loop import train

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0

needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
needs_two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs 2 CUDA devices (NCCL runs one process per GPU)")
needs_bf16 = pytest.mark.skipif(not (CUDA and torch.cuda.is_bf16_supported()), reason="needs a CUDA device with bf16")


def _config(corpus: Path, *extra: str):
    return load_config(None, [
        "model.preset=micro", f"data.corpus=files:{corpus}", "data.tokenizer=bytes", "train.device=cuda",
        "train.seq_len=64", "train.batch_size=16", "train.budget=12steps", "train.log_every=4",
        "train.eval_every_s=null", "train.eval_every_steps=null", "train.eval_tokens=512", "train.final_eval=subset",
        "train.checkpoint_every_s=null", *extra,
    ])


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


@needs_bf16
def test_bf16_autocast_training_step(tiny_corpus_dir, tmp_path):
    s = train(_config(tiny_corpus_dir, "train.precision=bf16"), tmp_path / "bf16", progress=False)
    ref = train(_config(tiny_corpus_dir, "train.precision=fp32"), tmp_path / "fp32", progress=False)
    assert s["status"] == "completed" and s["precision"] == "bf16 autocast" and s["device"].startswith("cuda")
    bf16, fp32 = _train_losses(tmp_path / "bf16"), _train_losses(tmp_path / "fp32")
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)  # same init and batch; bf16 rounding only
    assert bf16[-1] < bf16[0] and s["final_val_bpb"] == pytest.approx(ref["final_val_bpb"], rel=5e-2)


@needs_bf16
def test_sdpa_selects_the_flash_kernel_for_training_shapes():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lumi.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("llama", "micro", {}, vocab_size=257).cuda()
    x = torch.randint(0, 257, (4, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if flash cannot serve this call
            flash = model(x).float()
        with sdpa_kernel([SDPBackend.MATH]):
            math = model(x).float()
    assert torch.allclose(flash, math, atol=5e-2, rtol=5e-2)


@needs_cuda
def test_compiled_training_step_matches_eager(tiny_corpus_dir, tmp_path):
    s = train(_config(tiny_corpus_dir, "train.compile=true", "train.precision=fp32"), tmp_path / "c", progress=False)
    train(_config(tiny_corpus_dir, "train.precision=fp32"), tmp_path / "e", progress=False)
    assert s["status"] == "completed"
    assert _train_losses(tmp_path / "c") == pytest.approx(_train_losses(tmp_path / "e"), rel=1e-3)


@needs_cuda
def test_generate_with_kv_cache_matches_full_recompute():
    from lumi.generate import generate
    from lumi.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("llama", "micro", {}, vocab_size=257).cuda().eval()
    prompt = list(range(40, 72))
    cached = generate(model, prompt, 48, temperature=0.0, use_cache=True)
    full = generate(model, prompt, 48, temperature=0.0, use_cache=False)
    assert len(cached) == 48 and cached == full


@needs_cuda
def test_memory_and_mfu_numbers(tiny_corpus_dir, tmp_path):
    torch.cuda.reset_peak_memory_stats()
    s = train(_config(tiny_corpus_dir), tmp_path / "run", progress=False)
    assert torch.cuda.max_memory_allocated() > 0
    assert s["tok_per_s"] > 0 and s["peak_flops"] and 0.0 < s["mfu"] < 1.0
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert all(r["mfu"] is not None and 0.0 < r["mfu"] < 1.0 for r in rows)


def _torchrun_two(cfg_file: Path, out: Path, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lumi", "train", "--config", str(cfg_file), "--out", str(out), "--no-progress", "--json"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@needs_two_gpus
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gpus_over_nccl_match_one_gpu(parallel, tiny_corpus_dir, tmp_path):
    cfg = _config(tiny_corpus_dir, f"train.parallel={parallel}", "train.precision=fp32")  # Muon + AdamW
    cfg_file = tmp_path / "cfg.yaml"
    cfg.save_yaml(cfg_file)
    s2 = _torchrun_two(cfg_file, tmp_path / "two", tmp_path)
    train(_config(tiny_corpus_dir, "train.precision=fp32"), tmp_path / "one", progress=False)
    assert s2["world_size"] == 2 and s2["status"] == "completed" and s2["device"].startswith("cuda")
    # Newton–Schulz runs in bf16 on CUDA: a last-bit difference in a summed gradient may round differently.
    assert _train_losses(tmp_path / "two") == pytest.approx(_train_losses(tmp_path / "one"), rel=1e-2, abs=1e-3)

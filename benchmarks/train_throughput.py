"""Training throughput: `lumi train` vs HF transformers LlamaForCausalLM + AdamW, same dims, same process.

    python benchmarks/train_throughput.py            # llama:tiny, batch 8 x 256, fp32, bpe:4096 shakespeare
    python benchmarks/train_throughput.py --steps 40 --rounds 3 --threads 2

Lumi is measured through the real training loop (`lumi.train.loop.train`: data sampling, forward,
cross-entropy, backward, clipping, fused AdamW, schedule), reading tokens/s from its metrics rows
after the first interval (warm-up excluded). HF gets an equivalent hand-written loop: the same
batches, `LlamaForCausalLM(..., attn_implementation="sdpa")`, `torch.optim.AdamW` with its defaults,
the same clipping. Rounds alternate between the two so machine noise hits both alike; the best
round of each is reported, with the median. MFU = model FLOPs/s (Lumi's analytic count, the same
for both) / a fresh matmul-probe peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def lumi_round(args: argparse.Namespace, data_dir: Path, workdir: Path, index: int) -> float:
    from lumi.train.config import load_config
    from lumi.train.loop import train
    from lumi.run import read_metrics

    cfg = load_config(None, [
        f"model.preset={args.preset}", f"data.dir={data_dir}", f"train.seq_len={args.seq_len}",
        f"train.batch_size={args.batch_size}", f"train.budget={args.steps}steps", f"train.log_every={args.log_every}",
        "train.eval_every_s=null", "train.final_eval=none", "train.checkpoint_every_s=null",
        f"train.threads={args.threads}", "train.peak_flops=1e12", f"train.seed={index}",
        f"train.compile={str(args.compile).lower()}",
    ])
    run = workdir / f"lumi-{index}"
    train(cfg, run, progress=False)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    steady = rows[1:] or rows  # the first interval carries one-time costs (allocator, lazy imports)
    tokens = sum(args.log_every * args.batch_size * args.seq_len for _ in steady)
    seconds = sum(args.log_every * args.batch_size * args.seq_len / r["tok_per_s"] for r in steady)
    return tokens / seconds


def hf_round(args: argparse.Namespace, data, index: int) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lumi.models.registry import make_config
    from lumi.train.batches import step_batch

    c = make_config("llama", args.preset, vocab_size=data.vocab_size)
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn,
                         num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                         num_key_value_heads=c.kv_heads, max_position_embeddings=args.seq_len,
                         rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False,
                         attention_bias=False, mlp_bias=False, hidden_act="silu")
    torch.manual_seed(index)
    model = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = data.tokens("train")
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        x, y = step_batch(tokens, index, step, args.seq_len, args.batch_size)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        times.append(time.perf_counter() - t0)
    steady = times[args.log_every:] or times
    return len(steady) * args.batch_size * args.seq_len / sum(steady)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--tokenizer", default="bpe:4096")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per round (first interval excluded)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--compile", action="store_true", help="also pass train.compile=true to lumi (HF stays eager)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from lumi.data.prepare import prepare
    from lumi.models import build_model
    from lumi.train.env import device_name, measure_peak_flops

    data = prepare(args.corpus, args.tokenizer, progress=False)
    model = build_model("llama", args.preset, vocab_size=data.vocab_size)
    flops_per_token = model.flops_per_token(args.seq_len)
    params = model.param_counts().total
    del model
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
        print("transformers is not installed (pip install transformers): measuring Lumi alone", file=sys.stderr)

    lumi_tps, hf_tps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            lumi_tps.append(lumi_round(args, data.directory, Path(tmp), i))
            print(f"round {i}: lumi {lumi_tps[-1]:,.0f} tok/s", file=sys.stderr, flush=True)
            if hf_version:
                hf_tps.append(hf_round(args, data, i))
                print(f"round {i}: hf   {hf_tps[-1]:,.0f} tok/s", file=sys.stderr, flush=True)
    peak = measure_peak_flops(torch.device("cpu"), torch.float32, seconds=2.0)

    result = {
        "device": device_name(torch.device("cpu")), "threads": args.threads, "preset": args.preset,
        "params": params, "vocab_size": data.vocab_size, "batch": f"{args.batch_size} x {args.seq_len}",
        "precision": "fp32", "lumi_compile": args.compile, "flops_per_token": flops_per_token, "matmul_peak_flops": peak,
        "lumi_tok_per_s_best": max(lumi_tps), "lumi_tok_per_s_median": statistics.median(lumi_tps),
        "lumi_mfu": max(lumi_tps) * flops_per_token / peak, "transformers": hf_version,
    }
    if hf_tps:
        result.update({
            "hf_tok_per_s_best": max(hf_tps), "hf_tok_per_s_median": statistics.median(hf_tps),
            "hf_mfu": max(hf_tps) * flops_per_token / peak,
            "ratio_best": max(lumi_tps) / max(hf_tps),
            "ratio_median": statistics.median(lumi_tps) / statistics.median(hf_tps),
        })
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"llama:{args.preset} ({params / 1e6:.2f}M params, vocab {data.vocab_size}), batch {result['batch']}, fp32, "
          f"{args.threads} threads on {result['device']}")
    print(f"matmul peak (probe): {peak / 1e9:.1f} GFLOP/s; model FLOPs/token {flops_per_token / 1e6:.1f}M")
    print(f"lumi train{' (compiled)' if args.compile else ''}: {max(lumi_tps):8,.0f} tok/s best, {statistics.median(lumi_tps):8,.0f} median, "
          f"MFU {100 * result['lumi_mfu']:.1f}%")
    if hf_tps:
        print(f"HF llama   : {max(hf_tps):8,.0f} tok/s best, {statistics.median(hf_tps):8,.0f} median, "
              f"MFU {100 * result['hf_mfu']:.1f}%  (transformers {hf_version})")
        print(f"ratio lumi/HF: {result['ratio_best']:.2f}x (best), {result['ratio_median']:.2f}x (median); target >= 1.3x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

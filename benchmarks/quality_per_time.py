"""Quality per wall-clock second: HF LlamaForCausalLM + AdamW (best lr of a grid) vs `lumi train` defaults.

    python benchmarks/quality_per_time.py                          # bytes, 300 s per run, HF lr grid 5e-4,1e-3,2e-3
    python benchmarks/quality_per_time.py --tokenizer bpe:4096 --seconds 120 --hf-lrs 1e-3,2e-3
    python benchmarks/quality_per_time.py --lumi-set optim.name=adamw --lumi-set optim.lr=3e-3   # the old default
    python benchmarks/quality_per_time.py --steps 100 --hf-warmup 20 --hf-lrs 2e-3   # step-matched (busy machine)

Same model dims on both sides (default 4 layers x 256, FFN 1024, 4 heads, untied embeddings,
SwiGLU, RoPE, RMSNorm: `llama` with overrides n_layers / d_model / n_heads / ffn_hidden), same
prepared data (Lumi's `shakespeare` split with the chosen tokenizer), the same batches (Lumi's
`step_batch` sampler, data seed = --seed), the same training-time budget (evaluation excluded) and the
same evaluation (`lumi.metrics.evaluate.evaluate_bpb` on the FULL validation split, seq_len windows,
stride = seq_len).

HF side: `LlamaForCausalLM(attn_implementation="sdpa")` with its own init, `torch.optim.AdamW`
(fused, betas 0.9/0.95, weight decay 0.1), grad-norm clip 1.0, linear warmup over 100 steps then a
cosine to 10% of the peak keyed to the elapsed fraction of the time budget (so it ends annealed
like Lumi's schedule). ``--steps N`` replaces the time budget by the same step budget on both sides
(schedules keyed to the step fraction): on a machine shared with other jobs the wall clock hands
each run a different share of the CPU, and a step budget removes that noise from the quality
comparison (tok/s is still reported). Lumi side: `lumi.train.loop.train` with the library's default recipe
(plus any `--lumi-set`). Runs alternate (HF lr, Lumi, HF lr, ...) so machine noise hits both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


class _LogitsOnly(torch.nn.Module):
    """Adapts an HF causal LM to Lumi's contract forward(tokens) -> logits for evaluate_bpb."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens).logits


def hf_run(args: argparse.Namespace, data, lr: float) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lumi.metrics.evaluate import evaluate_bpb
    from lumi.train.batches import step_batch

    cfg = LlamaConfig(vocab_size=data.vocab_size, hidden_size=args.d_model, intermediate_size=args.ffn,
                      num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                      num_key_value_heads=args.n_heads, max_position_embeddings=args.seq_len,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
                      mlp_bias=False, hidden_act="silu")
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    tokens = data.tokens("train")
    elapsed, step = 0.0, 0
    while (step < args.steps) if args.steps else (elapsed < args.seconds):
        frac = step / args.steps if args.steps else elapsed / args.seconds
        warm = min(1.0, (step + 1) / args.hf_warmup)
        cosine = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac))  # cosine to 10% of the peak
        for g in opt.param_groups:
            g["lr"] = lr * warm * cosine
        t0 = time.perf_counter()
        x, y = step_batch(tokens, args.seed, step, args.seq_len, args.batch_size)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        elapsed += time.perf_counter() - t0
        step += 1
        if not math.isfinite(loss_value):
            return {"recipe": f"HF AdamW lr {lr:g}", "steps": step, "train_s": elapsed, "final_val_bpb": None,
                    "status": "diverged"}
    model.eval()
    ev = evaluate_bpb(_LogitsOnly(model), data.tokens("val"), data.target_bytes("val"), args.seq_len,
                      args.batch_size, "cpu")
    return {"recipe": f"HF AdamW lr {lr:g}", "steps": step, "train_s": elapsed,
            "tok_per_s": step * args.batch_size * args.seq_len / elapsed, "final_val_bpb": ev["bpb"],
            "status": "completed", "params": sum(p.numel() for p in model.parameters())}


def lumi_run(args: argparse.Namespace, data_dir: Path, workdir: Path, index: int) -> dict:
    from lumi.train.config import load_config
    from lumi.train.loop import train

    overrides = [
        "model.name=llama", "model.preset=null", f"model.overrides.n_layers={args.n_layers}",
        f"model.overrides.d_model={args.d_model}", f"model.overrides.n_heads={args.n_heads}",
        f"model.overrides.ffn_hidden={args.ffn}", f"data.dir={data_dir}", f"train.seq_len={args.seq_len}",
        f"train.batch_size={args.batch_size}",
        f"train.budget={args.steps}steps" if args.steps else f"train.budget={args.seconds}s", f"train.seed={args.seed}",
        "train.eval_every_s=null", "train.checkpoint_every_s=null", "train.final_eval=full",
        f"train.threads={args.threads}", *args.lumi_set,
    ]
    cfg = load_config(None, overrides)
    s = train(cfg, workdir / f"lumi-{index}", progress=False)
    recipe = f"lumi {cfg.optim.name} (lr {cfg.optim.lr:g}" + (
        f", muon_lr {cfg.optim.muon_lr:g}" if cfg.optim.name == "muon" else "") + f", {cfg.optim.schedule})"
    return {"recipe": recipe, "steps": s["steps"], "train_s": s["train_s"], "tok_per_s": s["tok_per_s"],
            "final_val_bpb": s["final_val_bpb"], "status": s["status"], "params": s["params"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seconds", type=float, default=300.0, help="training-time budget per run (default 300)")
    ap.add_argument("--steps", type=int, default=None,
                    help="a step budget for both sides instead of --seconds (robust on a shared machine)")
    ap.add_argument("--tokenizer", default="bytes", help="bytes | bpe:4096 (any Lumi tokenizer spec)")
    ap.add_argument("--corpus", default="shakespeare")
    ap.add_argument("--hf-lrs", default="5e-4,1e-3,2e-3", help="HF AdamW lr grid (its best is reported)")
    ap.add_argument("--hf-warmup", type=int, default=100, help="HF warmup steps (default 100)")
    ap.add_argument("--lumi-set", action="append", default=[], metavar="KEY=VAL",
                    help="extra --set override for the Lumi run (default: the library's recipe)")
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both sides (default 2)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lumi.data.prepare import prepare

    data = prepare(args.corpus, args.tokenizer, progress=False)
    lrs = [float(x) for x in args.hf_lrs.split(",") if x]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lumi-qpt-") as tmp:
        # HF, Lumi, HF, HF ...: Lumi sits between HF grid points so drift in machine speed shows.
        order: list[tuple[str, float | None]] = [("hf", lrs[0]), ("lumi", None)] + [("hf", lr) for lr in lrs[1:]]
        for i, (kind, lr) in enumerate(order):
            res = hf_run(args, data, lr) if kind == "hf" else lumi_run(args, data.directory, Path(tmp), i)
            results.append(res)
            print(f"  {res['recipe']}: {res['steps']} steps, BPB {res['final_val_bpb']}", file=sys.stderr, flush=True)
    hf_ok = [r for r in results if r["recipe"].startswith("HF") and r["final_val_bpb"] is not None]
    best_hf = min(hf_ok, key=lambda r: r["final_val_bpb"]) if hf_ok else None
    lumi = next(r for r in results if r["recipe"].startswith("lumi"))
    if args.json:
        print(json.dumps({"args": vars(args), "results": results}, indent=2))
        return 0
    print(f"\n{args.corpus} {args.tokenizer}, {args.n_layers} layers x {args.d_model}, FFN {args.ffn}, "
          f"{args.n_heads} heads, batch {args.batch_size} x {args.seq_len}, "
          f"{f'{args.steps} steps' if args.steps else f'{args.seconds:g} s of training'} each, "
          f"{args.threads} thread(s); full-validation BPB\n")
    print("| recipe | steps | tok/s | final val BPB |")
    print("| --- | --- | --- | --- |")
    for r in results:
        bpb = f"{r['final_val_bpb']:.4f}" if r["final_val_bpb"] is not None else r["status"]
        print(f"| {r['recipe']} | {r['steps']} | {r.get('tok_per_s', float('nan')):,.0f} | {bpb} |")
    if best_hf and lumi["final_val_bpb"] is not None:
        print(f"\nLumi default - best HF ({best_hf['recipe']}): {lumi['final_val_bpb'] - best_hf['final_val_bpb']:+.4f} BPB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

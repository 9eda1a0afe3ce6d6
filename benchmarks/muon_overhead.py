"""Muon's step-time overhead over AdamW: one full training step (forward, backward, clip, optimizer).

    python benchmarks/muon_overhead.py                        # llama:micro, batch 16 x 128, V 4096 and 257
    python benchmarks/muon_overhead.py --preset mini --vocab 4096 --rounds 9 --threads 2
    python benchmarks/muon_overhead.py --variants adamw,muon,muon-loop,muon-ns3

Variants: ``adamw`` (Lumi's fused AdamW on everything), ``muon`` (Lumi's Muon on hidden matrices,
batched Newton–Schulz over same-shape matrices, + AdamW on embeddings/head/vectors, built by
``build_optimizer`` exactly as ``lumi train`` builds it), ``muon-loop`` (the same with one matrix at a
time) and ``muon-nsK`` (batched, K Newton–Schulz steps). ``--legacy FILE`` adds ``muon-legacy``:
the ``Muon`` class of another optim.py (e.g. ``git show REV:src/lumi/train/optim.py > /tmp/old.py``),
to measure a before/after.

Each variant owns a model built from the same seed; the batches are random tokens (speed does not
depend on the data). Rounds alternate the variants (rotating who goes first) so machine noise hits
all alike; each round times ``--steps`` steps after ``--warmup`` untimed ones, and the reported
step time of a variant is the median over all its timed steps. Overhead = muon / adamw - 1.

Two clocks: wall time, and CPU time of this process (``time.process_time``). On a shared machine
the wall clock mostly measures the neighbours; with ``--threads 1`` all compute runs in this
thread, so CPU time is the contention-robust measure of the work itself (``--clock``, default cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def _legacy_muon(path: str) -> type:
    import importlib.util

    spec = importlib.util.spec_from_file_location("legacy_optim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.Muon


def build(variant: str, preset: str, vocab: int, seed: int, legacy: str | None = None):
    from lumi.models.registry import build_model
    from lumi.train import optim as optim_module
    from lumi.train.config import OptimSection
    from lumi.train.optim import Muon, build_optimizer

    torch.manual_seed(seed)
    model = build_model("llama", preset, {}, vocab_size=vocab)
    model.train()
    cfg = OptimSection()
    cfg.name = "adamw" if variant == "adamw" else "muon"
    if variant.startswith("muon-ns"):
        cfg.muon_ns_steps = int(variant[len("muon-ns"):])
    current = optim_module.Muon
    if variant == "muon-legacy":  # build_optimizer looks Muon up in its module: swap it for this build
        optim_module.Muon = _legacy_muon(legacy)  # type: ignore[misc]
    try:
        opt = build_optimizer(model, cfg, vocab, torch.device("cpu"))
    finally:
        optim_module.Muon = current  # type: ignore[misc]
    if variant == "muon-loop":
        for o in opt.optimizers.values():
            if isinstance(o, Muon):
                o.batched = False
    opt.set_lr_multiplier(0.1)  # small steps: the timing must not depend on the weights blowing up
    return model, opt


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> None:
    logits = model(x)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0, foreach=True)
    opt.step()
    opt.zero_grad()
    float(loss.detach())  # the training loop reads the loss every step too


def measure(args: argparse.Namespace, vocab: int) -> dict:
    variants = args.variants.split(",") + (["muon-legacy"] if args.legacy else [])
    built = {v: build(v, args.preset, vocab, args.seed, args.legacy) for v in variants}
    gen = torch.Generator().manual_seed(args.seed)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate who goes first
        for v in order:
            model, opt = built[v]
            for i in range(args.warmup + args.steps):
                x = torch.randint(0, vocab, (args.batch_size, args.seq_len + 1), generator=gen)
                t0 = clock()
                train_step(model, opt, x[:, :-1], x[:, 1:])
                if i >= args.warmup:
                    times[v].append(clock() - t0)
    step_ms = {v: 1000 * statistics.median(t) for v, t in times.items()}
    base = step_ms.get("adamw")
    return {"preset": args.preset, "vocab": vocab, "batch": f"{args.batch_size}x{args.seq_len}",
            "threads": torch.get_num_threads(), "clock": args.clock, "rounds": args.rounds, "steps_per_round": args.steps,
            "step_ms": step_ms,
            "overhead_pct": {v: 100 * (ms / base - 1) for v, ms in step_ms.items() if base and v != "adamw"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="micro", help="llama preset (default micro)")
    ap.add_argument("--vocab", default="4096,257", help="comma-separated vocabulary sizes (4096 = bpe:4096, 257 = bytes)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--variants", default="adamw,muon,muon-loop")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU time (robust on a shared machine; use with --threads 1); wall: perf_counter")
    ap.add_argument("--legacy", metavar="FILE", help="another optim.py whose Muon is timed as muon-legacy")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [measure(args, int(v)) for v in args.vocab.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"llama:{args.preset}, batch {args.batch_size} x {args.seq_len}, {args.threads} thread(s), "
          f"{args.clock} time, median of {args.rounds} alternating rounds x {args.steps} steps (warm-up excluded)\n")
    print("| vocab | variant | step ms | overhead vs adamw |")
    print("| --- | --- | --- | --- |")
    for res in results:
        for v, ms in res["step_ms"].items():
            over = res["overhead_pct"].get(v)
            print(f"| {res['vocab']} | {v} | {ms:.1f} | {'-' if over is None else f'{over:+.1f}%'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

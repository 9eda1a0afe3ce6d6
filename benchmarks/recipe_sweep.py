"""Sweep training recipes with `lumi train` and print a markdown table of final validation BPB.

    python benchmarks/recipe_sweep.py --grid optimizer                 # stage 1: optimizer x lr
    python benchmarks/recipe_sweep.py --grid schedule --base optim.name=muon --base optim.muon_lr=0.04
    python benchmarks/recipe_sweep.py --grid confirm --settings llama:mini@milton/bytes,llama:nano@pystdlib/bpe:4096
    python benchmarks/recipe_sweep.py --config "mine:optim.lr=1e-3,optim.warmup_frac=0.1" --steps 300

Every run is a `lumi train` subprocess (the real training loop, data, schedule and evaluation) with a
STEP budget, so results do not depend on how busy the machine is; `--threads` (default 1) and
`--jobs` (parallel runs, default 1) keep it polite on a shared box. A *setting* is
``MODEL:PRESET@CORPUS/TOKENIZER``; every config runs on every setting with the same seed(s), so the
data order is paired. Each run's summary is cached under ``--out`` (default
``runs/recipe-sweep``), so re-running the same command only trains what is missing.

Scoring: final BPB on the first ``--eval-tokens`` validation targets (``train.final_eval=subset``),
the same prefix for every config of a setting. That keeps a sweep cheap; the chosen recipe's full
validation numbers are in docs/training.md ("Default recipe").

Grids (``--grid``; each config is a list of ``--set`` overrides on top of ``--base``):
- ``optimizer``: AdamW at two lr; Muon at several (muon_lr, Adam lr) pairs;
- ``schedule``: warmup fraction, warmdown fraction, cosine vs wsd, min lr;
- ``extras``: Newton–Schulz steps, weight decay, betas, momentum, init scale;
- ``confirm``: the library default vs the old default (AdamW 3e-3) vs untuned Muon.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

OLD_DEFAULT = ["optim.name=adamw", "optim.lr=3e-3", "optim.weight_decay=0.1", "optim.warmup_frac=0.02",
               "optim.warmdown_frac=0.3", "optim.schedule=wsd", "optim.muon_ns_steps=5"]

GRIDS: dict[str, dict[str, list[str]]] = {
    "optimizer": {
        "adamw lr=3e-3": ["optim.name=adamw", "optim.lr=3e-3"],
        **{f"muon mlr={m} lr={lr}": ["optim.name=muon", f"optim.muon_lr={m}", f"optim.lr={lr}"]
           for m, lr in (("0.005", "3e-3"), ("0.01", "3e-3"), ("0.02", "3e-3"), ("0.04", "3e-3"), ("0.04", "1e-2"))},
        "adamw lr=1e-3": ["optim.name=adamw", "optim.lr=1e-3"],
    },
    "schedule": {
        "base": [],
        "warmup 0": ["optim.warmup_frac=0.0"],
        "warmup 0.1": ["optim.warmup_frac=0.1"],
        "warmdown 0.5": ["optim.warmdown_frac=0.5"],
        "warmdown 0.8": ["optim.warmdown_frac=0.8"],
        "warmdown 1.0": ["optim.warmdown_frac=1.0"],
        "cosine": ["optim.schedule=cosine"],
        "cosine min 0.1": ["optim.schedule=cosine", "optim.min_lr_frac=0.1"],
    },
    "extras": {
        "base": [],
        "ns 3": ["optim.muon_ns_steps=3"],
        "ns 4": ["optim.muon_ns_steps=4"],
        "wd 0": ["optim.weight_decay=0.0"],
        "muon wd 0.05": ["optim.muon_weight_decay=0.05"],
        "betas 0.9/0.99": ["optim.betas=[0.9,0.99]"],
        "momentum 0.9": ["optim.muon_momentum=0.9"],
        "init 0.01": ["model.overrides.init_std=0.01"],
        "init 0.04": ["model.overrides.init_std=0.04"],
    },
    "confirm": {
        "default": [],
        "old default (adamw 3e-3)": OLD_DEFAULT,
        "muon untuned (old defaults + muon)": OLD_DEFAULT[1:] + ["optim.name=muon", "optim.muon_lr=0.02"],
    },
}


def run_one(setting: str, overrides: list[str], args: argparse.Namespace, seed: int) -> dict:
    """Train one config on one setting (cached by a hash of everything that defines the run)."""
    model, data = setting.split("@")
    corpus, tokenizer = data.split("/", 1)
    sets = ["train.final_eval=subset", f"train.eval_tokens={args.eval_tokens}", "train.eval_every_s=null",
            "train.checkpoint_every_s=null", f"train.threads={args.threads}", f"train.seq_len={args.seq_len}",
            f"train.batch_size={args.batch_size}", *args.base, *overrides]
    key = hashlib.sha256(json.dumps([setting, sets, args.steps, seed]).encode()).hexdigest()[:16]
    run_dir = Path(args.out) / key
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        if s.get("status") in ("completed", "diverged"):
            return s
    cmd = [args.lumi, "train", model, "--corpus", corpus, "--tokenizer", tokenizer, "--budget", f"{args.steps}steps",
           "--seed", str(seed), "--out", str(run_dir), "--no-progress"]
    if run_dir.exists():  # a killed earlier attempt: start over rather than resume a different code state
        shutil.rmtree(run_dir)
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    return {"status": "failed", "error": (proc.stderr or proc.stdout)[-400:], "final_val_bpb": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--grid", choices=sorted(GRIDS), action="append", default=[],
                    help="a predefined grid (repeatable)")
    ap.add_argument("--config", action="append", default=[], metavar="NAME:KEY=VAL[,KEY=VAL...]",
                    help="an extra config (repeatable); 'NAME:' alone runs the base / library defaults")
    ap.add_argument("--base", action="append", default=[], metavar="KEY=VAL",
                    help="--set override applied to every config (repeatable), e.g. the previous stage's winner")
    ap.add_argument("--settings", default="llama:micro@shakespeare/bytes,llama:micro@shakespeare/bpe:4096",
                    help="comma-separated MODEL:PRESET@CORPUS/TOKENIZER (default: micro on shakespeare, bytes and bpe:4096)")
    ap.add_argument("--steps", type=int, default=300, help="step budget per run (default 300)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; the table shows the mean")
    ap.add_argument("--eval-tokens", type=int, default=131072, help="validation targets scored per run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    ap.add_argument("--out", default="runs/recipe-sweep", help="cache directory for the runs")
    ap.add_argument("--lumi", default=str(Path(sys.executable).with_name("lumi")), help="the lumi executable")
    ap.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = ap.parse_args(argv)

    configs: dict[str, list[str]] = {}
    for g in args.grid or ([] if args.config else ["confirm"]):
        configs.update(GRIDS[g])
    for item in args.config:
        name, colon, rest = item.partition(":")
        if not name or not colon or (rest and "=" not in rest):
            ap.error(f"--config {item!r} must look like NAME:KEY=VAL[,KEY=VAL...] (NAME: alone = the base)")
        configs[name] = [kv for kv in rest.split(",") if kv]
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if "@" not in s or "/" not in s.split("@", 1)[1]:
            ap.error(f"setting {s!r} must look like MODEL:PRESET@CORPUS/TOKENIZER")
    seeds = [int(s) for s in args.seeds.split(",")]
    Path(args.out).mkdir(parents=True, exist_ok=True)

    jobs = [(name, setting, seed) for name in configs for setting in settings for seed in seeds]
    results: dict[tuple[str, str, int], dict] = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, setting, configs[name], args, seed): (name, setting, seed)
                   for name, setting, seed in jobs}
        for fut in cf.as_completed(futures):
            name, setting, seed = futures[fut]
            res = results[(name, setting, seed)] = fut.result()
            bpb = res.get("final_val_bpb")
            print(f"  {name:<36} {setting:<36} seed {seed}: "
                  f"{f'{bpb:.4f}' if bpb is not None else res.get('status')}", file=sys.stderr, flush=True)

    def cell(name: str, setting: str) -> float | None:
        vals = [results[(name, setting, s)].get("final_val_bpb") for s in seeds]
        vals = [v for v in vals if v is not None and results[(name, setting, seeds[0])].get("status") == "completed"]
        return statistics.mean(vals) if len(vals) == len(seeds) else None

    best = {s: min((cell(n, s) for n in configs if cell(n, s) is not None), default=None) for s in settings}
    print(f"\n{args.steps} steps of {args.batch_size} x {args.seq_len}, seeds {args.seeds}, "
          f"val BPB on the first {args.eval_tokens} targets; base: {' '.join(args.base) or '(library defaults)'}\n")
    print("| config | " + " | ".join(settings) + " | mean gap to best |")
    print("| --- | " + " | ".join("---" for _ in settings) + " | --- |")
    for name in configs:
        cells, gaps = [], []
        for s in settings:
            v = cell(name, s)
            status = results[(name, s, seeds[0])].get("status")
            cells.append(f"{v:.4f}" if v is not None else status or "?")
            if v is not None and best[s] is not None:
                gaps.append(v - best[s])
        gap = f"{statistics.mean(gaps):+.4f}" if len(gaps) == len(settings) else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {gap} |")
    if args.json:
        print(json.dumps({f"{n}|{s}|{sd}": r for (n, s, sd), r in results.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

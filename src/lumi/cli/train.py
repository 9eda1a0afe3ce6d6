"""`lumi train`: train one model under a budget into a run directory."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from lumi.cli.common import (
    add_data_args,
    add_json_flag,
    add_list_arg,
    add_model_file_arg,
    add_verb,
    print_json,
)
from lumi.errors import LumiError

HELP = "train one model under a budget into runs/<name>/"

DESCRIPTION = """\
Train one model under a budget and write a run directory:
  config.yaml    the fully resolved configuration (re-running it reproduces the run)
  env.json       versions, device, threads, git revision
  metrics.jsonl  train rows (step, tokens, loss, lr, tok_per_s, flops, mfu ...) and eval rows (val_bpb ...)
  summary.json   params, FLOPs/token, tokens, wall time, final validation BPB + its protocol, status
  checkpoints/latest/  model.safetensors, model_config.json, optimizer.pt, state.json (atomic)

Configuration = defaults <- --config FILE.yaml <- MODEL[:PRESET] <- --set key=value <- flags.
Keys are dotted: optim.lr, optim.name (adamw|muon), optim.schedule (wsd|cosine|constant),
train.seq_len, train.batch_size (global sequences per step), train.grad_accum, train.seed,
data.corpus, data.tokenizer, model.overrides.n_layers ... A key without a dot is a model field
(--set n_layers=4 == --set model.overrides.n_layers=4).

Budgets: 2000steps | 5M tokens | 5Mtok | 3e14flops | 90s | 10m | 1h  (lower-case m = minutes).
A wall-clock budget counts training time only (not evals/checkpoints), and the lr schedule is keyed
to the elapsed fraction, so the run still ends annealed.

Seeds: --seed sets both the initialisation and the data order; train.init_seed / train.data_seed
override one of them. The same seed on the same machine reproduces a CPU run bit for bit, and two
models with the same seed, seq_len and batch size see exactly the same batches.

Causality: before training, the initialised model and a randomised copy (every gate open) are probed
for leaks at train.seq_len; a leak stops here, before anything is written (--allow-leaky trains it
anyway). After training, the final weights are audited the same way; the result is in summary.json
(causality_audit, and leak: why the run's BPB is not trustworthy) and a leaking run exits with 1.

Ctrl-C (or SIGTERM) finishes the step, writes a checkpoint and marks the run interrupted (exit 130;
also when it lands during the last checkpoint: --resume then runs only the final evaluation); a run
killed outright continues from its last checkpoint with --resume and ends exactly as if never stopped.
Resuming a completed run prints its summary and does nothing.

One process writes a run directory at a time (an OS lock on RUN_DIR/.lock; a second `lumi train` on it
stops with the holder's PID). --resume never imports code named inside the run directory: a run of a
plugin architecture needs its files again, `lumi train --resume RUN --model-file my_arch.py` (checked
against the content hashes the checkpoint recorded), and a config.yaml edited since the last checkpoint
is refused.
Multi-process: torchrun --nproc_per_node N -m lumi train ... (DDP; see docs/training.md).
"""

EPILOG = """\
examples:
  lumi train llama:micro --budget 2m
  lumi train llama:nano --set optim.name=muon --set train.batch_size=32 --budget 5M tokens --seed 1
  lumi train --config my_run.yaml --set optim.lr=1e-3 --out runs/lr-1e-3
  lumi train my_arch:small --model-file my_arch.py --data ~/.cache/lumi/prepared/shakespeare__bpe-4096
  lumi train --resume runs/llama-micro-20250101-120000
  lumi train --resume runs/my_arch-small-20250101-120000 --model-file my_arch.py
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "train", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "model",
        nargs="?",
        help="registered model, optionally with a preset: llama or llama:micro "
        "(default: from --config, else llama:micro)",
    )
    p.add_argument("--preset", help="model preset (same as MODEL:PRESET)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with model/data/optim/train sections")
    add_list_arg(
        p,
        "--set",
        "KEY=VALUE",
        "override one config key, e.g. optim.lr=1e-3 or train.seq_len=256 (repeatable)",
        "overrides",
    )
    p.add_argument("--budget", help="how long to train: 2000steps, 5M tokens, 3e14flops, 90s, 10m, 1h")
    p.add_argument("--seed", type=int, help="seed for initialisation and data order")
    add_data_args(p, " (prepared on the fly)")
    add_model_file_arg(
        p,
        "a Python file that registers your own architecture (repeatable); with --resume, pass the run's "
        "plugin files again (a run directory's own list is never imported)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="RUN_DIR", help="run directory to create (default runs/<name>)")
    where.add_argument(
        "--name", help="run name (default <model>-<preset>-<timestamp>); the run goes to runs/<name>"
    )
    where.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted or killed run from its checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument(
        "--allow-leaky",
        action="store_true",
        help="train even when the pre-training causality probe finds a leak (the run is marked LEAK)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The run's TrainConfig from the command line (and, with --resume, the run's saved config)."""
    from lumi.train.config import TrainConfig, apply_override, load_config

    if args.resume:
        from lumi.run import Run

        if args.config:
            raise LumiError("--resume continues a run with its own config.yaml; do not pass --config with it")
        run = Run(args.resume)
        if not run.config_path.is_file():
            raise LumiError(
                f"cannot resume {str(run.path)!r}: it has no config.yaml (not a lumi train run directory)"
            )
        cfg = run.config
    else:
        cfg = load_config(args.config) if args.config else TrainConfig()
    if args.model:
        name, _, preset = args.model.partition(":")
        if name != cfg.model.name:  # a different architecture: its presets and fields differ
            cfg.model.overrides, cfg.model.preset = {}, None
        cfg.model.name = name
        if preset:
            cfg.model.preset = preset
    if args.preset:
        cfg.model.preset = args.preset
    for item in args.overrides:
        key = item.split("=", 1)[0].strip()
        apply_override(cfg, item if "." in key or key == "name" else f"model.overrides.{item.strip()}")
    if args.budget is not None:  # --budget "" is an error (parse_budget), not the default
        cfg.train.budget = args.budget
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.corpus:
        cfg.data.corpus = args.corpus
    if args.tokenizer:
        cfg.data.tokenizer = args.tokenizer
    if args.data:
        from lumi.data.prepare import load_prepared

        cfg.data.dir = str(Path(args.data).expanduser().resolve())
        prepared = load_prepared(Path(cfg.data.dir))  # config.yaml records what the data really is
        cfg.data.corpus, cfg.data.tokenizer = prepared.manifest["corpus"]["name"], prepared.tokenizer.spec
    if not args.resume:  # a resumed run keeps its recorded list; the files passed are checked against it
        for f in args.model_file:
            path = str(Path(f).expanduser().resolve())
            if path not in cfg.model.files:
                cfg.model.files.append(path)
    if args.name:
        cfg.name = args.name
    if getattr(args, "allow_leaky", False):
        cfg.train.allow_leaky = True
    cfg.validate("command line")
    return cfg


def check_run_name(name: str) -> None:
    """A name becomes runs/<name>: one plain directory name, so it cannot write outside runs/."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise LumiError(
            f"run name {name!r} must be a plain directory name (no '/', '\\', or '..'); the run goes "
            f"to runs/<name>. To write elsewhere, use --out DIR"
        )


def default_run_name(cfg) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.model.name}-{cfg.model.preset or 'custom'}-{stamp}"


def run(args: argparse.Namespace) -> int:
    from lumi.train.distributed import setup_distributed, teardown_distributed

    cfg = build_config(args)
    info = setup_distributed(cfg.train.device)
    try:
        summary = _run(args, cfg, info)
    except BaseException:
        teardown_distributed(info, clean=False)
        raise
    teardown_distributed(info)
    if info.is_main:
        if args.json:
            print_json(summary)
        else:
            print_summary(summary)
    if summary.get("leak"):
        return 1
    return {"completed": 0, "interrupted": 130, "diverged": 1}.get(summary["status"], 1)


def _run(args: argparse.Namespace, cfg, info) -> dict[str, Any]:
    from lumi.train.distributed import broadcast_object
    from lumi.train.loop import train

    if args.resume:
        run_dir = Path(args.resume)
    elif args.out:
        run_dir = Path(args.out)
    else:
        if not cfg.name:
            cfg.name = broadcast_object(
                info, default_run_name(cfg)
            )  # every rank must pick the same directory
        check_run_name(cfg.name)
        run_dir = Path("runs") / cfg.name
    files = list(args.model_file) if args.resume else []  # a fresh run imports cfg.model.files (incl. these)

    def announce(done: dict[str, Any] | None) -> None:  # once the directory is checked, before any work
        if done is not None:
            print(
                f"run {run_dir} is already complete ({done.get('steps')} steps, final val BPB "
                f"{done.get('final_val_bpb')}); nothing to do",
                file=sys.stderr,
                flush=True,
            )
            return
        out = sys.stderr if args.json else sys.stdout
        verb = "resuming" if args.resume else "training"
        print(
            f"{verb} {cfg.model.name}:{cfg.model.preset or 'custom'} into {run_dir} "
            f"(budget {cfg.train.budget}, seed {cfg.train.seed}) with config:",
            file=out,
        )
        print("  " + cfg.to_yaml().rstrip().replace("\n", "\n  "), file=out, flush=True)

    return train(
        cfg,
        run_dir,
        resume=bool(args.resume),
        progress=not args.no_progress,
        model_files=files,
        info=info,
        announce=announce,
    )


def print_summary(s: dict[str, Any]) -> None:
    def num(x: float | None, unit: str = "") -> str:
        from lumi.progress import format_count

        return "n/a" if x is None else format_count(x) + unit

    print(f"\nrun {s['run_dir']}: {s['status']}" + (f" — {s['error']}" if s.get("error") else ""))
    print(
        f"  model   {s['model']}:{s['preset'] or 'custom'}  params {num(s['params'])} "
        f"(non-embedding {num(s['non_embedding_params'])})  FLOPs/token {num(s['flops_per_token'])}  "
        f"vocab {s['vocab_size']} ({s['tokenizer']})"
    )
    mfu = f"  MFU {100 * s['mfu']:.1f}%" if s.get("mfu") else ""
    tps = f"{s['tok_per_s']:,.0f} tok/s" if s.get("tok_per_s") else "n/a tok/s"
    print(
        f"  trained {s['steps']} steps, {num(s['tokens'])} tokens, {num(s['flops'])} FLOPs in "
        f"{s['train_s']:.1f}s (wall {s['wall_s']:.1f}s)  {tps}{mfu}  on {s['device']} ({s['precision']})"
    )
    if s.get("final_val_bpb") is not None:
        p = s["final_val_protocol"]
        print(
            f"  final val BPB {s['final_val_bpb']:.4f}  (loss {s['final_val_loss']:.4f} nats/token; {p['subset']}: "
            f"{p['targets']:,} targets, {p['bytes']:,} bytes, windows of {p['seq_len']}, stride {p['stride']}, "
            f"documents {p['documents']})"
        )
    per_corpus = {
        k.split("/", 1)[1]: v for k, v in s.items() if k.startswith("final_val_bpb/") and v is not None
    }
    if per_corpus:  # a corpus mixture: the total above is their byte-weighted combination
        print("  per corpus: " + ", ".join(f"{name} {bpb:.4f}" for name, bpb in per_corpus.items()))
    if s.get("unigram_val_bpb") is not None:
        print(f"  unigram baseline val BPB {s['unigram_val_bpb']:.4f}")
    audit = s.get("causality_audit")
    if s.get("leak"):
        print(f"  LEAK — this BPB is not trustworthy: {s['leak']}")
    elif audit:
        print(
            f"  causality audit passed ({audit['probes']} probes of the trained weights at T="
            f"{', '.join(map(str, audit['lengths']))}, {audit['seconds']:.1f}s)"
        )

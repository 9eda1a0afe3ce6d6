"""`lumi eval RUN`: validation bits per byte of a run's latest checkpoint, with the protocol."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lumi.cli.common import RUN_MODEL_FILE_HELP, add_json_flag, add_model_file_arg, add_verb, print_json
from lumi.errors import LumiError

HELP = "validation BPB of a trained run (full validation split)"

DESCRIPTION = """\
Score a run's latest checkpoint on the validation split of the data it was trained on.

Protocol (printed with the number): the split's documents are concatenated into one token stream
and cut into non-overlapping windows of --seq-len tokens (default: the run's train.seq_len);
every position except the first is scored exactly once, context crosses document boundaries,
separators are targets covering 0 bytes, and BPB = total NLL / (ln 2 x UTF-8 bytes of the split).
Also prints the unigram baseline (train-split token frequencies) for scale.

A run of a plugin architecture needs its file on this command line (--model-file my_arch.py):
Lumi never imports code because a run directory names it.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(
        subparsers, "eval", HELP, DESCRIPTION, "example:\n  lumi eval runs/llama-micro-20250101-120000\n"
    )
    p.add_argument("run", help="a run directory written by `lumi train`")
    p.add_argument("--seq-len", type=int, help="evaluation window length (default: the run's train.seq_len)")
    p.add_argument("--max-targets", type=int, help="score only this many targets from the start of the split")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_model_file_arg(p, RUN_MODEL_FILE_HELP)
    add_json_flag(p)
    p.set_defaults(func=run)


def evaluate_run(
    run_dir: Path,
    seq_len: int | None = None,
    max_targets: int | None = None,
    split: str = "val",
    batch_size: int = 16,
    device: str = "auto",
    model_files: list[str] | None = None,
) -> dict[str, Any]:
    from lumi.metrics.evaluate import evaluate_bpb, unigram_bpb
    from lumi.run import Run
    from lumi.train.distributed import DistInfo
    from lumi.train.runtime import resolve_autocast, resolve_device

    run = Run.open(run_dir)
    cfg = run.config
    found = run.checkpoint()
    dev = resolve_device(device, DistInfo())
    model = run.load_model(dev, model_files or [], found)
    data = run.data()
    vocab = int(getattr(model.config, "vocab_size", -1))
    if vocab != data.vocab_size:
        raise LumiError(
            f"checkpoint {found} has vocab_size {vocab} but the run's data ({data.directory}) has {data.vocab_size}"
        )
    state = run.checkpoint_state(found)
    result = evaluate_bpb(
        model,
        data.tokens(split),
        data.target_bytes(split),
        seq_len or cfg.train.seq_len,
        batch_size,
        dev,
        max_targets=max_targets,
        autocast_dtype=resolve_autocast(cfg.train.precision, dev),
        split=split,
    )
    return {
        "run": str(run_dir),
        "checkpoint": str(found),
        "step": state.get("step"),
        "tokens": state.get("tokens"),
        "val_bpb": result["bpb"],
        "val_loss": result["loss"],
        "protocol": result["protocol"],
        "unigram_bpb": unigram_bpb(data, split)["bpb"],
        "tokenizer": data.tokenizer.spec,
    }


def run(args: argparse.Namespace) -> int:
    if args.seq_len is not None and args.seq_len < 1:
        raise LumiError(f"--seq-len must be >= 1, got {args.seq_len}")
    if args.max_targets is not None and args.max_targets < 1:
        raise LumiError(
            f"--max-targets must be >= 1 (omit it to score the whole split), got {args.max_targets}"
        )
    if args.batch_size < 1:
        raise LumiError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = evaluate_run(
        Path(args.run),
        args.seq_len,
        args.max_targets,
        args.split,
        args.batch_size,
        args.device,
        model_files=args.model_file,
    )
    if args.json:
        print_json(out)
        return 0
    p = out["protocol"]
    print(
        f"{out['run']} (step {out['step']}, {out['tokens']:,} tokens trained): {p['split']} BPB {out['val_bpb']:.4f}"
        f"  (loss {out['val_loss']:.4f} nats/token)"
    )
    print(
        f"  protocol: {p['subset']}, {p['targets']:,} targets covering {p['bytes']:,} bytes, windows of "
        f"{p['seq_len']} with stride {p['stride']}, documents {p['documents']}; tokenizer {out['tokenizer']}"
    )
    print(f"  unigram baseline: {out['unigram_bpb']:.4f} BPB")
    return 0

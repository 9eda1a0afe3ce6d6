"""`lumi eval RUN [RUN ...]`: validation and cross-domain BPB, context curves and zero-shot tasks of runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumi.cli.common import RUN_MODEL_FILE_HELP, add_json_flag, add_model_file_arg, add_verb, print_json
from lumi.errors import LumiError

HELP = "evaluate trained runs: validation and other-corpus BPB, context curves, zero-shot tasks"

DESCRIPTION = """\
Score the latest checkpoint of one or more runs. Always: bits per byte on the validation split of the
data each run trained on, next to a unigram baseline. Optionally:
  --corpus milton,pystdlib,files:...   BPB on other text, tokenized with the run's own tokenizer
                                       (a corpus the run trained on is scored on its val split only)
  --stride S                           sliding windows: every target scored once with >= T - S tokens
                                       of context (default S = T: non-overlapping windows)
  --context-curve                      BPB by tokens of context (1-8, 9-32, 33-128, ...) at windows of
                                       T, 2T, 4T ... up to --max-window or the model's maximum; a PNG
                                       with one line per run and window (runs side by side)
  --tasks piqa,hellaswag,...           zero-shot tasks through lm-evaluation-harness (--tasks-dir DIR
                                       reads local JSONL files in each dataset's own schema)

Protocol (printed with every number): documents concatenated into one stream (each starts with the
separator), windows of --seq-len tokens (default: the run's train.seq_len), every position except the
first scored exactly once, context crosses document boundaries, separators are 0-byte targets, and
BPB = total NLL / (ln 2 x UTF-8 bytes). Results go to RUN/eval/results.json (and context_curve.png).

A run of a plugin architecture needs its file on this command line (--model-file my_arch.py):
Lumi never imports code because a run directory names it.
"""

EPILOG = """\
examples:
  lumi eval runs/llama-micro-20250101-120000
  lumi eval runs/llama-micro-... --corpus milton,pystdlib --stride 64
  lumi eval runs/llama-micro-... runs/multiscale-micro-... --context-curve --plot curves.png
  lumi eval runs/llama-micro-... --tasks piqa,arc_easy --tasks-dir tests/data/tasks
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "eval", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run directories written by `lumi train`, or `lumi adapt` adapters",
    )
    p.add_argument(
        "--corpus", metavar="SPEC[,SPEC...]", help="also score these corpora (see `lumi data corpora`)"
    )
    p.add_argument(
        "--stride", type=int, metavar="S", help="sliding-window stride (default: the window length)"
    )
    p.add_argument("--context-curve", action="store_true", help="BPB by context length and window length")
    p.add_argument(
        "--max-window", type=int, metavar="L", help="longest window of the context curve (default 4T)"
    )
    p.add_argument(
        "--plot", metavar="FILE.png", help="context-curve plot (default RUN/eval/context_curve.png)"
    )
    p.add_argument(
        "--tasks", metavar="TASK[,TASK...]", help="zero-shot tasks: hellaswag, piqa, arc_easy, ..."
    )
    p.add_argument("--tasks-dir", metavar="DIR", help="local task files (TASK.jsonl) instead of the HF hub")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N items of each task")
    p.add_argument("--seq-len", type=int, help="evaluation window length (default: the run's train.seq_len)")
    p.add_argument("--max-targets", type=int, help="score only this many targets from the start of each text")
    p.add_argument("--split", default="val", help="split of the run's data to score (default val)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_model_file_arg(p, RUN_MODEL_FILE_HELP)
    add_json_flag(p)
    p.set_defaults(func=run)


@dataclass
class EvalOptions:
    """What to measure (the command-line flags); the defaults give the run's plain validation BPB."""

    seq_len: int | None = None  # None: the run's train.seq_len
    max_targets: int | None = None
    split: str = "val"
    batch_size: int = 16
    device: str = "auto"
    corpora: list[str] = field(default_factory=list)
    stride: int | None = None
    context: bool = False
    max_window: int | None = None
    tasks: list[str] = field(default_factory=list)
    tasks_dir: Path | None = None
    limit: int | None = None


def evaluate_run(
    run_dir: Path,
    options: EvalOptions | None = None,
    model_files: list[str] | None = None,
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything `lumi eval` measures for one run (also written to RUN/eval/results.json)."""
    from lumi.adapt.directory import AdapterDirectory
    from lumi.evals.context import context_curve, curve_lengths
    from lumi.evals.corpus import corpus_stream
    from lumi.io import write_json
    from lumi.metrics.evaluate import evaluate_bpb, unigram_bpb
    from lumi.run import Run
    from lumi.train.distributed import DistInfo
    from lumi.train.runtime import resolve_autocast, resolve_device

    o = options or EvalOptions()
    seq_len, max_targets, split, batch_size, stride = (
        o.seq_len,
        o.max_targets,
        o.split,
        o.batch_size,
        o.stride,
    )
    adapter = AdapterDirectory.find(run_dir)  # a `lumi adapt` adapter: its core run, adapted
    run = adapter.core() if adapter else Run.open(run_dir)
    cfg = run.config
    found = run.checkpoint()
    dev = resolve_device(o.device, DistInfo())
    model = adapter.load_model(dev, model_files) if adapter else run.load_model(dev, model_files or [], found)
    window = seq_len or cfg.train.seq_len
    limit_len = model.max_context()
    if limit_len is not None and window > limit_len:
        raise LumiError(f"--seq-len {window} is longer than the model's maximum context {limit_len}")
    if stride is not None and not 1 <= stride <= window:
        raise LumiError(f"--stride must be between 1 and the window length {window}, got {stride}")
    data = run.data()
    vocab = int(getattr(model.config, "vocab_size", -1))
    if vocab != data.vocab_size:
        raise LumiError(
            f"checkpoint {found} has vocab_size {vocab} but the run's data ({data.directory}) has {data.vocab_size}"
        )
    autocast = resolve_autocast(cfg.train.precision, dev)

    def score(tokens: Any, target_bytes: Any, name: str) -> dict[str, Any]:
        return evaluate_bpb(
            model,
            tokens,
            target_bytes,
            window,
            batch_size,
            dev,
            max_targets=max_targets,
            autocast_dtype=autocast,
            split=name,
            stride=stride,
        )

    state = run.checkpoint_state(found)
    result = score(data.tokens(split), data.target_bytes(split), split)
    out: dict[str, Any] = {
        "run": str(run.path),
        "adapter": adapter.describe() if adapter else None,
        "model": cfg.model.name,
        "checkpoint": str(found),
        "step": state.get("step"),
        "tokens": state.get("tokens"),
        "val_bpb": result["bpb"],
        "val_loss": result["loss"],
        "protocol": result["protocol"],
        "by_position": result["by_position"],
        "unigram_bpb": unigram_bpb(data, split)["bpb"],
        "tokenizer": data.tokenizer.spec,
        "corpora": [],
        "request": request,  # what a comparison asked for (lumi.compare.evals reuses matching results)
    }
    for spec in o.corpora:
        stream = (
            adapter.corpus_stream(spec, data.tokenizer)
            if adapter
            else corpus_stream(spec, data.tokenizer, run)
        )
        r = score(stream.tokens, stream.target_bytes, spec)
        out["corpora"].append(
            {"corpus": spec, "scope": stream.scope, "documents": stream.documents, "bpb": r["bpb"], "loss": r["loss"],
             "protocol": r["protocol"], "by_position": r["by_position"]}
        )  # fmt: skip
    if o.context:
        lengths = curve_lengths(window, limit_len, o.max_window)
        out["context_curve"] = context_curve(
            model, data.tokens(split), data.target_bytes(split), lengths, max_targets, batch_size, dev
        )
    if o.tasks:
        from lumi.evals.tasks import run_tasks

        out["tasks"] = run_tasks(model, data.tokenizer, o.tasks, o.tasks_dir, o.limit, batch_size, str(dev))
    eval_dir = adapter.eval_dir if adapter else run.eval_dir
    eval_dir.mkdir(exist_ok=True)
    write_json(eval_dir / "results.json", out)
    return out


def run(args: argparse.Namespace) -> int:
    for flag, value in [("--seq-len", args.seq_len), ("--max-targets", args.max_targets), ("--batch-size",
                        args.batch_size), ("--stride", args.stride), ("--max-window", args.max_window),
                        ("--limit", args.limit)]:  # fmt: skip
        if value is not None and value < 1:
            raise LumiError(f"{flag} must be >= 1, got {value}")
    corpora = [c.strip() for c in args.corpus.split(",") if c.strip()] if args.corpus else []
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else []
    if args.tasks_dir and not tasks:
        raise LumiError("--tasks-dir needs --tasks (which tasks to run from it)")
    options = EvalOptions(
        args.seq_len, args.max_targets, args.split, args.batch_size, args.device, corpora, args.stride,
        args.context_curve, args.max_window, tasks, Path(args.tasks_dir) if args.tasks_dir else None, args.limit,
    )  # fmt: skip
    results = [evaluate_run(Path(r), options, args.model_file) for r in args.runs]
    plots = _plots(results, args) if args.context_curve else []
    if args.json:
        print_json(results[0] if len(results) == 1 else {"runs": results, "plots": plots})
        return 0
    for out in results:
        _print_run(out)
    for path in plots:
        print(f"context curve: {path}")
    return 0


def _plots(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    from lumi.evals.context import plot_context_curves
    from lumi.run import Run

    curves = {Path(r["run"]).name: r["context_curve"] for r in results}
    if args.plot:
        return [str(plot_context_curves(curves, Path(args.plot)))]
    return [
        str(
            plot_context_curves(
                {Path(r["run"]).name: r["context_curve"]},
                Run((r.get("adapter") or {}).get("path") or r["run"]).eval_dir / "context_curve.png",
            )
        )
        for r in results
    ]


def _print_run(out: dict[str, Any]) -> None:
    p = out["protocol"]
    print(
        f"{out['run']} ({out['model']}, step {out['step']}, {out['tokens']:,} tokens trained; tokenizer "
        f"{out['tokenizer']})"
    )
    if out.get("adapter"):
        a = out["adapter"]
        print(f"  adapted by {a['path']} ({a['method']} on {a['domain']}, seed {a['seed']})")
    print(f"  {'text':<22} {'BPB':>7}  {'targets':>10}  scope")
    print(f"  {p['split'] + ' split':<22} {out['val_bpb']:>7.4f}  {p['targets']:>10,}  the run's own data")
    for c in out["corpora"]:
        print(f"  {c['corpus']:<22} {c['bpb']:>7.4f}  {c['protocol']['targets']:>10,}  {c['scope']}")
    print(f"  {'unigram baseline':<22} {out['unigram_bpb']:>7.4f}  {'':>10}  train-split token frequencies")
    print(
        f"  protocol: {p['subset']}, windows of {p['seq_len']} with stride {p['stride']}, documents "
        f"{p['documents']}, BPB over UTF-8 bytes"
    )
    if out.get("context_curve"):
        print("  context curve (BPB by tokens of context inside the window):")
        for entry in out["context_curve"]:
            cells = "  ".join(
                f"{b['context']}: {b['bpb']:.3f}" for b in entry["by_position"] if b["bpb"] is not None
            )
            print(f"    window {entry['window']:>5}: {entry['bpb']:.4f}   {cells}")
    tasks = out.get("tasks")
    if tasks:
        print(f"  zero-shot tasks ({tasks.get('items_per_s', 0):.1f} items/s):")
        for task, metrics in tasks["results"].items():
            shown = []
            for key in tasks["metrics"].get(task, ("acc",)):
                value = metrics.get(f"{key},none")
                if value is not None:
                    err = metrics.get(f"{key}_stderr,none")
                    shown.append(
                        f"{key} {_num(value)}" + (f" ± {_num(err)}" if isinstance(err, float) else "")
                    )
            chance = tasks["chance"].get(task)
            print(
                f"    {task:<16} {'  '.join(shown)}  (chance {chance:.2f}, n={tasks['n_samples'].get(task)})"
            )


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.4g}"

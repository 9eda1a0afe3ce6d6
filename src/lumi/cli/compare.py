"""`lumi compare`: train several arms x seeds under a matched budget and write an honest report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lumi.cli.common import (
    add_data_args,
    add_json_flag,
    add_list_arg,
    add_model_file_arg,
    add_verb,
    apply_section_settings,
    print_json,
)
from lumi.errors import LumiError

HELP = "matched multi-seed comparison of architectures, with paired statistics and a report (the main job)"

DESCRIPTION = """\
Does an idea beat the baseline at the same budget? Train every ARM with the same seeds (and, for
each seed, the same data order), under a matched budget, then report final validation bits per
byte with paired statistics. Without arguments it runs the built-in default comparison on the
Shakespeare corpus (about 5 minutes on 2 CPU cores) into compare/default/.

ARM:  MODEL[:PRESET][+FIELD=VALUE...]    e.g. llama:micro   llama:micro+mlp=relu2+qk_norm=true
      LABEL=MODEL[:PRESET]...            e.g. relu2=llama:micro+mlp=relu2
The FIRST arm is the baseline (or --baseline LABEL). Plugin architectures: --model-file my_arch.py.

Matching (--match, default tokens):
  tokens  every arm trains on the same number of tokens (same steps: arms share seq_len and batch)
  flops   every arm gets the same training FLOPs; its tokens = budget FLOPs / its FLOPs per token
          (a token/step budget means the baseline's tokens, converted through its FLOPs/token)
  time    every arm trains for the same wall-clock seconds
A time budget with --match tokens|flops is converted once, from the baseline's measured throughput.

Statistics, per arm against the baseline over paired seeds: mean ± std of final val BPB, the
mean paired difference (Δ < 0 favours the arm) with a 95% t confidence interval, the paired t-test
and the exact sign-flip permutation test p-values, "k of n seeds favour", and ✓ when |Δ| >= the
threshold (default 0.005 BPB) AND the CI excludes 0. All seeds are shown; nothing is best-of-n.
Every run's curve is diagnosed: descending, plateaued, unstable, diverged, overfitting, suspicious.

--seeds auto[:MAX] adds one seed per arm at a time (from 3) and stops once every arm is decided by an
anytime-valid confidence sequence (better / worse / equivalent within the threshold) or at MAX (10).
Every verdict states its power: the seeds the observed spread needs to resolve the threshold.
--tune lr first sweeps each arm's learning rate (the same log grid rules and a fraction of the same
budget for every arm), scored on a tuning split carved from the training documents, never on
validation; the final runs use each arm's best value, and the report shows the whole sweep and its cost.

Before training, `lumi check` runs on every arm: an arm that sees the future is refused
(--allow-leaky trains it, flagged suspicious). Each run is its own `lumi train` process in
compare/<name>/runs/<arm>/seed-<k>/, so a crashing arm does not stop the others. Re-running the same
command reuses finished runs and resumes interrupted ones; a different spec in the same directory is
refused (--force starts a fresh directory and keeps the old one beside it).

Writes compare/<name>/: report.md, results.json, bpb_vs_tokens.png, bpb_vs_flops.png, bpb_vs_wall.png.
"""

EPILOG = """\
examples:
  lumi compare                                              # the built-in default comparison
  lumi compare llama:nano llama:nano+qk_norm=true --seeds 3 --budget 400steps
  lumi compare llama:micro mine:micro --model-file my_arch.py --match flops --budget 2m --jobs 2
  lumi compare --config cmp.yaml --seeds 0,1,2,3,4 --threshold 0.01
  lumi compare llama:micro multiscale:micro --tune lr --seeds auto:8

cmp.yaml:
  name: relu2-vs-swiglu
  arms:
    - {model: llama:micro, label: swiglu}           # first arm = baseline
    - {model: llama:micro, overrides: {mlp: relu2}, label: relu2}
    - {model: mine:micro, files: [my_arch.py], optim: {lr: 2e-3}}
    # an arm may bring its own tokenizer (BPB is tokenizer-agnostic; needs --match flops or time):
    # - {model: llama:byte-micro, tokenizer: bytes, label: bytes}
  seeds: 3
  budget: 600steps
  match: tokens
  data: {corpus: shakespeare, tokenizer: "bpe:4096"}
  train: {seq_len: 128, batch_size: 16, eval_every_steps: 100}
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "compare", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "arms", nargs="*", metavar="ARM", help="MODEL[:PRESET][+FIELD=VALUE...] (first = baseline)"
    )
    p.add_argument(
        "--config", metavar="FILE.yaml", help="comparison spec (arms, seeds, budget, match, data, train)"
    )
    p.add_argument(
        "--baseline", metavar="LABEL", help="the arm the others are compared against (default: the first)"
    )
    p.add_argument(
        "--seeds",
        help="number of seeds (3 -> 0,1,2), a list (0,5,7), or auto[:MAX]: add seeds one at a "
        "time until every verdict is decided (anytime-valid; default MAX 10); default 2",
    )
    p.add_argument(
        "--tune",
        choices=("lr",),
        help="tune each arm's learning rate first (same grid rules and budget "
        "for every arm, scored on a tuning split of the training data)",
    )
    p.add_argument(
        "--tune-grid",
        metavar="GRID",
        help="with --tune: learning rates 1e-3,3e-3,1e-2 or auto (default: "
        "5 points x/÷ 2 apart around each arm's lr)",
    )
    p.add_argument(
        "--tune-fraction",
        type=float,
        metavar="F",
        help="with --tune: tuning runs get this fraction of the matched budget (default 0.5)",
    )
    p.add_argument(
        "--eval",
        metavar="ITEMS",
        help="also score every finished run and pair the numbers like the BPB: corpus:SPEC and "
        "tasks:TASK[+TASK], comma-separated (e.g. corpus:milton,tasks:piqa)",
    )
    p.add_argument(
        "--eval-tasks-dir", metavar="DIR", help="with --eval tasks: local task files (see lumi eval)"
    )
    p.add_argument(
        "--eval-limit", type=int, metavar="N", help="with --eval tasks: the first N items of each task"
    )
    p.add_argument(
        "--bench",
        action="store_true",
        help="after training, measure each arm's inference speed (prefill, decode with the cache at batch "
        "1 and 8, time to first token, cache bytes/token) and add it to the report (see lumi bench)",
    )
    p.add_argument("--budget", help="per-run budget: 600steps, 2M tokens, 3e14flops, 90s, 2m, 1h")
    p.add_argument(
        "--match", choices=("tokens", "flops", "time"), help="what is equal across arms (default tokens)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        metavar="BPB",
        help="smallest |Δ| in BPB that counts as a difference (default 0.005)",
    )
    p.add_argument(
        "--jobs", type=int, metavar="N", help="runs in parallel (CPU threads are divided among them)"
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="where runs execute: local processes (default), or one Slurm job per run via submitit "
        "(settings in the spec's launcher: section; pip install 'lumi-lab[slurm]')",
    )
    p.add_argument("--name", help="comparison name: the directory compare/<name> (default from the arms)")
    p.add_argument("--out", metavar="DIR", help="comparison directory (default compare/<name>)")
    add_data_args(p, " (default shakespeare, bpe:4096)")
    add_list_arg(
        p,
        "--set",
        "SECTION.KEY=VALUE",
        "shared setting for every arm: train.seq_len=64, optim.lr=1e-3 ... (repeatable)",
        "settings",
    )
    add_model_file_arg(
        p, "a Python file registering your architecture; attached to the arms using its models"
    )
    p.add_argument(
        "--allow-leaky",
        action="store_true",
        help="train arms that fail the causality check (their results are flagged suspicious)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="the directory holds a different comparison: start fresh (the old one is kept beside it)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again instead of reporting them"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    add_json_flag(p)
    p.set_defaults(func=run)


def build_spec(args: argparse.Namespace):
    """The CompareSpec from --config / the default, then the command line on top."""

    from lumi.compare.spec import auto_name, default_spec_dict, load_spec_file, spec_from_dict

    if args.config:
        raw: dict[str, Any] = load_spec_file(args.config)
        where = args.config
        default_name = Path(args.config).stem
        if args.arms:
            raise LumiError(f"arms are given both in {args.config} and on the command line; use one of them")
    else:
        raw = default_spec_dict()
        where = "command line"
        default_name = "default"
        if args.arms:
            raw.pop("name", None)
            raw["arms"] = list(args.arms)  # the one-word form; parsed by spec_from_dict
    for key in ("baseline", "seeds", "budget", "match", "threshold", "jobs", "name"):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    if args.allow_leaky:
        raw["allow_leaky"] = True
    if args.bench:
        raw["bench"] = True
    if getattr(args, "launcher", None):  # on top of the spec's launcher: section (partition, GPUs, ...)
        section = raw.get("launcher")
        section = dict(section) if isinstance(section, dict) else {"kind": section} if section else {}
        raw["launcher"] = {**section, "kind": args.launcher}
    if args.eval is not None or args.eval_tasks_dir or args.eval_limit is not None:
        from lumi.compare.evals import parse_eval_items

        if args.eval is None and not raw.get("eval"):
            raise LumiError("--eval-tasks-dir / --eval-limit need --eval (e.g. --eval tasks:piqa)")
        section = dict(raw.get("eval") or {}) if args.eval is None else parse_eval_items(args.eval)
        if args.eval_tasks_dir:
            section["tasks_dir"] = args.eval_tasks_dir
        if args.eval_limit is not None:
            section["limit"] = args.eval_limit
        raw["eval"] = section
    if (args.tune_grid is not None or args.tune_fraction is not None) and not (args.tune or raw.get("tune")):
        raise LumiError(
            "--tune-grid / --tune-fraction need --tune lr (e.g. --tune lr --tune-grid 1e-3,3e-3,1e-2)"
        )
    if args.tune or args.tune_grid is not None or args.tune_fraction is not None:
        tune = raw.get("tune")
        tune = dict(tune) if isinstance(tune, dict) else {"param": tune or args.tune}
        if args.tune:
            tune["param"] = args.tune
        if args.tune_grid is not None:
            from lumi.compare.tune import parse_grid

            tune["grid"] = parse_grid(args.tune_grid, "--tune-grid")
        if args.tune_fraction is not None:
            tune["fraction"] = args.tune_fraction
        raw["tune"] = tune
    data = dict(raw.get("data") or {})
    if args.corpus:
        data["corpus"] = args.corpus
    if args.tokenizer:
        data["tokenizer"] = args.tokenizer
    if args.data:
        data["dir"] = str(Path(args.data).expanduser().resolve())
    raw["data"] = data
    apply_section_settings(
        raw,
        args.settings,
        ("train", "optim", "data"),
        "e.g. --set train.seq_len=64; per-arm model fields go in the arm: llama:nano+mlp=relu2",
    )
    spec = spec_from_dict(
        raw, where, default_name=default_name, base_dir=Path(args.config).parent if args.config else None
    )
    if args.arms and not args.name and not args.config:
        spec.name = auto_name(spec.arms)
    _attach_model_files(spec, args.model_file)
    return spec


def _attach_model_files(spec, files: list[str]) -> None:
    """Load each --model-file and attach it to the arms whose model it registers."""
    if not files:
        return
    from lumi.models.registry import load_model_file

    for f in files:
        f = str(Path(f).expanduser().resolve())
        names = set(load_model_file(f))
        users = [a for a in spec.arms if a.name in names]
        if not users:
            raise LumiError(
                f"model file {f!r} registers {', '.join(sorted(names)) or 'no model'}, but no arm uses "
                f"{'them' if len(names) > 1 else 'it'}; arms: {', '.join(a.label for a in spec.arms)}"
            )
        for arm in users:
            if f not in arm.files:
                arm.files.append(f)
    for arm in spec.arms:  # a plugin arm without its file: say which file is missing
        for f in arm.files:
            if not Path(f).is_file():
                raise LumiError(f"arm {arm.label!r}: model file {f!r} does not exist")


def run(args: argparse.Namespace) -> int:
    from lumi.compare.comparison import run_comparison
    from lumi.compare.report import print_table

    spec = build_spec(args)
    comp_dir = Path(args.out) if args.out else Path("compare") / spec.name
    progress = not args.no_progress
    results, files = run_comparison(
        spec,
        comp_dir,
        force=args.force,
        retry_failed=args.retry_failed,
        progress=progress,
        make_plots=not args.no_plots,
    )
    if args.json:
        print_json(results)
        return 0
    print_table(results)
    print(f"\nreport:  {files['report']}")
    if "report.html" in files:
        print(f"html:    {files['report.html']}")
    print(f"results: {files['results']}")
    plots = [str(p) for k, p in files.items() if k.endswith(".png")]
    if plots:
        print("plots:   " + "  ".join(plots))
    sys.stdout.flush()
    return 0

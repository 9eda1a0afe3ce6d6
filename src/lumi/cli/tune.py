"""`lumi tune`: a learning-rate sweep for one model, scored on a tuning split of the training documents."""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.cli import common

HELP = "learning-rate sweep for one model, scored on a tuning split carved from the training data (never val)"

DESCRIPTION = """\
Train MODEL[:PRESET] once per grid point (seed 0, the same budget each) on the training split minus
its last 10% of tokens (cut at a document boundary), and score each run by its BPB on that held-out
10%: the tuning split. Validation is never used, so a value chosen here can be reported honestly on
validation afterwards. A point that diverges is recorded as "diverged" and skipped.

--grid auto (default): 5 points x/÷ 2 apart around the model's current lr. With optim.name=muon the
grid is over optim.muon_lr and the Adam lr moves with it (their ratio kept).
Runs go to tune/<model>/lr-<value>/ (--out DIR); re-running reuses finished points.
`lumi compare ... --tune lr` runs the same sweep for every arm of a comparison.
"""

EPILOG = """\
examples:
  lumi tune llama:nano --budget 100steps
  lumi tune llama:micro --grid 1e-3,3e-3,1e-2 --budget 2m --json
  lumi tune llama:micro --set optim.name=muon --grid auto
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = common.add_verb(subparsers, "tune", HELP, DESCRIPTION, EPILOG)
    p.add_argument("model", metavar="MODEL[:PRESET]", help="e.g. llama:nano or llama:micro+mlp=relu2")
    p.add_argument("--grid", default="auto", help="learning rates 1e-3,3e-3,1e-2, or auto (default)")
    p.add_argument(
        "--budget", default="200steps", help="per grid point: 200steps (default), 2M tokens, 90s, 2m"
    )
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="grid points trained in parallel (default 1)"
    )
    common.add_data_args(p, " (default shakespeare, bpe:4096)")
    common.add_list_arg(
        p, "--set", "SECTION.KEY=VALUE", "train.seq_len=64, optim.name=muon ... (repeatable)", "settings"
    )
    common.add_model_file_arg(p)
    p.add_argument("--out", metavar="DIR", help="where the runs go (default tune/<model>)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    common.add_json_flag(p)
    p.set_defaults(func=run)


def build_spec(args: argparse.Namespace):
    """A one-arm CompareSpec: the same data, plan and run machinery as `lumi compare --tune`."""

    from lumi.compare.spec import spec_from_dict
    from lumi.compare.tune import parse_grid

    grid = parse_grid(args.grid, "--grid")
    raw = {
        "arms": [args.model],
        "seeds": 1,
        "budget": args.budget,
        "jobs": args.jobs,
        "match": "tokens",
        "data": {},
        "train": {},
        "optim": {},
        "tune": {"param": "lr", "grid": grid, "fraction": 1.0},
    }
    if args.corpus:
        raw["data"]["corpus"] = args.corpus
    if args.tokenizer:
        raw["data"]["tokenizer"] = args.tokenizer
    if args.data:
        raw["data"]["dir"] = str(Path(args.data).expanduser().resolve())
    common.apply_section_settings(raw, args.settings, ("train", "optim"), "e.g. --set optim.name=muon")
    spec = spec_from_dict(raw, "command line")
    from lumi.cli.compare import _attach_model_files

    _attach_model_files(spec, args.model_file)
    return spec


def run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    out = Path(args.out) if args.out else Path("tune") / spec.arms[0].dirname
    record = tune_one(spec, out, progress=not args.no_progress)
    if args.json:
        common.print_json(record)
        return 0
    arm = record["arms"][spec.arms[0].label]
    print(
        f"lumi tune: {spec.arms[0].label} — {record['param']} at budget {spec.budget}, seed {record['seed']}, "
        f"scored on the tuning split ({100 * record['split_fraction']:g}% of the training tokens; not validation)"
    )
    print(f"{'value':>10}  {'tuning BPB':>10}  {'status':<10}  run")
    for p in arm["points"]:
        bpb = f"{p['tune_bpb']:.4f}" if p["tune_bpb"] is not None else p["status"]
        mark = "  <- chosen" if p["value"] == arm["chosen"] else ""
        print(f"{p['value']:>10g}  {bpb:>10}  {p['status']:<10}  {p['run_dir']}{mark}")
    print(
        f"chosen: {record['param']} = {arm['chosen']:g} (tuning-split BPB {arm['chosen_tune_bpb']:.4f}); "
        f"cost {arm['cost']['runs']} runs, {arm['cost']['tokens']:,} tokens, {arm['cost']['seconds']:.0f} s"
    )
    for note in arm["notes"]:
        print(f"note: {note}")
    return 0


def tune_one(spec, out: Path, progress: bool = True) -> dict:
    """Prepare the data, plan the budget and run the sweep of ``spec``'s single arm into ``out``."""
    from lumi.compare.comparison import _cpu_count, _load_plugins, _log, _prepare_data
    from lumi.compare.plan import model_facts, plan_budgets, tokens_per_step, train_settings, validate_pairing
    from lumi.compare.tune import run_tuning
    from lumi.io import json_safe

    validate_pairing(spec)
    _load_plugins(spec)
    data_dirs = _prepare_data(spec, progress, _log)
    vocab = {tok: d.vocab_size for tok, d in data_dirs.items()}
    arm = spec.arms[0]
    facts = {arm.label: model_facts(arm, vocab[spec.tokenizer_of(arm)], train_settings(spec).seq_len)}
    probe = None
    if spec.budget.is_time:
        spec.match = "time"  # a time budget means the same seconds for every grid point
    plans = {p.label: p for p in plan_budgets(spec, facts, tokens_per_step(spec), probe)}
    jobs = max(1, spec.jobs)
    threads = max(1, _cpu_count() // jobs)
    out.mkdir(parents=True, exist_ok=True)
    record = run_tuning(
        spec,
        out,
        data_dirs,
        plans,
        threads,
        jobs,
        retry_failed=False,
        progress=progress,
        log=_log,
        tune_root=out,
    )
    return json_safe(record)

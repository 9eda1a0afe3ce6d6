"""`lumi check MODEL`: prove a model obeys the contract (above all: it cannot see the future)."""

from __future__ import annotations

import argparse

from lumi.cli.common import (
    add_json_flag,
    add_model_args,
    add_verb,
    load_plugins,
    parse_overrides,
    print_json,
    split_model_preset,
)

HELP = "prove a model obeys the contract: causality (no leaks), init loss, overfit, FLOPs, save/load"

DESCRIPTION = """\
Run the model contract on small instances of MODEL and print a pass/fail table.
Exit code 0 when every check passes, 1 when any fails, 2 on bad input.

Checks (tiny model, batch 2, sequence length T = the first --seq-len, fp32):
  shape                   forward(tokens[B,T]) returns finite logits [B,T,V]
  causality_perturbation  replace all tokens after a cut t; logits at positions <= t must not move
                          (tolerance 1e-5 x max(1, |logit|)). Every cut at T and T+3 (so patch/chunk
                          boundaries of any size 2..8 are probed), block boundaries first plus random
                          cuts at 256, at the model's maximum context and at every other --seq-len
  causality_gradient      d logits[<= t] / d input-embedding[> t] must be exactly 0 (catches leaks too
                          small for any tolerance); "n/a" without an nn.Embedding fed the tokens
  causality_batch         a sequence's logits must not depend on the other sequences of its batch
                          (value, and an exact-zero gradient)
    Every causality row runs under three weight sets -- the initialisation, every parameter re-drawn at
    random (zero-initialised gates and projections open), and the weights after the overfit training --
    and in eval mode without autograd and train mode with autograd (batches of cuts and single
    sequences), so a leak behind a zero gate, a long position, an eval-only or no_grad-only path, or a
    batch statistic is caught. Lengths above the model's max_context() are skipped with a note.
  initial_loss            CE on random tokens within 0.25 x ln V of ln V
  overfit                 Adam on one 2 x T batch (40 steps at lr 3e-3, or the model's
                          check_overfit_steps / check_overfit_lr) drives CE below 0.3 x ln V
  finite_grads            every parameter's gradient is finite (params with no gradient: warning)
  determinism             two builds under the same seed: identical weights and logits
  save_load               safetensors save -> load into a differently seeded model -> identical logits
  params                  param_counts() agrees with the module (total, non-embedding, active)
  flops                   flops_per_token(T) within 5% of torch.utils.flop_counter on forward+backward
                          (attention on the MATH SDPA backend, so the counter sees it)

A failure says which check failed, under which condition, at which length and position, e.g.
  causality_perturbation  LEAK at position 64: changing the tokens after position t=64 (T=256,
                          trained weights, eval mode, grad off, batch 32) changed the logits at ...

Examples:
  lumi check llama                           # every CPU-sized preset of llama
  lumi check llama:micro --set qk_norm=true  # one preset with a recipe switch
  lumi check myarch --model-file my_arch.py  # your own architecture, no change to Lumi
  lumi check llama --only causality --json
"""


def add_parser(subparsers) -> None:
    p = add_verb(subparsers, "check", HELP, DESCRIPTION)
    add_model_args(p)
    p.add_argument(
        "--seq-len",
        default="32",
        metavar="T[,T2...]",
        help="sequence length of the checks (default 32); further lengths are probed for causality "
        "on top of the defaults (T, T+3, 256, the model's maximum context), e.g. 32,512,1024",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the model init and the random tokens (default 0)"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        metavar="V",
        help="vocabulary size of the checked instance (default: the preset's, usually 256)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="CHECK[,CHECK]",
        help="run only these checks (names above; 'causality' = both causality rows)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def parse_lengths(text: str) -> list[int]:
    """'32' or '32,512,1024' -> [32, 512, 1024]; LumiError on anything else."""
    from lumi.errors import LumiError

    try:
        lengths = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise LumiError(
            f"--seq-len takes lengths separated by commas, e.g. 32 or 32,512; got {text!r}"
        ) from None
    if not lengths:
        raise LumiError(f"--seq-len takes lengths separated by commas, e.g. 32 or 32,512; got {text!r}")
    return lengths


def presets_to_check(name: str, preset: str | None) -> list[str | None]:
    """The explicit preset, else every CPU-sized preset, else the first preset, else the config defaults."""
    from lumi.models.registry import get_spec

    spec = get_spec(name)
    if preset is not None:
        return [preset]
    if spec.cpu_presets:
        return list(spec.cpu_presets)
    return [next(iter(spec.presets))] if spec.presets else [None]


def run(args: argparse.Namespace) -> int:
    from lumi.check import CHECKS, run_checks

    load_plugins(args.model_file)
    name, preset = split_model_preset(args.model, args.preset)
    overrides = parse_overrides(args.overrides)
    only = [s for s in args.only.split(",") if s.strip()] if args.only else None
    lengths = parse_lengths(args.seq_len)
    seq_len, extra = lengths[0], lengths[1:]
    reports = []
    for p in presets_to_check(name, preset):
        report = run_checks(
            name,
            p,
            overrides,
            vocab_size=args.vocab_size,
            seq_len=seq_len,
            seed=args.seed,
            only=only,
            extra_lengths=extra,
        )
        reports.append(report)
        if not args.json:
            _print_table(report, CHECKS, seq_len)
    passed = all(r.passed for r in reports)
    if args.json:
        from lumi.check.accounting import FLOPS_RTOL
        from lumi.check.causality import PERTURBATION_ATOL
        from lumi.check.training import INITIAL_LOSS_MARGIN, OVERFIT_FRACTION

        print_json(
            {
                "model": name,
                "passed": passed,
                "seq_len": seq_len,
                "extra_probe_lengths": extra,
                "tolerances": {
                    "perturbation_atol_times_max_abs_logit": PERTURBATION_ATOL,
                    "initial_loss_margin_frac_lnV": INITIAL_LOSS_MARGIN,
                    "overfit_below_frac_lnV": OVERFIT_FRACTION,
                    "flops_rtol": FLOPS_RTOL,
                },
                "reports": [r.to_dict() for r in reports],
            }
        )
    else:
        for r in reports:
            print(r.summary())
    return 0 if passed else 1


def _print_table(report, checks, seq_len: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(width=150)  # logs and CI: wide enough that details rarely wrap
    table = Table(
        title=f"lumi check {report.model}  (T={seq_len}, {report.seconds or 0:.1f}s)", title_justify="left"
    )
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for r in report.results:
        style = {"pass": "green", "FAIL": "bold red", "n/a": "dim"}[r.status]
        title = checks[r.name].title if r.name in checks else r.name
        table.add_row(title, Text(r.status, style=style), Text(r.detail))  # Text: no markup parsing
    console.print(table)

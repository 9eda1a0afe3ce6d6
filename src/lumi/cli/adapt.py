"""`lumi adapt RUN --corpus SPEC --method lora|brick|full`: adapters on a frozen core, with gates."""

from __future__ import annotations

import argparse
from pathlib import Path

from lumi.cli.common import RUN_MODEL_FILE_HELP, add_json_flag, add_model_file_arg, add_verb, print_json
from lumi.errors import LumiError

HELP = "adapt a trained run to a new domain (LoRA, bricks or full fine-tuning) with gain / preservation gates"

DESCRIPTION = """\
Freeze a trained run's model and train, on a new corpus tokenized with the run's own tokenizer:
  lora    LoRA (HF peft) on nn.Linear layers: --targets (default: the attention projections q/k/v/o_proj
          as the model names them), rank R, alpha (default R): R x (in + out) parameters per layer
  brick   a low-rank residual adapter after every block of the model's residual block lists,
          h + up(gelu(down(rmsnorm(h)))), up zero-initialised: 2 x R x d parameters per block;
          --targets picks block lists (blocks) or single blocks (blocks.3)
  full    every weight trains: the reference point for forgetting
lora and brick start exactly equal to the core (checked before training, every seed).

The corpus is split by document (lumi's deterministic split, ~10% of the bytes to validation); the
adapter trains on its training side for --budget per seed (same forms as `lumi train`: 300steps,
1M tokens, 90s, 2m), AdamW (no weight decay), the default warmup-stable-decay schedule, batches
drawn by seed (seed k: the same batches for every method). Default peak lr: lora 3e-3, brick 3e-3,
full 3e-4.

Before and after: domain BPB (the corpus's validation split) and general BPB (the core's own
validation split), on the first --eval-tokens targets of each (default 65536; 0 = whole splits).
Gates over the seeds, on the paired differences after - before (mean and 95% t interval, as in
`lumi compare`). A gate passes on evidence only:
  domain gain   passes when the whole interval shows a gain >= --min-gain (default 0.02 BPB)
  preservation  passes when the whole interval shows forgetting <= --max-forget (default 0.02 BPB)
The gate passes when both pass. Otherwise the report says why: refuted (the whole interval is on
the wrong side), inconclusive (it straddles the threshold: more seeds may decide), no interval (one
seed), diverged. Exit code 0 when the gate passes, 1 when it fails, 2 for bad input.

Output (default RUN/adapters/<method>-<corpus>-<time>/, or --out): results.json, report.md, and per
seed seed-<k>/ (adapter.safetensors + adapter_config.json: core run, core weights sha256, method,
rank, targets, sizes in parameters and bytes). `lumi eval` and `lumi generate` accept a seed-<k>
directory. --merge also writes merged-seed-<k>/, a normal run directory with the adapter folded into
the weights (lora, full; a brick cannot be folded).
"""

EPILOG = """\
examples:
  lumi adapt runs/llama-micro-... --corpus pystdlib --method lora --budget 2m --seeds 3
  lumi adapt runs/llama-micro-... --corpus milton --method brick --rank 16 --budget 300steps
  lumi adapt runs/llama-micro-... --corpus pystdlib --method lora --targets q_proj,v_proj --merge
  lumi eval runs/llama-micro-.../adapters/lora-pystdlib-.../seed-0 --corpus pystdlib
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from lumi.adapt.gates import DEFAULT_MAX_FORGET, DEFAULT_MIN_GAIN
    from lumi.adapt.runner import DEFAULT_EVAL_TOKENS, DEFAULT_RANK

    p = add_verb(subparsers, "adapt", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "run", metavar="RUN", help="a run directory written by `lumi train` (its latest checkpoint)"
    )
    p.add_argument(
        "--corpus", required=True, metavar="SPEC", help="the new domain: milton, pystdlib, files:PATH ..."
    )
    p.add_argument(
        "--method", required=True, metavar="lora|brick|full", help="what trains on the frozen core"
    )
    p.add_argument(
        "--rank", type=int, default=DEFAULT_RANK, help=f"lora / brick rank (default {DEFAULT_RANK})"
    )
    p.add_argument(
        "--alpha", type=float, help="lora alpha; the update is scaled by alpha / rank (default: rank)"
    )
    p.add_argument(
        "--targets", metavar="NAME[,NAME...]", help="lora: linear layer names; brick: block lists or blocks"
    )
    p.add_argument("--budget", required=True, help="training budget per seed: 300steps, 1M tokens, 90s, 2m")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--lr", type=float, help="peak AdamW lr (default: lora 3e-3, brick 3e-3, full 3e-4)")
    p.add_argument(
        "--min-gain",
        type=float,
        default=DEFAULT_MIN_GAIN,
        help=f"domain BPB gain required (default {DEFAULT_MIN_GAIN})",
    )
    p.add_argument(
        "--max-forget",
        type=float,
        default=DEFAULT_MAX_FORGET,
        help=f"general BPB loss allowed (default {DEFAULT_MAX_FORGET})",
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=DEFAULT_EVAL_TOKENS,
        help=f"targets scored per text before/after (default {DEFAULT_EVAL_TOKENS}; 0 = whole splits)",
    )
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the run's train.batch_size)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the run's train.seq_len)")
    p.add_argument(
        "--merge", action="store_true", help="also write merged-seed-<k>/ run directories (lora, full)"
    )
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default RUN/adapters/<method>-<corpus>-<time>)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    add_model_file_arg(p, RUN_MODEL_FILE_HELP)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumi.adapt.report import adapter_line, gate_lines, seed_table
    from lumi.adapt.runner import AdaptOptions, adapt
    from lumi.train.config import parse_budget

    if args.eval_tokens is not None and args.eval_tokens < 0:
        raise LumiError(f"--eval-tokens must be >= 0 (0 = whole splits), got {args.eval_tokens}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    options = AdaptOptions(
        corpus=args.corpus.strip(),
        method=args.method.strip(),
        budget=parse_budget(args.budget),
        seeds=args.seeds,
        rank=args.rank,
        alpha=args.alpha,
        targets=targets,
        lr=args.lr,
        min_gain=args.min_gain,
        max_forget=args.max_forget,
        eval_tokens=args.eval_tokens or None,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        merge=args.merge,
        device=args.device,
        out=Path(args.out) if args.out else None,
        progress=not (args.no_progress or args.json),
    )
    results = adapt(Path(args.run), options, args.model_file)
    passed = results["gate"]["verdict"] == "pass"
    if args.json:
        print_json(results)
        return 0 if passed else 1
    print(f"lumi adapt: {results['method']} on {results['domain']['corpus']} over {results['core_run']}")
    print(f"  adapter: {adapter_line(results)}")
    for line in [*seed_table(results), "", *gate_lines(results)]:
        print(f"  {line}" if line else "")
    print(f"  output: {results['out']} (results.json, report.md, seed-<k>/)")
    return 0 if passed else 1

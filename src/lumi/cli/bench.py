"""`lumi bench`: training and inference speed, memory and MFU, side by side with Hugging Face."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from lumi.cli.common import add_json_flag, add_model_file_arg, add_verb, print_json

HELP = "training and inference speed, memory and MFU of models (and HF Llama twins)"
DESCRIPTION = """\
Measure, for each model, in alternating rounds after a warm-up round:
  train     tokens/s of forward + cross-entropy + backward + clipping + fused AdamW on [batch, seq-len],
            and MFU = analytic FLOPs/token x tokens/s / the measured matmul peak
  prefill   tokens/s of one no-grad forward over [batch, seq-len]
  decode    greedy tokens/s with the KV cache at batch 1 and 8 (a model without a cache is decoded by
            re-running the sequence, and says so), time to first token, cache bytes per token
  memory    peak growth of one training step and of one batch-8 decode (CPU: resident set in a fresh
            process; CUDA: max allocated)
Every figure is printed as its median over rounds with the spread (max - min) / median.
With --hf every plain `llama` model also gets a twin: transformers' LlamaForCausalLM with the same dims,
trained with the same fused AdamW and decoded with `generate`, and the Lumi/HF ratios are printed.
On CUDA the models run under bf16 autocast (unless --precision fp32).
"""
EPILOG = """\
examples:
  lumi bench llama:micro multiscale:micro mla:micro --hf      # the zoo's CPU presets against HF Llama
  lumi bench llama:tiny --hf --threads 1                      # one-thread CPU numbers
  lumi bench llama:tiny --hf --compile                        # Lumi under torch.compile (HF stays eager)
  lumi bench my_arch:small --model-file my_arch.py --json     # your own architecture, as JSON
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "bench", HELP, DESCRIPTION, EPILOG)
    p.add_argument("models", nargs="+", metavar="MODEL[:PRESET]", help="models to measure, e.g. llama:micro")
    add_model_file_arg(p)
    p.add_argument("--hf", action="store_true", help="add HF LlamaForCausalLM twins of the llama models")
    p.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads (default: torch's, usually the core count)"
    )
    p.add_argument(
        "--seq-len", type=int, metavar="T", default=256, help="training/prefill sequence length (default 256)"
    )
    p.add_argument(
        "--batch", type=int, metavar="B", default=8, help="training/prefill batch size (default 8)"
    )
    p.add_argument(
        "--prompt-len", type=int, metavar="P", default=64, help="decode prompt length (default 64)"
    )
    p.add_argument(
        "--new-tokens", type=int, metavar="N", default=64, help="tokens decoded per sequence (default 64)"
    )
    p.add_argument(
        "--vocab-size", type=int, metavar="V", default=4096, help="vocabulary size (default 4096, bpe:4096)"
    )
    p.add_argument(
        "--rounds", type=int, metavar="R", default=5, help="measured rounds after the warm-up (default 5)"
    )
    p.add_argument(
        "--train-steps", type=int, metavar="S", default=2, help="optimizer steps timed per round (default 2)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="auto: bf16 autocast on CUDA"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the Lumi models (HF stays eager)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--out", type=Path, metavar="FILE.json", help="where the JSON result goes (default bench/<time>.json)"
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumi.bench.runner import BenchOptions, run_bench
    from lumi.bench.subjects import BenchShape
    from lumi.io import write_json

    options = BenchOptions(
        models=list(args.models),
        shape=BenchShape(args.seq_len, args.batch, args.prompt_len, args.new_tokens),
        vocab_size=args.vocab_size,
        hf=args.hf,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        rounds=args.rounds,
        train_steps=args.train_steps,
        memory=not args.no_memory,
        model_files=list(args.model_file),
    )
    started = time.perf_counter()
    result = run_bench(options, log=lambda msg: print(f"lumi bench: {msg}", file=sys.stderr, flush=True))
    result["wall_s"] = time.perf_counter() - started
    out = args.out or Path("bench") / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(out, result)
    if args.json:
        print_json(result)
        return 0
    print_table(result)
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


COLUMNS = [  # (figure, header, format)
    ("train_tok_per_s", "train tok/s", "rate"),
    ("mfu", "MFU", "pct"),
    ("prefill_tok_per_s", "prefill tok/s", "rate"),
    ("decode_b1_tok_per_s", "decode b1 tok/s", "rate"),
    ("decode_b8_tok_per_s", "decode b8 tok/s", "rate"),
    ("ttft_s", "TTFT ms", "ms"),
]


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(emoji=False)  # "hf:llama:micro" is a name, not an emoji code
    if not console.is_terminal:
        console = Console(width=170, emoji=False)
    shape = result["shape"]
    table = Table(
        title=(
            f"{result['device']}, {result['threads']} threads, {result['precision']}; train/prefill "
            f"{shape['batch']} x {shape['seq_len']}, decode {shape['new_tokens']} tokens after {shape['prompt_len']}; "
            f"median ±spread of {result['rounds']} rounds; matmul peak {(result['matmul_peak_flops'] or 0) / 1e9:.0f} GFLOP/s"
        ),
        title_justify="left",
    )
    table.add_column("model")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for header in ("cache B/tok", "mem train MB", "mem decode MB"):
        table.add_column(header, justify="right")
    for row in result["subjects"]:
        figs = row["figures"]
        cells = [_cell(figs.get(key), kind) for key, _, kind in COLUMNS]
        if not row["has_cache"]:
            cells[3] += " (no cache)"
            cells[4] += " (no cache)"
        cache = row.get("cache_bytes") or {}
        memory = row.get("memory") or {}
        cells += [
            _bytes(cache.get("per_token"), 1) if row["has_cache"] else "—",
            _bytes(memory.get("train_step_bytes"), 1e6),
            _bytes(memory.get("decode_bytes"), 1e6),
        ]
        name = row["name"] + (" (compiled)" if row["compiled"] else "")
        table.add_row(name, *cells)
    console.print(table)
    for ratio in result["ratios"]:
        r = ratio["lumi_over_hf"]
        parts = [
            f"train {_x(r.get('train_tok_per_s'))}",
            f"prefill {_x(r.get('prefill_tok_per_s'))}",
            f"decode b1 {_x(r.get('decode_b1_tok_per_s'))}",
            f"decode b8 {_x(r.get('decode_b8_tok_per_s'))}",
            f"TTFT {_x(r.get('ttft_speedup'))}",
        ]
        print(f"{ratio['lumi']} / {ratio['hf']} (medians; > 1: Lumi faster): {', '.join(parts)}")


def _cell(fig: dict[str, Any] | None, kind: str) -> str:
    if not fig or fig.get("median") is None:
        return "n/a"
    med, spread = fig["median"], fig["spread"] or 0.0
    if kind == "pct":
        text = f"{100 * med:.1f}%"
    elif kind == "ms":
        text = f"{1000 * med:.1f}"
    else:
        text = f"{med:,.0f}"
    return f"{text} ±{100 * spread:.0f}%"


def _bytes(value: float | None, unit: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value / unit:,.0f}" if unit == 1 else f"{value / unit:,.1f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"

"""`lumi models`: the zoo — every registered architecture, its presets and their sizes."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from lumi.cli.common import add_json_flag, add_model_file_arg, add_verb, load_plugins, print_json

HELP = "list the model zoo: architectures, presets, parameter counts, FLOPs/token"

DESCRIPTION = """\
List every registered model with its presets. For each preset: total and non-embedding
parameters and training FLOPs per token (3 x forward, attention over the full context) at
--seq-len, all at a vocabulary of --vocab-size ids (default 4096, the size of `bpe:4096`).
Byte-level models (config default vocab_size 257 = the `bytes` tokenizer) and models whose
config fixes its own vocabulary are shown at their own vocabulary (marked V=...).
Presets marked * are CPU-sized: `lumi check` and the test suite run them.

Models come from Lumi itself ("built-in") or from your own files (--model-file), e.g.
  lumi models --model-file my_arch.py
  lumi check my_arch --model-file my_arch.py
"""


def add_parser(subparsers) -> None:
    p = add_verb(subparsers, "models", HELP, DESCRIPTION)
    add_model_file_arg(p, "also list the architectures this Python file registers (repeatable)")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        metavar="V",
        help="vocabulary size for token models' parameter counts (default 4096)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=256,
        metavar="T",
        help="sequence length for the FLOPs/token column (default 256)",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def preset_sizes(name: str, preset: str | None, vocab_size: int, seq_len: int) -> dict[str, Any]:
    """Parameter counts and FLOPs/token of one preset, built on the meta device (no memory, no init cost)."""

    from lumi.errors import LumiError
    from lumi.models.registry import get_spec, make_config

    spec = get_spec(name)
    if _is_byte_model(spec) or "vocab_size" in spec.presets.get(preset or "", {}):
        config = make_config(name, preset)
    else:
        try:
            config = make_config(name, preset, vocab_size=vocab_size)
        except LumiError:  # the config fixes its own vocabulary
            config = make_config(name, preset)
    row: dict[str, Any] = {
        "preset": preset,
        "cpu": preset in spec.cpu_presets,
        "vocab_size": config.vocab_size,
    }
    try:
        with warnings.catch_warnings():  # build-time advice (e.g. "untrained patcher") is noise in a listing
            warnings.simplefilter("ignore")
            model = _build_sizing_model(spec, config)
        counts = model.param_counts()
        row.update(
            params=counts.total,
            non_embedding_params=counts.non_embedding,
            active_params=counts.active if counts.active is not None else counts.total,
        )
        try:
            row["flops_per_token"] = float(model.flops_per_token(seq_len))
        except NotImplementedError:
            row["flops_per_token"] = None
    except LumiError:
        raise
    except Exception as e:  # a broken plugin must not hide the rest of the zoo
        row["error"] = f"{type(e).__name__}: {e}"
    return row


def _is_byte_model(spec) -> bool:
    """Byte models default to the bytes tokenizer's vocabulary (256 byte values + separator)."""
    import dataclasses

    from lumi.data.tokenizers import MIN_VOCAB

    field = {f.name: f for f in dataclasses.fields(spec.config_class)}.get("vocab_size")
    return field is not None and field.default == MIN_VOCAB


def _build_sizing_model(spec, config):
    import torch

    try:
        with torch.device("meta"):  # no memory, no init cost: a 200M preset lists instantly
            return spec.cls(config)
    except Exception:  # some inits (SVD, numpy, loading a patcher) need real tensors
        return spec.cls(config)


def list_zoo(vocab_size: int = 4096, seq_len: int = 256) -> list[dict[str, Any]]:
    from lumi.models.registry import list_models

    out = []
    for spec in list_models():
        presets: list[str | None] = [*spec.presets] or [None]
        out.append(
            {
                "name": spec.name,
                "description": spec.description,
                "source": "built-in" if spec.source == "lumi" else spec.source,
                "cpu_presets": list(spec.cpu_presets),
                "presets": [preset_sizes(spec.name, p, vocab_size, seq_len) for p in presets],
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    from lumi.errors import LumiError

    if args.vocab_size < 2:
        raise LumiError(f"--vocab-size must be >= 2, got {args.vocab_size}")
    if args.seq_len < 1:
        raise LumiError(f"--seq-len must be >= 1, got {args.seq_len}")
    load_plugins(args.model_file)
    zoo = list_zoo(args.vocab_size, args.seq_len)
    if args.json:
        print_json({"vocab_size": args.vocab_size, "seq_len": args.seq_len, "models": zoo})
        return 0
    _print_table(zoo, args.vocab_size, args.seq_len)
    n_presets = sum(len(m["presets"]) for m in zoo)
    print(
        f"{len(zoo)} models, {n_presets} presets; * = CPU-sized preset. "
        f"Check one with `lumi check NAME:PRESET`."
    )
    return 0


def _print_table(zoo: list[dict[str, Any]], vocab_size: int, seq_len: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    table = Table(
        title=f"Lumi model zoo (parameters at vocab {vocab_size} unless noted; FLOPs = training "
        f"FLOPs/token at T={seq_len})",
        title_justify="left",
    )
    for col in ("model", "preset"):
        table.add_column(col)
    for col in ("params", "non-emb", "FLOPs/tok"):
        table.add_column(col, justify="right")
    table.add_column("description / source", overflow="fold")
    for m in zoo:
        for i, row in enumerate(m["presets"]):
            preset = (row["preset"] or "(defaults)") + ("*" if row["cpu"] else "")
            if row["vocab_size"] != vocab_size:
                preset += f" (V={row['vocab_size']})"
            if "error" in row:
                cells = ["—", "—", "—"]
                info = f"error: {row['error']}"
            else:
                flops = row.get("flops_per_token")
                cells = [
                    _human(row["params"]),
                    _human(row["non_embedding_params"]),
                    _human(flops) if flops is not None else "?",
                ]
                info = ""
            if i == 0:
                info = f"{m['description']} [{m['source']}]" + (f"; {info}" if info else "")
            table.add_row(Text(m["name"] if i == 0 else ""), Text(preset), *cells, Text(info))
        table.add_section()
    console.print(table)


def _human(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"

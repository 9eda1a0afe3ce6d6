"""`lumi pack RUN --bits 8|6|4 --codec zlib|lzma|zstd`: a quantised, compressed, size-limited artifact."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lumi.cli.common import RUN_MODEL_FILE_HELP, add_json_flag, add_model_file_arg, add_verb, print_json
from lumi.errors import LumiError

HELP = "quantise (int8/6/4 per row) and compress a run into a size-limited artifact, with its round-trip BPB"

DESCRIPTION = """\
Pack the latest checkpoint of a run the parameter-golf way: every matrix quantised per row to --bits
(symmetric, one fp16 scale per row), norm weights, biases and other small tensors kept in float32, the
tokenizer included, all compressed with --codec. Reports the artifact's bytes, the bytes of the code
needed to run it (the model's source files and Lumi's dequantiser), whether both fit --limit, and the
validation BPB of the round-tripped model next to the float32 model's, measured the same way as
`lumi eval` (non-overlapping windows of the run's train.seq_len over the validation split).
`lumi unpack FILE --out DIR` restores a model (lumi.load(DIR)).
"""

EPILOG = """\
examples:
  lumi pack runs/llama-micro-20250101-120000                      # int8 + zlib, 16 MB limit
  lumi pack runs/llama-micro-20250101-120000 --bits 6 --codec lzma --out micro.lumipack
  lumi pack runs/llama-micro-20250101-120000 --sweep              # every bits x codec, one table
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from lumi.export.pack import CODECS
    from lumi.export.quant import BITS

    p = add_verb(subparsers, "pack", HELP, DESCRIPTION, EPILOG)
    p.add_argument("run", help="a run directory written by `lumi train`")
    p.add_argument("--bits", type=int, choices=BITS, default=8, help="bits per weight (default 8)")
    p.add_argument("--codec", choices=CODECS, default="zlib", help="compression (default zlib)")
    p.add_argument(
        "--limit", default="16MB", help="size limit for artifact + code (default 16MB = 16,000,000 bytes)"
    )
    p.add_argument(
        "--out", metavar="FILE", help="artifact path (default <run name>.int<bits>.<codec>.lumipack)"
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--sweep", action="store_true", help="measure every bits x codec and print one table")
    p.add_argument(
        "--max-targets", type=int, help="score only this many validation targets (default: the whole split)"
    )
    add_model_file_arg(p, RUN_MODEL_FILE_HELP)
    add_json_flag(p)
    p.set_defaults(func=run)


def pack_run(
    run_dir: Path,
    bits: int = 8,
    codec: str = "zlib",
    limit: str = "16MB",
    out: Path | None = None,
    force: bool = False,
    sweep: bool = False,
    max_targets: int | None = None,
    model_files: list[str] | None = None,
) -> dict[str, Any]:
    from lumi.export import pack
    from lumi.export.bundle import run_facts
    from lumi.export.quant import BITS
    from lumi.io import write_bytes_atomic
    from lumi.run import Run

    limit_bytes = pack.parse_size(limit)
    run = Run.open(run_dir)
    pack.require_codec(codec)
    ckpt = run.checkpoint()
    model, tokenizer = run.load_model_and_tokenizer("cpu", model_files or [], ckpt)
    name = run.config.model.name
    data = run.data()
    seq_len = run.config.train.seq_len
    reference = _val_bpb(model, data, seq_len, max_targets)
    code = pack.code_files(type(model))
    code_bytes = sum(f.stat().st_size for f in code)
    facts = run_facts(run, ckpt)
    grid = (
        [(b, c) for b in BITS for c in pack.CODECS if pack.codec_available(c)] if sweep else [(bits, codec)]
    )
    rows: list[dict[str, Any]] = []
    chosen: bytes | None = None
    by_bits: dict[int, tuple[Any, float]] = {}
    for b, c in grid:
        if b not in by_bits:
            packed = pack.pack_model(name, model, tokenizer, b, facts)
            rt_model, _ = pack.unpacked_model(
                pack.read_artifact(pack.compress(packed.payload, "zlib"), "artifact")
            )
            by_bits[b] = (packed, _val_bpb(rt_model, data, seq_len, max_targets)["bpb"])
        packed, bpb = by_bits[b]
        artifact = pack.compress(packed.payload, c)
        if (b, c) == (bits, codec):
            chosen = artifact
        rows.append(
            {
                "bits": b,
                "codec": c,
                "artifact_bytes": len(artifact),
                "code_bytes": code_bytes,
                "total_bytes": len(artifact) + code_bytes,
                "fits": len(artifact) + code_bytes <= limit_bytes,
                "val_bpb": bpb,
                "delta_bpb": bpb - reference["bpb"],
                "quantized_params": packed.quantized,
                "float32_values": packed.kept,
            }
        )
    result: dict[str, Any] = {
        "run": str(run.path),
        "checkpoint": str(ckpt),
        "model": name,
        "limit_bytes": limit_bytes,
        "code_files": [str(f) for f in code],
        "code_bytes": code_bytes,
        "float32_val_bpb": reference["bpb"],
        "protocol": reference["protocol"],
        "rows": rows,
    }
    if chosen is not None:
        path = out or Path(f"{run.path.name}.int{bits}.{codec}.lumipack")
        if path.exists() and not force:
            raise LumiError(f"{path} already exists; choose another --out or pass --force to replace it")
        write_bytes_atomic(path, chosen)
        result["artifact"] = str(path)
    return result


def _val_bpb(model: Any, data: Any, seq_len: int, max_targets: int | None) -> dict[str, Any]:
    import torch

    from lumi.metrics.evaluate import evaluate_bpb

    return evaluate_bpb(
        model,
        data.tokens("val"),
        data.target_bytes("val"),
        seq_len,
        16,
        torch.device("cpu"),
        max_targets=max_targets,
        split="val",
    )


def run(args: argparse.Namespace) -> int:
    if args.max_targets is not None and args.max_targets < 1:
        raise LumiError(
            f"--max-targets must be >= 1 (omit it to score the whole split), got {args.max_targets}"
        )
    out = pack_run(
        Path(args.run),
        args.bits,
        args.codec,
        args.limit,
        Path(args.out) if args.out else None,
        args.force,
        args.sweep,
        args.max_targets,
        args.model_file,
    )
    if args.json:
        print_json(out)
        return 0
    p = out["protocol"]
    print(
        f"{out['run']}: float32 val BPB {out['float32_val_bpb']:.4f} ({p['subset']}, {p['targets']:,} targets, "
        f"windows of {p['seq_len']})"
    )
    print(f"  code: {out['code_bytes']:,} bytes ({', '.join(Path(f).name for f in out['code_files'])})")
    print(
        f"  {'bits':>4} {'codec':<5} {'artifact':>12} {'+ code':>12} {'fits':>5} {'val BPB':>8} {'Δ BPB':>8}"
    )
    limit = out["limit_bytes"]
    for r in out["rows"]:
        print(
            f"  {r['bits']:>4} {r['codec']:<5} {r['artifact_bytes']:>12,} {r['total_bytes']:>12,} "
            f"{'yes' if r['fits'] else 'NO':>5} {r['val_bpb']:>8.4f} {r['delta_bpb']:>+8.4f}"
        )
    print(f"  limit {limit:,} bytes (artifact + code)")
    if "artifact" in out:
        print(f"wrote {out['artifact']}")
    return 0

"""`lumi unpack FILE --out DIR`: restore a model packed by `lumi pack` as a Lumi export directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lumi.cli.common import add_json_flag, add_model_file_arg, add_verb, print_json
from lumi.errors import LumiError

HELP = "restore a `lumi pack` artifact into a directory lumi.load() reads (weights dequantised to float32)"

DESCRIPTION = """\
Check a packed artifact's checksum, decompress it, dequantise its weights to float32 and write a Lumi
export directory (model.safetensors, model_config.json, tokenizer, manifest): lumi.load(DIR) returns the
model and tokenizer. A plugin architecture needs its file (--model-file).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "unpack", HELP, DESCRIPTION)
    p.add_argument("artifact", help="a .lumipack file written by `lumi pack`")
    p.add_argument("--out", metavar="DIR", required=True, help="the directory to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_model_file_arg(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def unpack_file(
    path: Path, out: Path, force: bool = False, model_files: list[str] | None = None
) -> dict[str, Any]:
    from lumi.export.bundle import write_bundle
    from lumi.export.pack import read_artifact, unpacked_model
    from lumi.models.registry import load_model_file

    try:
        data = path.read_bytes()
    except OSError as e:
        raise LumiError(f"cannot read {path}: {e.strerror or e}") from None
    header = read_artifact(data, str(path))
    for f in model_files or []:
        load_model_file(f)
    model, tokenizer = unpacked_model(header)
    facts = {
        **header.get("source", {}),
        "unpacked_from": str(path),
        "bits": header["bits"],
        "codec": header["codec"],
    }
    write_bundle(out, header["model"], model, tokenizer, facts, force)
    return {
        "artifact": str(path),
        "out": str(out),
        "model": header["model"],
        "bits": header["bits"],
        "codec": header["codec"],
    }


def run(args: argparse.Namespace) -> int:
    out = unpack_file(Path(args.artifact), Path(args.out), args.force, args.model_file)
    if args.json:
        print_json(out)
    else:
        print(
            f"unpacked {out['artifact']} ({out['model']}, int{out['bits']}, {out['codec']}) to {out['out']}"
        )
    return 0

"""The `lumi` command: one subcommand per verb, each in its own module under lumi.cli."""

from __future__ import annotations

import argparse
import importlib
import sys

from lumi.errors import LumiError

# verb -> module implementing `add_parser(subparsers)`; the parser sets `func` to its runner.
VERBS: dict[str, str] = {
    "data": "lumi.cli.data",
    "models": "lumi.cli.models",
    "check": "lumi.cli.check",
    "train": "lumi.cli.train",
    "compare": "lumi.cli.compare",
    "tune": "lumi.cli.tune",
    "eval": "lumi.cli.eval",
    "generate": "lumi.cli.generate",
    "export": "lumi.cli.export",
    "pack": "lumi.cli.pack",
    "unpack": "lumi.cli.unpack",
    "report": "lumi.cli.report",
    "runs": "lumi.cli.runs",
    "adapt": "lumi.cli.adapt",
    "bench": "lumi.cli.bench",
}

DESCRIPTION = """\
Lumi: does your architecture beat a strong Transformer baseline at the same budget?

Typical session:
  lumi data prepare --corpus shakespeare --tokenizer bpe:4096   # shards + exact byte accounting
  lumi models                                                    # the zoo, presets, parameter counts
  lumi check llama --preset nano                                 # prove a model cannot see the future
  lumi train llama --preset nano --budget 2m                     # one run into runs/<name>/
  lumi compare llama:nano multiscale:nano --seeds 3 --budget 2m  # matched multi-seed comparison
Every verb has --help and --json.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumi", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from lumi import __version__

    parser.add_argument("--version", action="version", version=f"lumi {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # `lumi compare` is the main job, but a bare `lumi` should teach, not start training.
        parser.print_help()
        return 0
    from lumi.cli.common import PipeSafeStream

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PipeSafeStream(sys.stdout), PipeSafeStream(sys.stderr)
    try:
        return int(args.func(args) or 0)
    except LumiError as e:
        print(f"lumi {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lumi {args.verb}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = saved

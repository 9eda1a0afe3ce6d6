"""Small helpers shared by the verb modules: --json output, model arguments."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lumi.errors import LumiError
from lumi.io import parse_assignment


def add_verb(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """The verb's parser; descriptions and epilogs keep their line breaks (they hold examples)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print a machine-readable JSON object instead of tables"
    )


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def add_list_arg(
    p: argparse._ActionsContainer, flag: str, metavar: str, help: str, dest: str | None = None
) -> None:
    """A repeatable option collecting its values in a list (default [])."""
    p.add_argument(flag, dest=dest, action="append", default=[], metavar=metavar, help=help)


def add_model_file_arg(p: argparse._ActionsContainer, help: str | None = None) -> None:
    add_list_arg(
        p,
        "--model-file",
        "FILE.py",
        help or "a Python file that registers your own architecture with @lumi.register (repeatable)",
    )


RUN_MODEL_FILE_HELP = (
    "the Python file registering the run's architecture (repeatable); a run directory's own list of "
    "plugin files is never imported"
)


def add_data_args(p: argparse.ArgumentParser, defaults: str = "") -> None:
    """--corpus / --tokenizer / --data: what a run trains on (``defaults`` is appended to the help)."""
    p.add_argument("--corpus", help=f"corpus spec: shakespeare, pystdlib, files:PATH, hf:NAME ...{defaults}")
    p.add_argument("--tokenizer", help=f"tokenizer spec: bytes, bpe:N{defaults}")
    p.add_argument("--data", metavar="DIR", help="an already prepared data directory (lumi data prepare)")


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """MODEL [--preset P] [--set key=value ...] [--model-file F] — shared by every model verb."""
    if positional:
        p.add_argument("model", help="registered model name (see `lumi models`), or NAME:PRESET")
    p.add_argument("--preset", help="named preset of the model (see `lumi models`)")
    add_list_arg(
        p,
        "--set",
        "FIELD=VALUE",
        "override one model config field, e.g. --set n_layers=4 (repeatable)",
        "overrides",
    )
    add_model_file_arg(p)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; values are parsed as YAML scalars."""
    return dict(parse_assignment(item, "FIELD=VALUE (e.g. n_layers=4)", "override") for item in items)


def apply_section_settings(
    raw: dict[str, Any], items: list[str], sections: tuple[str, ...], hint: str
) -> None:
    """``--set SECTION.KEY=VALUE`` items into the spec mapping ``raw`` (``raw[SECTION][KEY] = value``)."""
    for item in items:
        key, value = parse_assignment(
            item, f"{' or '.join(s + '.KEY=VALUE' for s in sections)} ({hint})", "--set"
        )
        section, dot, name = key.partition(".")
        if not dot or section not in sections or not name:
            raise LumiError(
                f"--set {item!r} must look like {' or '.join(s + '.KEY=VALUE' for s in sections)} ({hint})"
            )
        raw[section] = {**(raw.get(section) or {}), name: value}


def split_model_preset(model: str, preset: str | None) -> tuple[str, str | None]:
    """'llama:nano' -> ('llama', 'nano'); an explicit --preset wins if both are given."""
    if ":" in model:
        name, p = model.split(":", 1)
        return name, preset or p
    return model, preset


def load_plugins(files: list[str]) -> None:
    if files:
        from lumi.models.registry import load_model_file

        for f in files:
            load_model_file(f)


class PipeSafeStream:
    """A text stream whose writes stop quietly once its reader has gone (`lumi compare | head`).

    A closed pipe must not abort work in progress: an exception from a progress line would stop a
    comparison's children. After the first broken pipe the descriptor is pointed at /dev/null, so the
    interpreter's final flush is quiet too. Everything else is delegated to the wrapped stream.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broke()

    def _broke(self) -> None:
        import os

        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no real descriptor (captured output): dropping writes is enough
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

"""Reading and writing Lumi's small files, and parsing values typed by users: the bottom layer.

Every writer is atomic (temp file + rename: a reader sees the old file or the new one, never half of
one); every reader and parser raises ``LumiError`` with one line naming the file or the field.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lumi.errors import LumiError, write_error_text


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file and a rename; a full disk leaves no temp file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    import yaml

    write_text_atomic(path, yaml.safe_dump(json_safe(obj), sort_keys=False, default_flow_style=False))


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (a diverged loss is recorded by status, not a bare NaN).
    Also: dict keys -> str, tuples -> lists, paths -> str, numpy / torch scalars -> Python numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return obj


def read_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a one-line ``LumiError``."""
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LumiError(f"{what} {path} is not valid JSON (line {e.lineno}: {e.msg})") from None


def read_yaml(path: Path, what: str = "file") -> Any:
    """Parse a YAML file (UTF-8); errors as in ``read_json``. An empty file reads as None."""
    import yaml

    text = _read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LumiError(f"{what} {path} is not valid YAML{where}: {problem}") from None


def read_jsonl(path: Path, text: str, hint: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file's ``text``; a line that is not
    JSON is a LumiError naming the file and line, followed by ``hint`` (what a line must hold)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise LumiError(f"{path}, line {lineno}: not valid JSON ({e.msg}); {hint}") from None


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LumiError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise LumiError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise LumiError(f"cannot read {what} {path}: {e.strerror or e}") from None


# -- values typed by users ----------------------------------------------------------------------------


def parse_scalar(text: str) -> Any:
    """A command-line value as a YAML scalar ('3' -> 3, 'true' -> True, '[1,2]' -> [1, 2]); text that is
    not valid YAML stays the text, and an empty value is ''."""
    import yaml

    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_assignment(item: str, form: str, what: str = "") -> tuple[str, Any]:
    """'KEY=VALUE' -> ('KEY', parsed VALUE). The error reads '{what} 'ITEM' must look like {form}', e.g.
    what='override', form='FIELD=VALUE (e.g. n_layers=4)'."""
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
        raise LumiError(f"{what + ' ' if what else ''}{item!r} must look like {form}")
    return key.strip(), parse_scalar(value)


def coerce(value: Any, typ: Any, what: str) -> Any:
    """Convert a YAML / command-line value to a dataclass field's declared type (``typ``: int, float, bool,
    str, dict, list, or ``X | None``); ``what`` names the field in the error ('train.seq_len expects int,
    got 'abc''). Other types pass through unchanged."""
    args = typing.get_args(typ)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), typ) if args else typ
    if typing.get_origin(base) is not None:
        base = typing.get_origin(base)
    nullish = ("null", "~", "none") if optional else ("null", "~")
    if value is None or (isinstance(value, str) and value.strip().lower() in nullish):
        if optional:
            return None
        raise LumiError(f"{what} cannot be null")
    try:
        return _coerce_to(base, value)
    except (TypeError, ValueError, OverflowError):
        tname = getattr(base, "__name__", str(base)) + (" or null" if optional else "")
        raise LumiError(f"{what} expects {tname}, got {value!r}") from None


def _coerce_to(base: Any, value: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        low = str(value).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if base is int:
        if isinstance(value, bool):
            raise ValueError
        f = float(value)
        if f != int(f):
            raise ValueError
        return int(f)
    if base is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if base is str:
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    if base is dict:
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)
    if base is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        raise ValueError
    return value


def write_directory(
    out: Path, fill: Callable[[Path], None], force: bool = False, what: str = "output"
) -> None:
    """Create directory ``out`` as a whole: ``fill(tmp)`` writes into a temporary sibling, which is renamed
    to ``out`` only when it is complete. An existing ``out`` is refused unless ``force`` (then replaced, and
    only after the new one is complete). A failure leaves nothing half-written behind."""
    out = Path(out)
    if out.exists() and not force:
        raise LumiError(f"{what} {out} already exists; choose another --out or pass --force to replace it")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        raise LumiError(
            f"cannot write {what} {out}: {write_error_text(e, out.parent)}; nothing was kept"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file, then rename: readers see the old file or the new one, never half of one."""
    write_file_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_file_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` (e.g. a figure's savefig) into a temp sibling, then rename it to ``path``; a failure
    (a full disk) leaves neither a temp file nor half a ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise LumiError(
            f"cannot write {path}: {write_error_text(e)}; free disk space or fix permissions"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path

"""The run directory's files (DESIGN.md "Run directory"): config.yaml, env.json, metrics.jsonl, summary.json.

Only rank 0 writes. JSON files are replaced atomically (temp file + os.replace); metrics.jsonl is
appended line by line and flushed, and on resume rows past the checkpoint are dropped, so a
killed-and-resumed run has exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from lumi.errors import LumiError, write_error_text
from lumi.lock import LOCK_NAME, pid_alive
from lumi.train.config import TrainConfig


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file, then rename: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a half-written temp file
        raise LumiError(
            f"cannot write {path}: {write_error_text(e)}; free disk space or fix permissions"
        ) from None


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


class MetricsLog:
    """Append-only metrics.jsonl (one JSON object per line)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self._f = open(path, "a") if enabled else None

    def write(self, row: dict[str, Any]) -> None:
        if self._f is None:
            return
        try:
            self._f.write(json.dumps(json_safe(row)) + "\n")
            self._f.flush()
        except OSError as e:
            raise LumiError(
                f"cannot append to {self.path}: {write_error_text(e)}; free disk space or fix "
                f"permissions, then continue with --resume"
            ) from None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only rows up to ``last_step`` (the checkpoint we resume from); rewritten atomically.
    A final-eval row goes too: the resumed session evaluates again and writes the only final row."""
    rows = [r for r in read_metrics(path) if int(r.get("step", 0)) <= last_step and not r.get("final")]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_run_config(run_dir: Path, purpose: str = "resume") -> TrainConfig:
    """The run's config.yaml; ``purpose`` words the error for a directory that is not a run."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        if purpose == "resume":
            raise LumiError(
                f"cannot resume {str(run_dir)!r}: it has no config.yaml (not a lumi train run directory)"
            )
        what = "does not exist" if not run_dir.exists() else "is not a run directory: it has no config.yaml"
        raise LumiError(
            f"{str(run_dir)!r} {what}; give a run directory written by `lumi train` (runs/<name>)"
        )
    from lumi.train.config import load_config

    return load_config(path)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json of a run, or None when absent or unreadable (a run killed while writing it)."""
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that already finished (status completed, final eval written), else None."""
    s = read_summary(run_dir)
    return s if s is not None and s.get("status") == "completed" else None


# Temp names our writers use, each ending in the writer's PID: checkpoints/.tmp-latest-PID (a directory),
# .NAME.tmpPID (write_text_atomic), .write-test-PID (create_run_dir).
_TEMP_RE = re.compile(r"^(?:\.tmp-latest-|\..+\.tmp|\.write-test-)(\d+)$")


def clean_stale_temps(run_dir: Path, holding_lock: bool = True) -> list[Path]:
    """Remove temp files/directories left by a killed writer (SIGKILL, power loss); returns what went.

    A temp entry is stale when its PID is not alive; while this process holds the run directory's lock no
    other process can be writing there, so every temp entry but our own is stale then."""
    removed: list[Path] = []
    for folder in (run_dir, run_dir / "checkpoints"):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = _TEMP_RE.match(entry.name)
            if not m or int(m.group(1)) == os.getpid():
                continue
            if holding_lock or not pid_alive(int(m.group(1))):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    try:
                        entry.unlink()
                    except OSError:
                        continue
                removed.append(entry)
    return removed


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts, as 'key: a -> b'."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, name + ".")
        elif va != vb:
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out


def ensure_new_run_dir(run_dir: Path) -> None:
    """Refuse to overwrite an existing, non-empty run directory."""
    if run_dir.exists() and (not run_dir.is_dir() or any(p.name != LOCK_NAME for p in run_dir.iterdir())):
        raise LumiError(
            f"run directory {str(run_dir)!r} already exists; continue it with "
            f"`lumi train --resume {run_dir}` or choose another --out / --name"
        )


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise LumiError(
            f"cannot write to run directory {str(run_dir)!r}: {write_error_text(e)}; choose a writable --out"
        ) from None

"""A run directory written by `lumi train`: the one owner of its format (docs/training.md, "Run directory").

    runs/<name>/
      config.yaml        the TrainConfig it was trained with (loading it reproduces the run)
      env.json           machine, versions, resumes
      metrics.jsonl      one JSON row per train log / eval
      summary.json       status and final numbers, rewritten as the run goes
      checkpoints/latest model.safetensors, model_config.json, optimizer.pt, state.json (previous: the one before)
      eval/              results.json (and context_curve.png) of the latest `lumi eval`
      tensorboard/       event files of train.logger=tensorboard (one per session; a resume appends)
      wandb/             wandb's own files of train.logger=wandb (offline runs: wandb sync them later)
      loggers.json       the stable wandb run id, so a resumed session continues the same wandb run
      adapters/          `lumi adapt`'s output directories (lumi.adapt.directory), unless --out
      .lock              held by the one process that writes the directory (lumi.lock)

Every verb reads runs through ``Run``: ``Run.open(path)`` for a directory that must be a run,
``Run.locate(path)`` when a checkpoint directory or a .safetensors file may be given instead,
``Run.is_run(path)`` to discover them (`lumi runs`). Errors
are one-line ``LumiError``s naming the directory and what is missing. Only rank 0 writes; JSON files are
replaced atomically and metrics.jsonl is appended and flushed line by line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumi.errors import LumiError, write_error_text
from lumi.io import json_safe, write_json, write_text_atomic
from lumi.lock import LOCK_NAME, DirectoryLock, pid_alive

if TYPE_CHECKING:
    import torch

    from lumi.data.prepare import PreparedData
    from lumi.data.tokenizers import Tokenizer
    from lumi.models.base import LumiModel
    from lumi.train.config import TrainConfig

RUN_FORMS = "a run directory written by `lumi train` (runs/<name>)"

# Config keys that change how a run is watched, not what it trains: a resume may change them, and a
# comparison reuses a finished run whatever they say (training_differences leaves them out).
LOGGING_KEYS = ("train.logger", "train.logger_tags")


class Run:
    """One run directory. Cheap to create; every read goes to disk, so it sees a run that is still going."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.summary_path = self.path / "summary.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.env_path = self.path / "env.json"
        self.checkpoints_dir = self.path / "checkpoints"
        self.eval_dir = self.path / "eval"  # lumi eval's results.json and plots
        self.tensorboard_dir = self.path / "tensorboard"  # train.logger=tensorboard
        self.loggers_path = self.path / "loggers.json"  # the stable wandb id (train.logger=wandb)
        self.adapters_dir = self.path / "adapters"  # lumi adapt's output directories

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run directory (it has config.yaml); LumiError otherwise."""
        run = cls(path)
        if not run.config_path.is_file():
            what = (
                "does not exist" if not run.path.exists() else "is not a run directory: it has no config.yaml"
            )
            raise LumiError(f"{str(run.path)!r} {what}; give {RUN_FORMS}")
        return run

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` is a run directory (it has config.yaml); never raises."""
        try:
            return (Path(path) / "config.yaml").is_file()
        except OSError:
            return False

    @classmethod
    def locate(cls, path: str | Path) -> tuple[Run, Path]:
        """(run, checkpoint directory) for a run directory, one of its checkpoint directories, or a
        model.safetensors file inside one."""
        p = Path(path)
        if not p.exists():
            raise LumiError(
                f"{str(p)!r} does not exist; give {RUN_FORMS}, one of its checkpoint directories, or a "
                "model.safetensors file"
            )
        if p.is_file():
            if p.suffix != ".safetensors":
                raise LumiError(f"{str(p)!r} is not a run directory or a .safetensors checkpoint")
            ckpt = p.parent
        elif (p / "model.safetensors").is_file():
            ckpt = p
        elif (p / "config.yaml").is_file():
            run = cls(p)
            return run, run.checkpoint()
        else:
            raise LumiError(
                f"{str(p)!r} is not a run directory: it has neither config.yaml nor model.safetensors"
            )
        for parent in [ckpt, *ckpt.parents]:
            if (parent / "config.yaml").is_file():
                return cls(parent), ckpt
        raise LumiError(
            f"cannot find the run's config.yaml above checkpoint {str(ckpt)!r}; "
            "it says which model and tokenizer the weights belong to"
        )

    # -- what it holds ----------------------------------------------------------------------------
    @cached_property
    def config(self) -> TrainConfig:
        """config.yaml as a validated TrainConfig (read once per Run object)."""
        from lumi.train.config import load_config

        if not self.config_path.is_file():
            raise LumiError(
                f"{str(self.path)!r} is not a run directory: it has no config.yaml; give {RUN_FORMS}"
            )
        return load_config(self.config_path)

    def summary(self) -> dict[str, Any] | None:
        """summary.json, or None when absent or unreadable (a run killed while writing it)."""
        return _json_object(self.summary_path)

    def status(self) -> str | None:
        """The recorded status (running, completed, failed, interrupted, diverged ...); 'unknown' for a
        directory without a readable summary; None when there is no directory."""
        summary = self.summary()
        if summary is not None:
            return summary.get("status")
        return "unknown" if self.path.exists() else None

    def completed_summary(self) -> dict[str, Any] | None:
        """The summary of a run that finished (status completed, final eval written), else None."""
        s = self.summary()
        return s if s is not None and s.get("status") == "completed" else None

    def metrics(self) -> list[dict[str, Any]]:
        """Rows of metrics.jsonl; a torn last line (killed mid-write) is skipped."""
        return read_metrics(self.metrics_path)

    def latest_metrics(self) -> dict[str, Any]:
        """The last train row's step/loss and the last eval's val BPB, read from the file's tail (cheap
        enough to poll a running run)."""
        out: dict[str, Any] = {}
        try:
            with open(self.metrics_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 16384))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return out
        for line in reversed(lines):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("kind") == "train" and "step" not in out:
                out["step"], out["loss"] = row.get("step"), row.get("loss_ema") or row.get("loss")
            if row.get("kind") == "eval" and "val_bpb" not in out:
                out["val_bpb"] = row.get("val_bpb")
            if "step" in out and "val_bpb" in out:
                break
        return out

    def eval_results(self) -> dict[str, Any] | None:
        """eval/results.json of the latest `lumi eval`, or None when absent or unreadable."""
        return _json_object(self.eval_dir / "results.json")

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint directory (latest, else previous), or None."""
        from lumi.train.checkpoint import find_checkpoint

        return find_checkpoint(self.checkpoints_dir)

    def checkpoint(self) -> Path:
        """The newest complete checkpoint; LumiError when the run saved none."""
        found = self.latest_checkpoint()
        if found is None:
            raise LumiError(
                f"run {str(self.path)!r} has no complete checkpoint under {self.checkpoints_dir} "
                "(expected latest/model.safetensors); did the run save one?"
            )
        return found

    def checkpoint_state(self, ckpt: Path | None = None) -> dict[str, Any]:
        """state.json of ``ckpt`` (default: the latest); {} when the run has no checkpoint yet."""
        from lumi.train.checkpoint import load_state

        ckpt = ckpt if ckpt is not None else self.latest_checkpoint()
        return load_state(ckpt) if ckpt is not None else {}

    # -- loading the model ------------------------------------------------------------------------
    def require_plugins(self, model_files: Sequence[str | Path] = (), ckpt: Path | None = None) -> None:
        """Import the plugin files the caller named, then LumiError unless they cover every file the run
        recorded (by path or content hash). The run's own list is never imported."""
        from lumi.models.registry import load_model_file, require_model_files

        for f in model_files:
            load_model_file(f)
        cfg = self.config
        hashes = self.checkpoint_state(ckpt).get("model_files")
        require_model_files(
            list(cfg.model.files), hashes if isinstance(hashes, dict) else None, self.path, cfg.model.name
        )

    def model_values(self, ckpt: Path) -> dict[str, Any]:
        """The resolved model config the checkpoint's weights belong to (model_config.json)."""
        from lumi.train.checkpoint import load_model_config

        return load_model_config(ckpt)

    def load_model(
        self,
        device: str | torch.device = "cpu",
        model_files: Sequence[str | Path] = (),
        ckpt: Path | None = None,
    ) -> LumiModel:
        """The trained model from ``ckpt`` (default: the latest checkpoint), in eval mode on ``device``."""
        from lumi.models.registry import model_from_config
        from lumi.train.checkpoint import load_model_weights

        ckpt = ckpt if ckpt is not None else self.checkpoint()
        self.require_plugins(model_files, ckpt)
        model = model_from_config(self.config.model.name, self.model_values(ckpt))
        load_model_weights(ckpt, model, device)
        return model.to(device).eval()

    def data(self, progress: bool = False) -> PreparedData:
        """The prepared data the run trained on (prepared again from its corpus if it was deleted)."""
        from lumi.train.distributed import DistInfo
        from lumi.train.runtime import load_data

        return load_data(self.config, progress, DistInfo())

    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer, found without preparing data: its data.dir, the data directory its summary
        names, or the default directory of its corpus and tokenizer."""
        from lumi.data.paths import default_data_dir
        from lumi.data.tokenizers import BytesTokenizer, load_tokenizer

        d = self.config.data
        candidates: list[Path] = []
        if d.dir:
            candidates.append(Path(d.dir))
        recorded = (self.summary() or {}).get("data")
        if recorded:
            candidates.append(Path(str(recorded)))
        candidates.append(default_data_dir(d.corpus, d.tokenizer))
        for folder in candidates:
            if (folder / "lumi_tokenizer.json").is_file():
                return load_tokenizer(folder)
        if d.tokenizer.strip() == "bytes":
            return BytesTokenizer()  # needs no files
        raise LumiError(
            f"cannot find the tokenizer of run {str(self.path)!r}: no prepared data with lumi_tokenizer.json "
            f"at {', '.join(str(c) for c in candidates)}; re-run `lumi data prepare` for its corpus and tokenizer"
        )

    def load_model_and_tokenizer(
        self,
        device: str | torch.device = "cpu",
        model_files: Sequence[str | Path] = (),
        ckpt: Path | None = None,
    ) -> tuple[LumiModel, Tokenizer]:
        model = self.load_model(device, model_files, ckpt)
        tokenizer = self.tokenizer()
        vocab = int(getattr(model.config, "vocab_size", -1))
        if tokenizer.vocab_size != vocab:
            raise LumiError(
                f"the tokenizer found for {str(self.path)!r} has {tokenizer.vocab_size} ids but the model was "
                f"trained with vocab_size {vocab}; the prepared data changed"
            )
        return model, tokenizer

    # -- writing (lumi train, rank 0) -------------------------------------------------------------
    def ensure_new(self) -> None:
        """Refuse to overwrite an existing, non-empty directory."""
        p = self.path
        if p.exists() and (not p.is_dir() or any(e.name != LOCK_NAME for e in p.iterdir())):
            raise LumiError(
                f"run directory {str(p)!r} already exists; continue it with "
                f"`lumi train --resume {p}` or choose another --out / --name"
            )

    def create(self) -> None:
        """Make the directory and prove it is writable before anything else is written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise LumiError(
                f"cannot write to run directory {str(self.path)!r}: {write_error_text(e)}; choose a writable --out"
            ) from None

    def lock(self) -> DirectoryLock:
        """The directory's writer lock (see lumi.lock); then leftovers of killed writers are removed."""
        from lumi.lock import acquire_directory_lock

        lock = acquire_directory_lock(self.path, "run directory")
        clean_stale_temps(self.path, holding_lock=True)
        return lock

    def write_config(self, config: TrainConfig) -> None:
        write_text_atomic(self.config_path, config.to_yaml())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def write_env(self, env: dict[str, Any]) -> None:
        write_json(self.env_path, env)

    def env(self) -> dict[str, Any]:
        """env.json, or {} when absent or unreadable (it is informative only)."""
        return _json_object(self.env_path) or {}

    def mark(self, status: str, error: str, only_if: tuple[str | None, ...] | None = None) -> None:
        """Record ``status`` and ``error`` in summary.json (created if missing). With ``only_if``, only a
        run whose current status is one of those is changed."""
        if only_if is not None and self.status() not in only_if:
            return
        summary = self.summary() or {"run_dir": str(self.path)}
        summary.update(status=status, error=error)
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_summary(summary)

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only rows up to ``last_step`` (the checkpoint a resume starts from), rewritten atomically. A
        final-eval row goes too: the resumed session evaluates again and writes the only final row."""
        rows = [r for r in self.metrics() if int(r.get("step", 0)) <= last_step and not r.get("final")]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def metrics_log(self, enabled: bool = True) -> MetricsLog:
        return MetricsLog(self.metrics_path, enabled)

    def modified_time(self) -> float | None:
        """When the run last recorded something: summary.json's modification time, else the directory's
        (seconds since the epoch); None when neither can be read."""
        for p in (self.summary_path, self.path):
            try:
                return p.stat().st_mtime
            except OSError:
                continue
        return None

    def wandb_run_id(self) -> str:
        """The run's wandb id: created once (rank 0) and kept in loggers.json, so every session of the run,
        resumed ones included, logs to the same wandb run."""
        saved = _json_object(self.loggers_path) or {}
        run_id = saved.get("wandb_id")
        if isinstance(run_id, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
            return run_id
        run_id = uuid.uuid4().hex[:16]  # wandb ids: letters and digits, unique within the project
        write_json(self.loggers_path, {**saved, "wandb_id": run_id})
        return run_id


class MetricsLog:
    """Append-only metrics.jsonl (one JSON object per line, flushed)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self._f = open(path, "a", encoding="utf-8") if enabled else None

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


def _json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is absent, unreadable or not an object (the run's records are
    rewritten atomically, but a directory may predate a file or hold one from a killed older version)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# Temp names our writers use, each ending in the writer's PID: checkpoints/.tmp-latest-PID (a directory),
# .NAME.tmpPID (lumi.io.write_text_atomic), .write-test-PID (Run.create).
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


def training_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``config_differences`` of two TrainConfig dicts without LOGGING_KEYS: what changes the training."""
    skip = tuple(f"{k}:" for k in LOGGING_KEYS)
    return [d for d in config_differences(a, b) if not d.startswith(skip)]


def load_run_model(
    path: str | Path, device: str | torch.device = "cpu", model_files: Sequence[str | Path] = ()
) -> tuple[LumiModel, Tokenizer]:
    """(model, tokenizer) of a run directory, one of its checkpoint directories, or a model.safetensors.

    ``model_files``: the plugin files of a run of a plugin architecture, named by the caller; the files the
    run directory lists are checked against them (path or content hash), never imported."""
    run, ckpt = Run.locate(path)
    return run.load_model_and_tokenizer(device, model_files, ckpt)

"""Atomic checkpoints: ``checkpoints/latest/`` = model.safetensors, model_config.json, optimizer.pt, state.json.

Writing: everything goes into a fresh temporary directory first (state.json last, all files
fsynced); then ``latest`` is renamed to ``previous``, the temporary directory to ``latest``, and
``previous`` is deleted. A crash at any point leaves either the old or the new checkpoint complete,
and ``load`` falls back to ``previous`` if ``latest`` is missing. A full disk or unwritable
directory raises a one-line LumiError ("the disk is full" for ENOSPC, also when safetensors or torch.save
wrap it in their own exceptions), removes the temporary directory and leaves the last good checkpoint
untouched. A temporary directory left by a SIGKILL is removed when the run is next opened
(``lumi.run.clean_stale_temps``).

Loading never unpickles arbitrary objects: weights come from safetensors, the optimizer state via
``torch.load(weights_only=True)``, everything else from JSON.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lumi.errors import LumiError, write_error_text
from lumi.models.base import LumiModel

WEIGHTS, MODEL_CONFIG = "model.safetensors", "model_config.json"
FILES = (WEIGHTS, MODEL_CONFIG, "optimizer.pt", "state.json")


def save_model_files(directory: Path, model: LumiModel) -> None:
    """The weights (safetensors) and the resolved model config: what rebuilds the model anywhere."""
    from safetensors.torch import save_model

    save_model(model, str(directory / WEIGHTS))
    _write_text(directory / MODEL_CONFIG, json.dumps(asdict(model.config), indent=2, default=str))


def load_model_config(directory: Path) -> dict[str, Any]:
    """model_config.json of a checkpoint or export directory; one-line LumiError when missing or broken."""
    from lumi.io import read_json

    values = read_json(Path(directory) / MODEL_CONFIG, "model config")
    if not isinstance(values, dict):
        raise LumiError(f"model config {Path(directory) / MODEL_CONFIG} must be a JSON object")
    return values


def save_checkpoint(
    ckpt_root: Path, model: LumiModel, optimizer_state: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write a complete checkpoint to ``ckpt_root/latest`` atomically; returns that path."""
    ckpt_root = Path(ckpt_root)
    tmp = ckpt_root / f".tmp-latest-{os.getpid()}"
    latest, previous = ckpt_root / "latest", ckpt_root / "previous"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_model_files(tmp, model)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        _write_text(tmp / "state.json", json.dumps(state, indent=1))  # last: marks the directory complete
        for name in FILES:
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if latest.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(latest, previous)
        os.replace(tmp, latest)
        _fsync_dir(ckpt_root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written directory holding the space
        if not _is_write_error(e):
            raise
        kept = _complete_dir(ckpt_root)
        where = f"the last good checkpoint at {kept} is intact" if kept else "no earlier checkpoint exists"
        filename = getattr(e, "filename", None)
        raise LumiError(
            f"could not write a checkpoint in {ckpt_root}: {write_error_text(e, ckpt_root)}"
            f"{' (' + str(filename) + ')' if filename else ''}; {where}. "
            f"Free disk space or make the run directory writable, then resume with --resume"
        ) from None
    shutil.rmtree(previous, ignore_errors=True)
    return latest


def _is_write_error(e: BaseException) -> bool:
    """OSError, or the wrappers torch.save (RuntimeError) and safetensors (SafetensorError) put around one."""
    if isinstance(e, (OSError, RuntimeError)):
        return True
    return type(e).__name__ == "SafetensorError"


def _complete_dir(ckpt_root: Path) -> Path | None:
    for name in ("latest", "previous"):
        d = ckpt_root / name
        if (d / "state.json").is_file() and all((d / f).is_file() for f in FILES):
            return d
    return None


def find_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint directory under ``ckpt_root`` (latest, else previous), or None."""
    return _complete_dir(Path(ckpt_root))


def load_state(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise LumiError(f"checkpoint state {ckpt_dir / 'state.json'} is unreadable: {e}") from None


def load_model_weights(ckpt_dir: Path, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
    from safetensors.torch import load_model

    path = ckpt_dir / WEIGHTS
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except OSError as e:
        raise LumiError(f"checkpoint weights {path} are unreadable: {write_error_text(e)}") from None
    except RuntimeError as e:
        raise LumiError(f"checkpoint weights {path} do not match the model: {_first_line(e)}") from None
    except Exception as e:
        raise LumiError(
            f"checkpoint weights {path} are not a valid safetensors file ({_first_line(e)}); Lumi "
            f"loads weights only from safetensors and never unpickles them"
        ) from None


def load_optimizer_state(ckpt_dir: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = ckpt_dir / "optimizer.pt"
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            return torch.load(
                path, map_location=device, weights_only=True
            )  # never unpickle arbitrary objects
    except pickle.UnpicklingError:
        # torch's own advice is many lines and suggests weights_only=False, which would execute the file.
        raise LumiError(
            f"optimizer state {path} holds objects other than tensors and plain containers; refused "
            f"(Lumi loads it with torch.load(weights_only=True) and never runs code from a checkpoint)"
        ) from None
    except OSError as e:
        raise LumiError(f"optimizer state {path} is unreadable: {write_error_text(e)}") from None
    except Exception as e:
        raise LumiError(
            f"optimizer state {path} is unreadable: {type(e).__name__}: {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- RNG state <-> JSON ----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Torch CPU (and CUDA) generator states of this process, JSON-serialisable."""
    out: dict[str, Any] = {"torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


# -- fs helpers ------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

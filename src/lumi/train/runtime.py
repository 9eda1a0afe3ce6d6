"""Where a run executes: device, precision, CPU threads, and the prepared data it reads."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lumi.errors import LumiError
from lumi.train.config import TrainConfig
from lumi.train.distributed import DistInfo, barrier

if TYPE_CHECKING:
    from lumi.data.prepare import PreparedData


def resolve_device(pref: str, info: DistInfo) -> torch.device:
    """``train.device`` (auto | cpu | cuda | cuda:N | mps) as a device; LumiError when it is not here."""
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LumiError(f"device {pref!r} but CUDA is not available here; use cpu or auto")
        return torch.device("cuda", info.local_rank) if pref == "cuda" else torch.device(pref)
    if pref == "mps" and not torch.backends.mps.is_available():
        raise LumiError("device 'mps' but MPS is not available here; use cpu or auto")
    return torch.device(pref)


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """None = plain float32; bf16 autocast on CUDA by default (bf16 matmuls are ~100x slower on CPU)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None (plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int | None, info: DistInfo) -> None:
    if threads:
        torch.set_num_threads(threads)
    elif info.local_world_size > 1:  # share the cores between the processes on this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))


def load_data(config: TrainConfig, progress: bool, info: DistInfo) -> PreparedData:
    """The run's PreparedData: an explicit data.dir, or corpus + tokenizer prepared (or reused) in $LUMI_HOME."""
    from lumi.data.prepare import load_prepared, prepare

    d = config.data
    if d.dir:
        data = load_prepared(Path(d.dir))
    elif info.enabled and not info.is_main:
        barrier(info)  # rank 0 prepares; the others then reuse its output
        data = prepare(d.corpus, d.tokenizer, progress=False, allow_lossy=d.allow_lossy)
    else:
        data = prepare(d.corpus, d.tokenizer, progress=progress, allow_lossy=d.allow_lossy)
        barrier(info)
    # Corruption that stays inside the vocabulary (the id check on open cannot see it) would train
    # silently: hash every shard once per session (~0.3 s per 100 MB of tokens).
    data.verify_hashes()
    if not data.lossless and not d.allow_lossy:
        raise LumiError(
            f"{data.directory}: its tokenizer {data.tokenizer.spec} is lossy (prepared with --allow-lossy); "
            "set data.allow_lossy=true to train on it (BPB is then over the original bytes)"
        )
    return data

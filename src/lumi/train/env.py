"""Where a run ran (env.json) and how fast the hardware can multiply matrices (for MFU).

The matmul peak is measured once per (device, dtype, thread count) by timing large square
matmuls, and cached in ``$LUMI_HOME/peak_flops.json``; ``train.peak_flops`` overrides it.
MFU = achieved model FLOPs per second / (peak per process x processes).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lumi.errors import LumiError
from lumi.io import write_json


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"cpu: {name}"
    return device.type


def git_revision() -> str | None:
    """The git commit of the Lumi source tree, when it is a checkout (read-only query)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def env_info(device: torch.device, world_size: int = 1, precision: str = "fp32") -> dict[str, Any]:
    import numpy

    from lumi import __version__

    info: dict[str, Any] = {
        "lumi": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "world_size": world_size,
        "git_rev": git_revision(),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best observed FLOP/s of a large square matmul on ``device`` in ``dtype``."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm up kernels and caches
        a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 5 * 2 * n**3 / dt)
    return best


def peak_flops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s per process, where it came from); measured once and cached in $LUMI_HOME.

    On CPU a probe taken while other work loaded the machine (1-minute load average above half the
    cores) would understate the peak, so such an entry is re-measured on later runs, keeping the best.
    """
    if override:
        return float(override), "train.peak_flops"
    from lumi.data.paths import lumi_home

    key = f"{device_name(device)}|{str(dtype).replace('torch.', '')}|threads={torch.get_num_threads()}"
    path = lumi_home() / "peak_flops.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("clean", False):
        return float(entry["flops"]), f"cached matmul probe ({path})"
    busy = _machine_busy() if device.type == "cpu" else False
    value = measure_peak_flops(device, dtype)
    if isinstance(entry, dict):
        value = max(value, float(entry.get("flops", 0.0)))
    cache[key] = {"flops": value, "clean": not busy, "measured_at": time.time()}
    try:  # best effort: an unwritable cache only costs a re-measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
    except (OSError, LumiError):
        pass
    return value, "matmul probe" + (" (machine busy: will re-measure next run)" if busy else "")


def _machine_busy() -> bool:
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except OSError:
        return False

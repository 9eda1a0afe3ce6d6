"""Measuring: figures over rounds (median, best, spread), device synchronisation and peak memory.

A figure is one number per round. Rounds of all subjects alternate, so a burst of machine noise hits
every subject alike; the median is the headline, the best is what the machine can do, and the spread
((max - min) / median) says how much to trust a ratio of two medians.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Figure:
    """One measured quantity over rounds. ``higher_is_better``: rates (tokens/s) vs times and bytes."""

    unit: str
    higher_is_better: bool = True
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def best(self) -> float:
        if not self.values:
            return math.nan
        return max(self.values) if self.higher_is_better else min(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / median: 0.05 means the rounds lay within 5% of each other."""
        med = self.median
        return (max(self.values) - min(self.values)) / med if self.values and med else math.nan

    def as_dict(self) -> dict[str, float | str | list[float] | None]:
        """JSON-ready; a figure without rounds (every round was lost to noise) has null statistics."""
        return {
            "median": _finite(self.median),
            "best": _finite(self.best),
            "spread": _finite(self.spread),
            "unit": self.unit,
            "rounds": list(self.values),
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class PeakMemory:
    """Peak memory growth over a block: CUDA max allocated; CPU resident set (VmHWM after a reset).

    On Linux writing 5 to /proc/self/clear_refs resets the high-water mark of the resident set, so the
    peak of each block is its own. Where that is not possible the process-lifetime peak (getrusage) is
    used, which can only understate a later block's growth; ``method`` says which one was used.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else _cpu_method()
        self.growth_bytes = 0

    @contextmanager
    def track(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.growth_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - start)
            return
        start = _rss_bytes()
        if self.method == "VmHWM":
            _reset_peak_rss()
        yield self
        self.growth_bytes = max(0, _peak_rss_bytes(self.method) - start)


def _cpu_method() -> str:
    return "VmHWM" if _reset_peak_rss() else "ru_maxrss"


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return _peak_rss_bytes("ru_maxrss")


def _peak_rss_bytes(method: str) -> int:
    if method == "VmHWM":
        kib = _status_kib("VmHWM")
        if kib is not None:
            return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux

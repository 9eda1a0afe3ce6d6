"""The one bits-per-byte implementation. Every number Lumi labels "bpb" comes from here.

BPB = (sum of next-unit negative log-likelihoods, in nats) / (ln 2 * UTF-8 bytes those units cover).
Sums are taken in float64 so long evaluations do not lose precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class BpbAccumulator:
    """Accumulates NLL (nats) and byte counts over many batches, in float64."""

    nll_nats: float = 0.0
    bytes: int = 0
    targets: int = 0

    def add(self, nll: torch.Tensor | np.ndarray, target_bytes: torch.Tensor | np.ndarray) -> None:
        """Add per-target NLLs (nats) and the UTF-8 byte count each target covers."""
        nll64 = _as_float64(nll)
        nbytes = _as_int64(target_bytes)
        if nll64.shape != nbytes.shape:
            raise ValueError(f"nll shape {tuple(nll64.shape)} != byte-count shape {tuple(nbytes.shape)}")
        self.nll_nats += float(nll64.sum())
        self.bytes += int(nbytes.sum())
        self.targets += int(nll64.size)

    def merge(self, other: BpbAccumulator) -> None:
        self.nll_nats += other.nll_nats
        self.bytes += other.bytes
        self.targets += other.targets

    @property
    def bpb(self) -> float:
        return bits_per_byte(self.nll_nats, self.bytes)

    @property
    def nats_per_target(self) -> float:
        return self.nll_nats / self.targets if self.targets else float("nan")


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
    """BPB from a total NLL in nats and the number of UTF-8 bytes it covers."""
    if total_bytes <= 0:
        raise ValueError("bits_per_byte needs a positive byte count (no bytes were scored)")
    return float(total_nll_nats) / (math.log(2.0) * float(total_bytes))


def bpb(nll: torch.Tensor | np.ndarray, target_bytes: torch.Tensor | np.ndarray) -> float:
    """BPB of per-target NLLs (nats) with the byte count each target covers."""
    acc = BpbAccumulator()
    acc.add(nll, target_bytes)
    return acc.bpb


def _as_float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _as_int64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.int64).numpy().reshape(-1)
    return np.asarray(x, dtype=np.int64).reshape(-1)

"""Causality audit of given weights: before `lumi train` trains a model, and on its final checkpoint.

`lumi check` proves the architecture on small instances; the audit probes *this run's* model at the
lengths it trains and evaluates at, with the weights it really has: the initialisation plus a
randomised copy before training (a zero-initialised leak is caught before any compute is spent), and
the trained weights afterwards (whatever training opened). Every probe and condition of
`lumi.check.probes` runs — perturbation in eval mode without autograd, with a batch of cuts and with
single sequences, and in train mode with autograd; the exact-zero gradient in both modes; batch
independence — with fewer cuts than `lumi check`, so the audit stays a few percent of a short run.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lumi.check import probes
from lumi.check.context import forward_logits
from lumi.check.probes import Condition, ProbeResult

AUDIT_TOKENS = 1 << 13  # tokens per (length, condition): 64 cuts at T=128 (about 13 training steps in all)
PREFLIGHT_TOKENS = 1 << 12  # before training, two weight sets: half the cuts each
ROWS = 32
SINGLE_CUTS = 2


@dataclass
class AuditResult:
    passed: bool
    detail: str  # one line: what was probed, or the first leak with its length and position
    seconds: float
    lengths: list[int]
    weights: list[str]
    probes: int  # cuts and batch pairs probed, over every condition

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plan(T: int, vocab_size: int, seed: int, tokens: int) -> list[tuple[str, str, bool, int, list[int]]]:
    """(probe, mode, autograd, rows, cuts) for one length."""
    cuts = probes.select_cuts(T, max(1, tokens // T), seed)
    single = probes.select_cuts(T, SINGLE_CUTS, seed + 1) if T - 1 > SINGLE_CUTS else cuts
    rows = max(1, min(ROWS, len(cuts), probes.rows_per_pass(T, vocab_size)))
    return [
        ("perturbation", "eval", False, rows, cuts),
        ("perturbation", "eval", False, 1, single),
        ("perturbation", "train", True, rows, cuts),
        ("gradient", "train", True, rows, cuts),
        ("gradient", "eval", True, rows, cuts),
        ("batch", "eval", False, probes.BATCH_ROWS, []),
        ("batch", "train", True, probes.BATCH_ROWS, []),
    ]


def audit_causality(weights: dict[str, nn.Module], vocab_size: int, lengths: list[int],
                    device: torch.device | str = "cpu", seed: int = 0, tokens: int = AUDIT_TOKENS) -> AuditResult:
    """Probe each model of ``weights`` (name -> model, e.g. {"trained": model}) at each length.

    Models are used in place (mode and autograd are restored; weights are never changed); the
    caller's RNG state is restored. Stops at the first leak. ``tokens`` bounds the cuts per length and
    condition (tokens // T of them, block boundaries first).
    """
    device = torch.device(device)
    start = time.perf_counter()
    lengths = sorted({int(T) for T in lengths if int(T) >= 2})
    n_probed = 0

    def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return forward_logits(model, x, vocab_size)

    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        for name, model in weights.items():
            for T in lengths:
                for kind, mode, grad, rows, cuts in _plan(T, vocab_size, seed + T, tokens):
                    cond = Condition(name, mode, grad, rows)
                    result = _run(kind, model, forward, T, vocab_size, cuts, cond, seed + T, device)
                    n_probed += result.probed
                    if result.first is not None:
                        what = "cuts" if kind != "batch" else "probes"
                        return AuditResult(False, f"{result.first.message()}; {result.leaking} of {result.probed} "
                                           f"{what} leak", time.perf_counter() - start, lengths, list(weights),
                                           n_probed)
    names = " and ".join(weights)
    lens = ", ".join(str(T) for T in lengths)
    detail = (f"no leak in {n_probed} probes of the {names} weights at T={lens}: perturbation (eval without "
              f"autograd, batched and single; train with autograd), exact-zero gradient (train and eval), "
              f"batch independence")
    return AuditResult(True, detail, time.perf_counter() - start, lengths, list(weights), n_probed)


def _run(kind: str, model: nn.Module, forward: Any, T: int, vocab_size: int, cuts: list[int], cond: Condition,
         seed: int, device: torch.device) -> ProbeResult:
    if kind == "perturbation":
        return probes.probe_perturbation(model, forward, T, vocab_size, cuts, cond, seed, device)
    if kind == "gradient":
        return probes.probe_gradient(model, forward, T, vocab_size, cuts, cond, seed, device)
    return probes.probe_batch(model, forward, T, vocab_size, cond, seed, device)


RANDOMISED_SCALES = (1.0, 0.25, 0.0625)


def randomised_copy(model: nn.Module, vocab_size: int, seq_len: int, seed: int = 0) -> nn.Module | None:
    """A copy of ``model`` with every parameter re-drawn so every path is active (zero-init gates open),
    at the largest scale whose logits are finite; None when none is."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = probes.random_tokens(1, seq_len, vocab_size, seed).to(device)
    for scale in RANDOMISED_SCALES:
        other = copy.deepcopy(model)
        probes.randomise_parameters(other, seed, scale)
        other.eval()
        with torch.no_grad():
            if torch.isfinite(forward_logits(other, x, vocab_size)).all():
                return other
    return None

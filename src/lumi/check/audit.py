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

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lumi.check import probes
from lumi.check.context import forward_logits
from lumi.check.probes import Condition

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
    plan = probes.plan_cuts(T, vocab_size, tokens, ROWS, SINGLE_CUTS, seed)
    return [
        ("perturbation", "eval", False, plan.rows, plan.cuts),
        ("perturbation", "eval", False, 1, plan.single),
        ("perturbation", "train", True, plan.rows, plan.cuts),
        ("gradient", "train", True, plan.rows, plan.cuts),
        ("gradient", "eval", True, plan.rows, plan.cuts),
        ("batch", "eval", False, probes.BATCH_ROWS, []),
        ("batch", "train", True, probes.BATCH_ROWS, []),
    ]


def audit_causality(
    weights: dict[str, nn.Module],
    vocab_size: int,
    lengths: list[int],
    device: torch.device | str = "cpu",
    seed: int = 0,
    tokens: int = AUDIT_TOKENS,
) -> AuditResult:
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
                    result = probes.run_probe(
                        kind, model, forward, T, vocab_size, cuts, cond, seed + T, device
                    )
                    n_probed += result.probed
                    if result.first is not None:
                        what = "cuts" if kind != "batch" else "probes"
                        return AuditResult(
                            False,
                            f"{result.first.message()}; {result.leaking} of {result.probed} {what} leak",
                            time.perf_counter() - start,
                            lengths,
                            list(weights),
                            n_probed,
                        )
    names = " and ".join(weights)
    lens = ", ".join(str(T) for T in lengths)
    detail = (
        f"no leak in {n_probed} probes of the {names} weights at T={lens}: perturbation (eval without "
        f"autograd, batched and single; train with autograd), exact-zero gradient (train and eval), "
        f"batch independence"
    )
    return AuditResult(True, detail, time.perf_counter() - start, lengths, list(weights), n_probed)


def randomised_copy(model: nn.Module, vocab_size: int, seq_len: int, seed: int = 0) -> nn.Module | None:
    """A copy of ``model`` with every parameter re-drawn so every path is active (zero-init gates open),
    at the largest scale whose logits are finite; None when none is."""
    return probes.randomised_copy(
        model, lambda m, x: forward_logits(m, x, vocab_size), vocab_size, seq_len, seed
    )

"""Shared state of one `lumi check` run: how to build the model, seeds, sizes, random tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lumi.models.base import LumiModel


class ContractViolation(Exception):
    """The model broke the forward contract (wrong output type or shape)."""


# Default causality probe lengths beyond the short ones: a long sequence, and the model's declared
# maximum context up to this cap (a forward at a much longer length costs more than the whole check).
LONG_PROBE_LEN = 256
MAX_PROBE_LEN = 1024


@dataclass
class OverfitRun:
    """The overfit check's training on one batch; its trained model is also probed for leaks."""

    model: LumiModel
    lr: float
    steps: int  # the maximum
    used: int  # steps taken
    start_loss: float
    final_loss: float
    error: str | None = None  # a non-finite loss while training


@dataclass
class CheckContext:
    factory: Callable[[], LumiModel]
    label: str
    seq_len: int
    batch_size: int
    seed: int
    vocab_size: int
    max_len: int | None = None
    extra_lengths: tuple[int, ...] = ()  # causality probe lengths asked for on top of the defaults
    _overfit: OverfitRun | None = field(default=None, repr=False)

    def build(self, seed: int | None = None) -> LumiModel:
        """A freshly initialised model (every check gets its own, so training one leaves the rest alone)."""
        torch.manual_seed(self.seed if seed is None else seed)
        return self.factory()

    def tokens(self, batch: int, length: int, stream: int) -> torch.Tensor:
        """Uniform random token ids; ``stream`` picks an independent, reproducible draw."""
        g = torch.Generator().manual_seed(self.seed * 1000 + stream)
        return torch.randint(0, self.vocab_size, (batch, length), generator=g)

    def probe_lengths(self) -> tuple[list[int], list[str]]:
        """Causality probe lengths and notes on the ones skipped.

        T and T+3 (patch/chunk sizes 2..8 divide at most one of them, so boundaries fall differently),
        a long length (LONG_PROBE_LEN) where leaks that start late show up, the model's maximum context
        (capped at MAX_PROBE_LEN), and any lengths asked for. Lengths above the model's declared maximum
        are skipped with a note.
        """
        wanted = [self.seq_len, self.seq_len + 3, LONG_PROBE_LEN, *self.extra_lengths]
        if self.max_len is not None:
            wanted.append(min(self.max_len, MAX_PROBE_LEN))
        lengths, skipped = [], []
        for T in sorted(set(wanted)):
            if self.max_len is not None and self.max_len < T:
                if T in self.extra_lengths:
                    skipped.append(f"T={T} (above the model's maximum context {self.max_len})")
                elif self.seq_len + 3 == T:
                    lengths.append(max(2, self.seq_len - 3))
                continue
            lengths.append(T)
        return sorted(set(lengths)), skipped

    def overfit(self) -> OverfitRun:
        """Train a fresh model on one batch (once per context; the overfit check and the trained-weights
        causality probes share it)."""
        if self._overfit is None:
            from lumi.check.training import train_on_one_batch

            self._overfit = train_on_one_batch(self)
        return self._overfit


def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """model(tokens), insisting on the contract: a float tensor [B, T, V]."""
    out = model(tokens)
    if not isinstance(out, torch.Tensor):
        raise ContractViolation(f"forward must return a logits tensor [B, T, V], got {type(out).__name__}")
    want = (*tokens.shape, vocab_size)
    if tuple(out.shape) != want:
        raise ContractViolation(
            f"forward returned logits of shape {list(out.shape)}, expected [B, T, V] = {list(want)} "
            "(one prediction per input position)"
        )
    if not out.is_floating_point():
        raise ContractViolation(f"logits must be floating point, got {out.dtype}")
    return out


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats): logits at t predict token t+1."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), tokens[:, 1:].reshape(-1))


def aux_loss_sum(model: LumiModel) -> torch.Tensor | float:
    aux = model.aux_losses() or {}
    total: torch.Tensor | float = 0.0
    for v in aux.values():
        total = total + v
    return total

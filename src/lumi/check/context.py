"""Shared state of one `lumi check` run: how to build the model, seeds, sizes, random tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lumi.models.base import LumiModel

# Config fields that cap the context length a model accepts (learned position tables etc.).
_MAX_LEN_FIELDS = ("max_seq_len", "block_size", "context_length", "max_position_embeddings")


class ContractViolation(Exception):
    """The model broke the forward contract (wrong output type or shape)."""


@dataclass
class CheckContext:
    factory: Callable[[], LumiModel]
    label: str
    seq_len: int
    batch_size: int
    seed: int
    vocab_size: int
    max_len: int | None = None

    def build(self, seed: int | None = None) -> LumiModel:
        """A freshly initialised model (every check gets its own, so training one leaves the rest alone)."""
        torch.manual_seed(self.seed if seed is None else seed)
        return self.factory()

    def tokens(self, batch: int, length: int, stream: int) -> torch.Tensor:
        """Uniform random token ids; ``stream`` picks an independent, reproducible draw."""
        g = torch.Generator().manual_seed(self.seed * 1000 + stream)
        return torch.randint(0, self.vocab_size, (batch, length), generator=g)

    def causal_lengths(self) -> list[int]:
        """T and T+3: patch/chunk sizes 2..8 divide at most one of them, so boundaries fall differently."""
        lengths = [self.seq_len, self.seq_len + 3]
        if self.max_len is not None and lengths[1] > self.max_len:
            lengths[1] = max(2, self.seq_len - 3)
        return sorted(set(lengths))


def max_len_of(model: LumiModel) -> int | None:
    cfg = getattr(model, "config", None)
    for name in _MAX_LEN_FIELDS:
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def forward_logits(model: LumiModel, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
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

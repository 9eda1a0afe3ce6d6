"""The model contract every Lumi architecture implements.

A model is a plain single-device ``nn.Module`` built from a config dataclass:

- ``forward(tokens[B, T]) -> logits[B, T, V]``; logits at position t depend only on
  tokens 0..t. Models that insert extra positions internally (pauses, patches) still
  return exactly one prediction per input position.
- ``aux_losses()`` returns extra training losses produced by the last forward
  (MoE load balancing, ACT ponder cost); the trainer adds them to the cross-entropy.
- ``stats()`` returns diagnostics of the last forward (mean ACT steps, mean patch
  length, dropped tokens ...) that the trainer logs.
- ``param_counts()`` gives total and non-embedding parameters; ``flops_per_token(T)``
  an analytic estimate of *training* FLOPs (forward + backward) per token at sequence
  length T. ``lumi check`` compares it with a measured count.
- Optional, declared on the class: ``supports_cache`` (then ``new_cache()`` and
  ``forward(tokens, cache=...)`` decode incrementally), ``max_context()`` (the longest
  input ``forward`` accepts), and the overfit-check settings.

Parallelism, compilation, precision and checkpointing are applied from outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic

import torch
from torch import nn
from typing_extensions import TypeVar


@dataclass
class ModelConfig:
    """Fields every model config has. Subclasses add their own (flat, litgpt-style)."""

    vocab_size: int = 256

    def validate(self) -> None:
        """Raise ``LumiError`` naming the field and the accepted values when invalid."""
        from lumi.errors import LumiError

        if self.vocab_size < 2:
            raise LumiError(f"vocab_size must be >= 2, got {self.vocab_size}")


def check_choice(label: str, value: object, choices: Sequence[str]) -> None:
    """Raise ``LumiError("<label> must be one of <choices>, got <value>")`` unless ``value`` is one."""
    from lumi.errors import LumiError

    if value not in choices:
        raise LumiError(f"{label} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class ParamCounts:
    total: int
    non_embedding: int
    # Parameters touched per token (MoE: only the routed experts). Equals total otherwise.
    active: int | None = None


# A model's config type: ``class Llama(LumiModel[LlamaConfig])`` types ``self.config`` as a LlamaConfig.
# A bare ``LumiModel`` (annotations, plugins) means ``LumiModel[ModelConfig]``.
ConfigT = TypeVar("ConfigT", bound=ModelConfig, default=ModelConfig)


class LumiModel(nn.Module, Generic[ConfigT]):
    """Base class: subclasses set ``config_class`` (the registry builds configs from it) and implement
    ``forward``."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    config: ConfigT
    # `lumi check`'s overfit check: Adam steps and lr for memorising one batch. A model that needs a
    # larger step (several stacks, no embedding) sets these on its class.
    check_overfit_steps: ClassVar[int] = 40
    check_overfit_lr: ClassVar[float] = 3e-3
    # Incremental decoding: a model that sets this implements new_cache() and forward(tokens, cache=...),
    # and `lumi generate` decodes one token per step through the cache.
    supports_cache: ClassVar[bool] = False

    def __init__(self, config: ConfigT) -> None:
        super().__init__()
        self.config = config

    # -- the contract ---------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Extra losses from the most recent forward, added to the LM loss in training."""
        return {}

    def stats(self) -> dict[str, float]:
        """Diagnostics of the most recent forward (logged, never used as a loss)."""
        return {}

    def embedding_params(self) -> int:
        """Parameters in token embeddings / the output head (not counted as non-embedding).

        Default: every ``nn.Embedding`` plus an untied ``lm_head`` if the model has one.
        """
        seen: set[int] = set()
        n = 0
        for m in self.modules():
            if isinstance(m, nn.Embedding) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                n += m.weight.numel()
        head = getattr(self, "lm_head", None)
        if isinstance(head, nn.Linear) and id(head.weight) not in seen:
            n += head.weight.numel()
        return n

    def param_counts(self) -> ParamCounts:
        total = sum(p.numel() for p in self.parameters())
        return ParamCounts(total=total, non_embedding=total - self.embedding_params(), active=total)

    def max_context(self) -> int | None:
        """The longest sequence ``forward`` accepts, or None when any length works (RoPE, recurrences).

        A model with a learned position table overrides this. ``lumi check`` probes causality up to
        this length and skips longer probes with a note; ``lumi generate`` keeps a sliding window of it.
        """
        return None

    def new_cache(self) -> Any:
        """A fresh decoding cache for ``forward(tokens, cache=...)`` (models with ``supports_cache``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support incremental decoding")

    def flops_per_token(self, seq_len: int) -> float:  # pragma: no cover - abstract
        """Analytic training FLOPs (forward + backward = 3x forward) per token."""
        raise NotImplementedError

"""`spacebyte`: byte Transformer whose wide global blocks run only at word boundaries (SpaceByte).

Source: Slagle, "SpaceByte: Towards Deleting Tokenization from Large Language Modeling" (2024),
kjslag/spacebyte. Local byte blocks -> global blocks (width d_global) run only at boundary positions
(a spacelike byte after a non-spacelike one, and at most ``max_patch`` positions apart) -> the
remaining local blocks -> head. ``LocalGlobalModel`` holds the machinery that `bltpatch` reuses.

Causality: the global blocks read the local stream at boundary s (bytes 0..s) and add their output
back at s, so the prediction at t uses global states of boundaries s <= t only; which boundaries run
globally is a running budget that depends on positions <= t only, not on T. Every position is
predicted (SpaceByte's "ignored fraction" is left out). Details: docs/architectures/spacebyte.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import TypeVar

from lumi.errors import LumiError
from lumi.models.base import LumiModel, check_choice
from lumi.models.byte_utils import (
    ByteModelConfig,
    HashNgramEmbedding,
    block_forward_flops,
    block_params,
    boundary_stats,
    force_max_patch,
    gather_index,
    gather_rows,
    global_capacity,
    make_windowed,
    ngram_params,
    running_budget,
    scatter_add_rows,
    spacelike_boundaries,
)
from lumi.models.layers import RMSNorm, init_linear_weights, scale_residual_projections
from lumi.models.llama import Block, LlamaConfig
from lumi.models.registry import register

GLOBAL_MERGES = ("delta", "output")


@dataclass
class SpaceByteConfig(ByteModelConfig):
    d_local: int = 32
    n_local_heads: int = 1
    n_local_before: int = 1
    n_local_after: int = 1
    local_window: int | None = None  # None: full causal attention in the local blocks
    d_global: int = 64
    n_global_heads: int = 2
    n_global_layers: int = 2
    max_patch: int = 16
    global_patch_len: int = 4
    global_merge: str = "delta"

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < 256:
            raise LumiError(
                f"vocab_size must be >= 256 for a byte model (the bytes tokenizer has 257: 256 byte "
                f"values + separator), got {self.vocab_size}"
            )
        for name in ("n_local_before", "n_local_after"):
            if getattr(self, name) < 0:
                raise LumiError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("n_global_layers", "max_patch", "global_patch_len"):
            if getattr(self, name) < 1:
                raise LumiError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_global < self.d_local:
            raise LumiError(
                f"d_global={self.d_global} must be >= d_local={self.d_local} (the local stream is "
                "zero-padded to d_global for the global blocks)"
            )
        if self.local_window is not None and self.local_window < 1:
            raise LumiError(
                f"local_window must be >= 1 or null (full causal attention), got {self.local_window}"
            )
        check_choice("global_merge", self.global_merge, GLOBAL_MERGES)
        self.local_config()
        self.global_config()

    def local_config(self) -> LlamaConfig:
        return self.stack_config(
            self.d_local,
            self.n_local_before + self.n_local_after,
            self.n_local_heads,
            "d_local/n_local_heads",
        )

    def global_config(self) -> LlamaConfig:
        return self.stack_config(
            self.d_global, self.n_global_layers, self.n_global_heads, "d_global/n_global_heads"
        )


# The config type of a LocalGlobalModel subclass: ``class BltPatch(LocalGlobalModel[BltPatchConfig])``.
SpaceByteConfigT = TypeVar("SpaceByteConfigT", bound=SpaceByteConfig, default=SpaceByteConfig)


class LocalGlobalModel(LumiModel[SpaceByteConfigT]):
    """Local blocks -> global blocks at boundary positions -> local blocks -> head.

    Subclasses define ``boundaries(tokens) -> bool [B, T]`` (position 0 must be True); this class
    adds the forced ``max_patch`` boundaries and the running global budget.
    """

    config_class = SpaceByteConfig
    check_overfit_lr = 1e-2

    def __init__(self, config: SpaceByteConfigT) -> None:
        super().__init__(config)
        c = config
        lc, gc = c.local_config(), c.global_config()
        self.embed = nn.Embedding(c.vocab_size, c.d_local)  # first: the token-fed embedding
        self.ngrams = HashNgramEmbedding(c.ngram_max, c.ngram_buckets, c.d_local) if c.ngram_max else None
        self.local_before = nn.ModuleList(
            [make_windowed(Block(lc), lc, c.local_window) for _ in range(c.n_local_before)]
        )
        self.global_blocks = nn.ModuleList([Block(gc) for _ in range(c.n_global_layers)])
        self.local_after = nn.ModuleList(
            [make_windowed(Block(lc), lc, c.local_window) for _ in range(c.n_local_after)]
        )
        self.norm = RMSNorm(c.d_local, c.norm_eps)
        self.lm_head = nn.Linear(c.d_local, c.vocab_size, bias=False)
        self._stats: dict[str, float] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)
        n_local = c.n_local_before + c.n_local_after
        if n_local:
            scale_residual_projections(self.local_before, n_local, std=c.init_std)
            scale_residual_projections(self.local_after, n_local, std=c.init_std)
        scale_residual_projections(self.global_blocks, c.n_global_layers, std=c.init_std)

    def boundaries(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def patch_boundaries(self, tokens: torch.Tensor) -> torch.Tensor:
        """The rule's boundaries plus the forced ones (every max_patch positions)."""
        with torch.no_grad():
            return force_max_patch(self.boundaries(tokens), self.config.max_patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        t = tokens.shape[1]
        x = self.embed(tokens)
        if self.ngrams is not None:
            x = x + self.ngrams(tokens)
        for block in self.local_before:
            x = block(x)

        b = self.patch_boundaries(tokens)
        kept = running_budget(b, c.global_patch_len)
        index = gather_index(kept, global_capacity(t, c.global_patch_len))
        g_in = F.pad(gather_rows(x, index), (c.d_global - c.d_local, 0))  # zeros first, local channels last
        g = g_in
        for block in self.global_blocks:
            g = block(g)
        update = g - g_in if c.global_merge == "delta" else g
        x = scatter_add_rows(x, index, update[..., -c.d_local :])

        for block in self.local_after:
            x = block(x)
        self._stats = boundary_stats(b, kept)
        return self.lm_head(self.norm(x))

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    # -- accounting -----------------------------------------------------------------------------
    def param_formula(self) -> dict[str, int]:
        c = self.config
        lc, gc = c.local_config(), c.global_config()
        embedding = 2 * c.vocab_size * c.d_local + ngram_params(c.ngram_max, c.ngram_buckets, c.d_local)
        total = (
            embedding
            + (c.n_local_before + c.n_local_after) * block_params(lc)
            + c.n_global_layers * block_params(gc)
            + c.d_local
        )
        return {"total": total, "non_embedding": total - embedding}

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        lc, gc = c.local_config(), c.global_config()
        cap = global_capacity(seq_len, c.global_patch_len)
        fwd = (
            (c.n_local_before + c.n_local_after) * block_forward_flops(lc, seq_len)
            + cap / seq_len * c.n_global_layers * block_forward_flops(gc, cap)
            + 2.0 * c.d_local * c.vocab_size
        )
        return 3.0 * fwd


# Also the stacks of bltpatch's presets.
SPACEBYTE_PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(
        d_local=32,
        n_local_heads=1,
        n_local_before=1,
        n_local_after=1,
        local_window=16,
        d_global=64,
        n_global_heads=2,
        n_global_layers=2,
        max_patch=8,
        global_patch_len=4,
    ),
    "micro": dict(
        d_local=64,
        n_local_heads=2,
        n_local_before=1,
        n_local_after=1,
        local_window=64,
        d_global=128,
        n_global_heads=2,
        n_global_layers=4,
        max_patch=16,
        global_patch_len=4,
    ),
    "tiny": dict(
        d_local=128,
        n_local_heads=2,
        n_local_before=2,
        n_local_after=2,
        local_window=128,
        d_global=256,
        n_global_heads=4,
        n_global_layers=6,
        max_patch=16,
        global_patch_len=4,
    ),
    "small": dict(
        d_local=256,
        n_local_heads=4,
        n_local_before=2,
        n_local_after=2,
        local_window=256,
        d_global=512,
        n_global_heads=8,
        n_global_layers=12,
        max_patch=16,
        global_patch_len=6,
    ),
}


@register(
    "spacebyte",
    description="SpaceByte: byte Transformer with wide global blocks only at word boundaries (spacelike bytes)",
    presets=SPACEBYTE_PRESETS,
    cpu_presets=("nano",),
)
class SpaceByte(LocalGlobalModel[SpaceByteConfig]):
    config_class = SpaceByteConfig

    def boundaries(self, tokens: torch.Tensor) -> torch.Tensor:
        return spacelike_boundaries(tokens)

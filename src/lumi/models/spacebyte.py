"""`spacebyte`: byte Transformer whose wide global blocks run only at word boundaries (SpaceByte).

Source: Slagle, "SpaceByte: Towards Deleting Tokenization from Large Language Modeling" (2024),
kjslag/spacebyte. Local blocks (width d_local, sliding-window or full causal attention over bytes)
-> global blocks (width d_global) run ONLY at boundary positions -> the remaining local blocks ->
head.

What is implemented:
- boundaries: position t is a boundary when byte t is spacelike (not an ASCII letter, digit or UTF-8
  continuation byte) and byte t-1 is not; position 0 and separator ids (>= 256) always; plus a
  forced boundary every ``max_patch`` positions after the last one (so no patch is longer);
- the local stream at the boundary positions is gathered, zero-padded on the left from d_local to
  d_global channels, run through causal llama blocks (RoPE over the gathered index), and the last
  d_local channels are added back in place at the same positions (``global_merge``);
- every position is a prediction and a target: nothing is ignored. SpaceByte ignores the targets
  beyond its global-context budget (its "ignored fraction") — that drops hard bytes from the BPB
  denominator. Here the gathered sequence is padded to a fixed length instead, and a boundary
  beyond the budget is simply not run through the global blocks (its bytes are still predicted, by
  the local blocks with the global states of the earlier boundaries). ``stats()`` reports the
  fraction of such boundaries and the mean patch length.

Alignment with Lumi (logits at t predict byte t+1): the global block at boundary position s reads the
local stream at s, built from bytes 0..s; its output is added at position s, and later local blocks
carry it to positions >= s by causal attention. The prediction at t therefore uses global states
of boundaries s <= t only, i.e. of patches whose first byte is at or before t: with the space rule
the global model runs on the space/punctuation byte that ENDS a word and helps predict the next word.
Whether s is a boundary depends on bytes s-1 and s (and, for forced boundaries and the budget, on
boundaries before s) — all <= t. Separator ids are boundaries, so a new document starts a patch.

Choices where the public description is open (config fields):
- ``global_patch_len`` (P_g): the gathered sequence always has C = ceil(T / P_g) slots (SpaceByte's
  T_global = T / P budget), so FLOPs are deterministic and matched comparisons fair. Which
  boundaries fill them is a running budget: by position t at most ceil((t+1) / P_g) boundaries are
  run globally, earliest first (byte_utils.running_budget). That decision depends on positions <= t
  only and not on T, so running on a prefix gives exactly the prefix's logits (tested) — a plain
  "first C boundaries" rule would make early outputs depend on the sequence length.
- ``global_merge``: "delta" (default) adds the global blocks' residual UPDATE (output - input) to
  the local stream, so with every position a boundary and d_global = d_local the model is exactly
  a llama with n_local_before + n_global_layers + n_local_after layers (tested); "output" adds the
  global OUTPUT itself (the literal reading of SpaceByte's "add back").
- ``local_window``: sliding attention window in bytes (None: full causal attention).
- ``ngram_max``: optional hashed n-gram embeddings (n = 2..ngram_max) added to the byte embedding.
- ``max_patch``: forced maximum patch length.
Not implemented: SpaceByte's global positional handling details, its learning-rate scheme, and
the "ignored fraction" (by design).

Parameters: V*d_local (embedding) + ngram tables + V*d_local (head) + (L_before + L_after) *
block(d_local) + L_g * block(d_global) + d_local (final norm).
FLOPs/token at length T (3 x forward), C = ceil(T / global_patch_len):
  forward = (L_before + L_after) (2 M_l + 4 T d_local) + (C / T) L_g (2 M_g + 4 C d_global)
            + 2 d_local V
(attention over the full T x T locally, also with a sliding window, and C x C globally — the
shared convention; a windowed kernel would do less work than counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel, ModelConfig
from lumi.models.byte_utils import (
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
    sub_config,
    validate_ngrams,
)
from lumi.models.layers import MLP_ACTIVATIONS, RMSNorm, init_linear_weights, scale_residual_projections
from lumi.models.llama import Block, LlamaConfig
from lumi.models.registry import register

GLOBAL_MERGES = ("delta", "output")


@dataclass
class SpaceByteConfig(ModelConfig):
    vocab_size: int = 257  # the bytes tokenizer: 256 byte values + the document separator (id 256)
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
    ngram_max: int = 0
    ngram_buckets: int = 1024
    mlp: str = "swiglu"
    ffn_mult: int = 4
    qk_norm: bool = False
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

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
        for name in ("n_global_layers", "max_patch", "global_patch_len", "ffn_mult"):
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
        if self.global_merge not in GLOBAL_MERGES:
            raise LumiError(
                f"global_merge must be one of {', '.join(GLOBAL_MERGES)}, got {self.global_merge!r}"
            )
        if self.mlp not in MLP_ACTIVATIONS:
            raise LumiError(f"mlp must be one of {', '.join(MLP_ACTIVATIONS)}, got {self.mlp!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LumiError(f"dropout must be in [0, 1), got {self.dropout}")
        validate_ngrams(self.ngram_max, self.ngram_buckets)
        self.local_config()
        self.global_config()

    def _stack(self, d: int, n_layers: int, n_heads: int, field: str) -> LlamaConfig:
        return sub_config(
            d_model=d,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp=self.mlp,
            ffn_mult=self.ffn_mult,
            qk_norm=self.qk_norm,
            norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
            dropout=self.dropout,
            init_std=self.init_std,
            field=field,
        )

    def local_config(self) -> LlamaConfig:
        return self._stack(
            self.d_local,
            self.n_local_before + self.n_local_after,
            self.n_local_heads,
            "d_local/n_local_heads",
        )

    def global_config(self) -> LlamaConfig:
        return self._stack(
            self.d_global, self.n_global_layers, self.n_global_heads, "d_global/n_global_heads"
        )


class LocalGlobalModel(LumiModel):
    """Local blocks -> global blocks at boundary positions -> local blocks -> head.

    Subclasses define ``boundaries(tokens) -> bool [B, T]`` (position 0 must be True); this class
    adds the forced ``max_patch`` boundaries and the running global budget.
    """

    config_class = SpaceByteConfig
    config: SpaceByteConfig
    check_overfit_lr = 1e-2

    def __init__(self, config: SpaceByteConfig) -> None:
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


@register(
    "spacebyte",
    description="SpaceByte: byte Transformer with wide global blocks only at word boundaries (spacelike bytes)",
    presets={
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
    },
    cpu_presets=("nano",),
)
class SpaceByte(LocalGlobalModel):
    config_class = SpaceByteConfig

    def boundaries(self, tokens: torch.Tensor) -> torch.Tensor:
        return spacelike_boundaries(tokens)

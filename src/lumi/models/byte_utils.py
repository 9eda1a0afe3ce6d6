"""Pieces shared by the byte-level patch models (`bytepatch`, `spacebyte`, `bltpatch`).

- the config fields they share (bytes vocabulary, n-grams, llama settings of their stacks);
- hashed byte n-gram embeddings (LayerCake / BLT style), causal: the n-gram at position i is the
  n bytes ENDING at i, so it never reads a later byte;
- patch-boundary rules on byte streams: SpaceByte's "spacelike" rule and a forced maximum patch
  length; ids >= 256 (the bytes tokenizer's document separator) always start a patch;
- gather / scatter of boundary positions into a fixed-capacity global sequence;
- a sliding-window variant of the shared attention layer;
- closed-form parameter counts of llama blocks (for the param-formula tests).

A boundary at position t means "the global model runs at position t": its output there is
built from bytes 0..t only and helps every prediction made at positions >= t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import ModelConfig, check_choice
from lumi.models.layers import MLP_ACTIVATIONS, Attention
from lumi.models.llama import LlamaConfig, block_attention, llama_layer_matmul_params

# Multipliers of the rolling polynomial hash, one per n (any odd constants > 256 would do).
_HASH_MULTIPLIERS = (
    1_000_003,
    998_244_353,
    1_000_000_007,
    754_974_721,
    167_772_161,
    469_762_049,
    2_013_265_921,
)


# ---------------------------------------------------------------------------------------------
# Shared config fields
# ---------------------------------------------------------------------------------------------
# Fields of ByteModelConfig that every stack takes over as they are.
_STACK_FIELDS = ("mlp", "qk_norm", "norm_eps", "rope_theta", "dropout", "init_std")


@dataclass
class ByteModelConfig(ModelConfig):
    """Fields every byte patch model has: the bytes vocabulary, optional hashed n-gram embeddings,
    and the llama settings of its stacks (each stack is llama blocks of its own width and depth)."""

    vocab_size: int = 257  # the bytes tokenizer: 256 byte values + the document separator (id 256)
    ngram_max: int = 0  # 0: off; k: hashed n-gram embeddings for n = 2..k
    ngram_buckets: int = 1024
    mlp: str = "swiglu"
    ffn_mult: int = 4  # MLP hidden width = ffn_mult x the stack's width
    qk_norm: bool = False
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        if self.ffn_mult < 1:
            raise LumiError(f"ffn_mult must be >= 1, got {self.ffn_mult}")
        check_choice("mlp", self.mlp, MLP_ACTIVATIONS)
        if not 0.0 <= self.dropout < 1.0:
            raise LumiError(f"dropout must be in [0, 1), got {self.dropout}")
        validate_ngrams(self.ngram_max, self.ngram_buckets)

    def stack_config(self, d_model: int, n_layers: int, n_heads: int, field: str) -> LlamaConfig:
        """A LlamaConfig for one stack of the model; errors name the model's ``field``."""
        shared = {name: getattr(self, name) for name in _STACK_FIELDS}
        c = LlamaConfig(
            vocab_size=2,
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            ffn_hidden=self.ffn_mult * d_model,
            **shared,
        )
        if d_model < 2 or n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
            raise LumiError(
                f"{field}: d={d_model} with {n_heads} heads is invalid — heads must divide the width "
                "and the head size must be even (RoPE)"
            )
        return c


# ---------------------------------------------------------------------------------------------
# Hashed n-gram embeddings
# ---------------------------------------------------------------------------------------------
def hashed_ngram_ids(tokens: torch.Tensor, n: int, buckets: int) -> torch.Tensor:
    """Bucket id of the n bytes ending at each position (positions before the start count as 0).

    h = (...((x_{i-n+1}+1) * a + (x_{i-n+2}+1)) * a + ... + (x_i+1)) mod buckets, with a fixed
    multiplier a per n. Uses int64 arithmetic reduced mod ``buckets`` at every step (no overflow).
    """
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")
    a = _HASH_MULTIPLIERS[(n - 2) % len(_HASH_MULTIPLIERS)]  # < 2^31; h < buckets <= 2^24: no overflow
    x = tokens.long() + 1  # 0 is reserved for "before the start of the sequence"
    h = torch.zeros_like(x)
    for j in range(n - 1, -1, -1):  # oldest byte first
        shifted = F.pad(x, (j, 0))[:, : x.shape[1]] if j else x  # x_{i-j}, 0 where i-j < 0
        h = (h * a + shifted) % buckets
    return h


class HashNgramEmbedding(nn.Module):
    """Sum over n = 2..ngram_max of a per-n embedding table indexed by the hashed n-gram."""

    def __init__(self, ngram_max: int, buckets: int, dim: int) -> None:
        super().__init__()
        self.orders = list(range(2, ngram_max + 1))
        self.buckets = buckets
        self.tables = nn.ModuleList([nn.Embedding(buckets, dim) for _ in self.orders])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor | None = None
        for n, table in zip(self.orders, self.tables, strict=True):
            e = table(hashed_ngram_ids(tokens, n, self.buckets))
            out = e if out is None else out + e
        assert out is not None, "HashNgramEmbedding needs ngram_max >= 2"
        return out

    def num_params(self) -> int:
        return sum(cast(nn.Embedding, t).weight.numel() for t in self.tables)


def ngram_params(ngram_max: int, buckets: int, dim: int) -> int:
    return max(0, ngram_max - 1) * buckets * dim


MAX_NGRAM_BUCKETS = 1 << 24


def validate_ngrams(ngram_max: int, ngram_buckets: int) -> None:
    if ngram_max < 0 or ngram_max == 1 or ngram_max > 8:
        raise LumiError(
            f"ngram_max must be 0 (off) or 2..8 (hashed n-gram embeddings for n = 2..ngram_max), "
            f"got {ngram_max}"
        )
    if ngram_max and not 1 <= ngram_buckets <= MAX_NGRAM_BUCKETS:
        raise LumiError(f"ngram_buckets must be in 1..{MAX_NGRAM_BUCKETS}, got {ngram_buckets}")


# ---------------------------------------------------------------------------------------------
# Boundary rules
# ---------------------------------------------------------------------------------------------
def is_spacelike(tokens: torch.Tensor) -> torch.Tensor:
    """SpaceByte: a byte that is not an ASCII letter, an ASCII digit or a UTF-8 continuation byte
    (0x80-0xBF). Ids >= 256 (separator / specials) count as spacelike."""
    x = tokens
    letter = ((x >= 65) & (x <= 90)) | ((x >= 97) & (x <= 122))
    digit = (x >= 48) & (x <= 57)
    continuation = (x >= 0x80) & (x <= 0xBF)
    return ~(letter | digit | continuation)


def spacelike_boundaries(tokens: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: spacelike byte whose predecessor is not spacelike; position 0 and ids >= 256 always."""
    s = is_spacelike(tokens)
    prev = F.pad(s, (1, 0), value=True)[:, :-1]
    b = s & ~prev
    b |= tokens >= 256
    b[:, 0] = True
    return b


def force_max_patch(boundaries: torch.Tensor, max_patch: int) -> torch.Tensor:
    """Add a boundary every ``max_patch`` positions after the last boundary (causal: the decision at
    t depends on boundaries <= t only). Position 0 must already be a boundary."""
    b, t = boundaries.shape
    pos = torch.arange(t, device=boundaries.device).expand(b, t)
    last = torch.where(boundaries, pos, torch.zeros_like(pos)).cummax(dim=1).values
    return (pos - last) % max_patch == 0


def global_capacity(seq_len: int, global_patch_len: int) -> int:
    """Number of positions the global model processes for a sequence of ``seq_len`` bytes."""
    return math.ceil(seq_len / global_patch_len)


def running_budget(boundaries: torch.Tensor, global_patch_len: int) -> torch.Tensor:
    """Which boundaries the global model runs at: by position t at most ceil((t+1) / global_patch_len)
    of them (a token bucket; earlier boundaries first).

    Kept boundaries K_t follow K_t = min(K_{t-1} + b_t, A_t) with A_t = ceil((t+1)/P); unrolled,
    K_t = S_t + min(0, min_{s<=t} (A_s - S_s)) with S the running boundary count. The decision at t
    depends on positions <= t only, and not on the sequence length, so a prefix is processed exactly
    as the start of a longer sequence. At most ceil(T / P) boundaries are kept in a row of T.
    """
    _b, t = boundaries.shape
    pos = torch.arange(t, device=boundaries.device)
    allowance = (pos + global_patch_len) // global_patch_len  # ceil((t+1)/P)
    s = boundaries.long().cumsum(dim=1)
    k = s + (allowance - s).cummin(dim=1).values.clamp(max=0)
    prev = F.pad(k, (1, 0))[:, :-1]
    return boundaries & (k > prev)


def gather_index(kept: torch.Tensor, capacity: int) -> torch.Tensor:
    """[B, capacity] positions of the kept boundaries of each row, in order, padded with T.

    ``kept`` must have at most ``capacity`` True per row (``running_budget`` guarantees it).
    """
    b, t = kept.shape
    rank = kept.long().cumsum(dim=1) - 1  # (no host sync to re-check the capacity: cheap on GPU)
    column = torch.where(kept, rank, torch.full_like(rank, capacity))  # unkept -> a spare column
    index = torch.full((b, capacity + 1), t, dtype=torch.long, device=kept.device)
    pos = torch.arange(t, device=kept.device).expand(b, t)
    index.scatter_(1, column, pos)
    return index[:, :capacity]  # the spare column collected the unkept positions: drop it


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] -> [B, C, D] rows at ``index``; index T gives a zero row."""
    x_pad = F.pad(x, (0, 0, 0, 1))
    return x_pad.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def scatter_add_rows(x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] + rows [B, C, D] added at ``index``; rows at index T (padding) are discarded."""
    b, t, d = x.shape
    upd = x.new_zeros(b, t + 1, d).scatter_add(1, index[..., None].expand(-1, -1, d), rows.to(x.dtype))
    return x + upd[:, :t]


def boundary_stats(boundaries: torch.Tensor, kept: torch.Tensor) -> dict[str, float]:
    n = float(boundaries.sum())
    return {
        "mean_patch_len": boundaries.numel() / max(n, 1.0),
        "dropped_boundary_frac": (n - float(kept.sum())) / max(n, 1.0),
    }


# ---------------------------------------------------------------------------------------------
# Sliding-window attention
# ---------------------------------------------------------------------------------------------
class SlidingWindowAttention(Attention):
    """The shared attention layer, but each query sees only the last ``window`` positions
    (itself included). An explicit band mask: on the MATH backend the scores are still computed over
    the full T x T, which is what the FLOPs convention counts."""

    def __init__(self, *args, window: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window = window

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:
            raise NotImplementedError("sliding-window attention has no KV cache")
        return super().forward(x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        i = torch.arange(q.shape[2], device=q.device)
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=band, dropout_p=self.dropout if self.training else 0.0
        )


def make_windowed(block: nn.Module, c: LlamaConfig, window: int | None) -> nn.Module:
    """Swap a llama Block's attention for the sliding-window one (window None: leave it causal)."""
    if window is not None:
        block.attn = block_attention(c, SlidingWindowAttention, window=window)
    return block


# ---------------------------------------------------------------------------------------------
# Accounting helpers
# ---------------------------------------------------------------------------------------------
def block_params(c: LlamaConfig) -> int:
    """Parameters of one llama Block (matmuls + two RMSNorms + optional QK norms)."""
    return llama_layer_matmul_params(c) + 2 * c.d_model + (2 * c.dim_head if c.qk_norm else 0)


def block_forward_flops(c: LlamaConfig, context: int) -> float:
    """Forward FLOPs of one llama Block per position, attention over ``context`` keys."""
    return 2.0 * llama_layer_matmul_params(c) + 2.0 * context * (2 * c.n_heads * c.dim_head)


__all__ = [
    "ByteModelConfig",
    "HashNgramEmbedding",
    "SlidingWindowAttention",
    "block_forward_flops",
    "block_params",
    "boundary_stats",
    "force_max_patch",
    "gather_index",
    "gather_rows",
    "global_capacity",
    "hashed_ngram_ids",
    "is_spacelike",
    "make_windowed",
    "ngram_params",
    "running_budget",
    "scatter_add_rows",
    "spacelike_boundaries",
    "validate_ngrams",
]

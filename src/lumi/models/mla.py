"""`mla`: multi-head latent attention with decoupled RoPE (DeepSeek-V2, arXiv 2405.04434, §2.1).

The `llama` baseline with its attention replaced by MLA: per-head keys and values are up-projected
from a normalised KV latent ``c_kv`` (width ``kv_latent``), and position enters only through a
decoupled rotary key ``k_R`` (width ``rope_dim``, shared by all heads) and each query's rotary part.
The decoding cache holds ONLY c_kv and k_R: n_layers * (kv_latent + rope_dim) numbers per token.
``absorb=True`` folds W_UK into the query and attends over the latent: the same function (tested),
other FLOPs. Attention is causal, the Tq queries being the last Tq of the Tk cached positions.
Details: docs/architectures/mla.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.layers import KVCache, RMSNorm, RotaryEmbedding, mlp_params
from lumi.models.llama import Block, Llama, LlamaConfig
from lumi.models.registry import register


@dataclass
class MLAConfig(LlamaConfig):
    kv_latent: int = 64  # d_c: width of the cached KV latent
    q_latent: int | None = None  # d_c': query latent width; None = full-rank queries
    rope_dim: int = 32  # d_h^R: decoupled rotary key/query width (shared key, per-head queries)
    latent_norm: bool = True  # RMSNorm on c_kv (and c_q), as in DeepSeek-V2's code
    absorb: bool = False  # absorbed form (W_UK folded into the query); same function

    def validate(self) -> None:
        super().validate()
        if self.kv_latent < 1:
            raise LumiError(f"kv_latent must be >= 1, got {self.kv_latent}")
        if self.q_latent is not None and self.q_latent < 1:
            raise LumiError(f"q_latent must be >= 1 or null (full-rank queries), got {self.q_latent}")
        if self.rope_dim < 2 or self.rope_dim % 2:
            raise LumiError(f"rope_dim must be an even number >= 2, got {self.rope_dim}")
        if self.n_kv_heads is not None:
            raise LumiError(
                "n_kv_heads does not apply to mla (keys/values come from the shared latent); leave it null"
            )
        if self.qk_norm:
            raise LumiError(
                "qk_norm does not apply to mla (it normalises the latents instead, see latent_norm)"
            )
        if self.attention != "sdpa":
            raise LumiError(f"attention must be 'sdpa' for mla, got {self.attention!r}")


@dataclass
class MLALayerCache:
    """What MLA caches per token: the KV latent and the rotated shared RoPE key ([B, T, width])."""

    c_kv: torch.Tensor | None = None
    k_rope: torch.Tensor | None = None

    def append(self, c_kv: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.c_kv = c_kv if self.c_kv is None else torch.cat([self.c_kv, c_kv], dim=1)
        self.k_rope = k_rope if self.k_rope is None else torch.cat([self.k_rope, k_rope], dim=1)
        return self.c_kv, self.k_rope

    @property
    def length(self) -> int:
        return 0 if self.c_kv is None else self.c_kv.shape[1]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout_p: float
) -> torch.Tensor:
    """Causal SDPA where the Tq queries are the last Tq of the Tk key positions."""
    tq, tk = q.shape[2], k.shape[2]
    if tq == tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    q_pos = torch.arange(tk - tq, tk, device=q.device)[:, None]
    mask = torch.arange(tk, device=q.device)[None, :] <= q_pos
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, c: MLAConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.rope_dim, self.kv_latent = (
            c.n_heads,
            c.dim_head,
            c.rope_dim,
            c.kv_latent,
        )
        self.absorb = c.absorb
        self.dropout = c.dropout
        qk_head = c.dim_head + c.rope_dim
        if c.q_latent is None:
            self.q_proj: nn.Linear | None = nn.Linear(c.d_model, c.n_heads * qk_head, bias=False)
            self.q_down = self.q_norm = self.q_up = None
        else:
            self.q_proj = None
            self.q_down = nn.Linear(c.d_model, c.q_latent, bias=False)
            self.q_norm = RMSNorm(c.q_latent, c.norm_eps) if c.latent_norm else nn.Identity()
            self.q_up = nn.Linear(c.q_latent, c.n_heads * qk_head, bias=False)
        self.kv_down = nn.Linear(c.d_model, c.kv_latent, bias=False)
        self.kv_norm = RMSNorm(c.kv_latent, c.norm_eps) if c.latent_norm else nn.Identity()
        self.k_up = nn.Linear(c.kv_latent, c.n_heads * c.dim_head, bias=False)
        self.v_up = nn.Linear(c.kv_latent, c.n_heads * c.dim_head, bias=False)
        self.k_rope_proj = nn.Linear(c.d_model, c.rope_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.dim_head, c.d_model, bias=False)
        self.rope = RotaryEmbedding(c.rope_dim, c.rope_theta)
        self.scale = 1.0 / math.sqrt(qk_head)

    def forward(self, x: torch.Tensor, cache: MLALayerCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        h, dh, dr = self.n_heads, self.head_dim, self.rope_dim
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            assert self.q_down is not None and self.q_norm is not None and self.q_up is not None
            q = self.q_up(self.q_norm(self.q_down(x)))
        q = q.view(b, t, h, dh + dr).transpose(1, 2)  # [B, H, T, dh + dr]
        q_c, q_r = q[..., :dh], q[..., dh:]
        c_kv = self.kv_norm(self.kv_down(x))  # [B, T, dc]
        k_r = self.k_rope_proj(x)  # [B, T, dr]
        offset = cache.length if cache is not None else 0
        cos, sin = self.rope.cos_sin(t, offset, x.device)
        q_r = RotaryEmbedding.rotate(q_r, cos, sin)
        k_r = RotaryEmbedding.rotate(k_r[:, None], cos, sin)[:, 0]
        if cache is not None:
            c_kv, k_r = cache.append(c_kv, k_r)
        tk = c_kv.shape[1]
        dropout_p = self.dropout if self.training else 0.0
        if self.absorb:
            y = self._absorbed(q_c, q_r, c_kv, k_r, dropout_p)
        else:
            k_c = self.k_up(c_kv).view(b, tk, h, dh).transpose(1, 2)
            v = self.v_up(c_kv).view(b, tk, h, dh).transpose(1, 2)
            k = torch.cat([k_c, k_r[:, None].expand(b, h, tk, dr)], dim=-1)
            y = _attend(torch.cat([q_c, q_r], dim=-1), k, v, self.scale, dropout_p)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h * dh))

    def _absorbed(
        self, q_c: torch.Tensor, q_r: torch.Tensor, c_kv: torch.Tensor, k_r: torch.Tensor, dropout_p: float
    ) -> torch.Tensor:
        """Scores q_c . (W_UK,h c) = (W_UK,h^T q_c) . c: attend over the latent, then apply W_UV,h."""
        b, h, _t, dh = q_c.shape
        tk, dc = c_kv.shape[1], self.kv_latent
        w_uk = self.k_up.weight.view(h, dh, dc)
        w_uv = self.v_up.weight.view(h, dh, dc)
        q_lat = torch.matmul(q_c, w_uk)  # [B, H, T, dc]
        k = torch.cat([c_kv, k_r], dim=-1)[:, None].expand(b, h, tk, dc + self.rope_dim)
        v = c_kv[:, None].expand(b, h, tk, dc)
        y_lat = _attend(torch.cat([q_lat, q_r], dim=-1), k, v, self.scale, dropout_p)  # [B, H, T, dc]
        return torch.matmul(y_lat, w_uv.transpose(1, 2))  # [B, H, T, dh]


def mla_attention_matmul_params(c: MLAConfig) -> int:
    """Weights of every MLA projection in one layer (no norms)."""
    qk_out = c.n_heads * (c.dim_head + c.rope_dim)
    q = c.d_model * qk_out if c.q_latent is None else c.d_model * c.q_latent + c.q_latent * qk_out
    kv = c.d_model * c.kv_latent + 2 * c.kv_latent * c.n_heads * c.dim_head + c.d_model * c.rope_dim
    return q + kv + c.n_heads * c.dim_head * c.d_model


def mla_param_formula(c: MLAConfig) -> dict[str, int]:
    """Closed-form parameter counts (the tests compare them with the module)."""
    norms = 2 * c.d_model
    if c.latent_norm:
        norms += c.kv_latent + (c.q_latent or 0)
    per_layer = mla_attention_matmul_params(c) + mlp_params(c.d_model, c.ffn, c.mlp) + norms
    embedding = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    total = c.n_layers * per_layer + c.d_model + embedding
    return {"total": total, "non_embedding": total - embedding}


def mla_cache_per_token(c: MLAConfig) -> int:
    """Numbers cached per token over all layers: n_layers * (kv_latent + rope_dim)."""
    return c.n_layers * (c.kv_latent + c.rope_dim)


def mla_flops_per_token(c: MLAConfig, seq_len: int) -> float:
    """Training FLOPs per token (3 x forward), explicit or absorbed form."""
    h, dh, dr, dc = c.n_heads, c.dim_head, c.rope_dim, c.kv_latent
    per_layer = mla_attention_matmul_params(c) + mlp_params(c.d_model, c.ffn, c.mlp)
    if c.absorb:
        # k_up / v_up are not applied to every key; instead q_c -> latent and latent -> head output
        # (h*dh*dc MACs each, the same count as the up-projections) and attention runs over dc + dr.
        scores, values = h * (dc + dr), h * dc
    else:
        scores, values = h * (dh + dr), h * dh
    forward = 2 * (c.n_layers * per_layer + c.vocab_size * c.d_model)
    forward += c.n_layers * (2 * seq_len * scores + 2 * seq_len * values)
    return 3.0 * forward


@register(
    "mla",
    description="Multi-head latent attention (DeepSeek-V2): cached KV latent + decoupled shared RoPE key",
    presets={
        "nano": dict(n_layers=2, d_model=64, n_heads=2, kv_latent=32, rope_dim=16),
        "micro": dict(n_layers=4, d_model=128, n_heads=2, kv_latent=64, rope_dim=32),
        "tiny": dict(n_layers=6, d_model=256, n_heads=4, kv_latent=128, rope_dim=32),
        "small": dict(n_layers=12, d_model=512, n_heads=8, kv_latent=256, rope_dim=32, q_latent=384),
    },
    cpu_presets=("nano", "micro"),
)
class MLA(Llama[MLAConfig]):
    config_class = MLAConfig

    def make_block(self, layer_idx: int) -> nn.Module:
        return Block(self.config, attn=MultiHeadLatentAttention(self.config))

    def new_cache(self) -> KVCache:
        return KVCache(layers=[MLALayerCache() for _ in self.blocks])

    def cache_numbers_per_token(self) -> int:
        return mla_cache_per_token(self.config)

    def flops_per_token(self, seq_len: int) -> float:
        return mla_flops_per_token(self.config, seq_len)

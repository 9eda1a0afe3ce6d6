"""`llama`: the Lumi baseline — a decoder-only Transformer in the LLaMA design.

Pre-norm RMSNorm (eps 1e-5), SwiGLU MLP, RoPE (theta 10000, HF half-split layout), no biases,
grouped-query attention via ``n_kv_heads``, N(0, 0.02) init with residual output projections
scaled by 1/sqrt(2 * n_layers), attention through PyTorch SDPA.

Recipe switches from the strongest small-model recipes (parameter-golf, modded-nanogpt), all off by
default: ``mlp`` = swiglu | relu2 | gelu, ``qk_norm``, ``logit_softcap``, ``zero_init_proj``,
``tie_embeddings``. Presets give FFN width 4 x d_model (for every activation, so switching the
activation changes the parameter count; the report shows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from typing_extensions import TypeVar

from lumi.errors import LumiError
from lumi.models.base import LumiModel, ModelConfig, check_choice
from lumi.models.layers import (
    MLP,
    MLP_ACTIVATIONS,
    Attention,
    KVCache,
    LayerKVCache,
    RMSNorm,
    init_linear_weights,
    mlp_params,
    scale_residual_projections,
    softcap,
)
from lumi.models.registry import register

ATTENTION_BACKENDS = ("sdpa", "flash_attn")


@dataclass
class LlamaConfig(ModelConfig):
    vocab_size: int = 256
    n_layers: int = 6
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (MHA); 1: MQA
    head_dim: int | None = None  # None: d_model // n_heads
    ffn_hidden: int | None = None  # None: 4 * d_model
    mlp: str = "swiglu"
    qk_norm: bool = False
    logit_softcap: float | None = None
    zero_init_proj: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "sdpa"
    gradient_checkpointing: bool = False

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.d_model

    def validate(self) -> None:
        super().validate()
        for name in ("n_layers", "d_model", "n_heads"):
            if getattr(self, name) < 1:
                raise LumiError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise LumiError(f"n_heads={self.n_heads} must divide d_model={self.d_model} (or set head_dim)")
        if self.dim_head % 2:
            raise LumiError(f"head_dim must be even for RoPE, got {self.dim_head}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise LumiError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        check_choice("mlp", self.mlp, MLP_ACTIVATIONS)
        check_choice("attention", self.attention, ATTENTION_BACKENDS)
        if not 0.0 <= self.dropout < 1.0:
            raise LumiError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise LumiError(f"logit_softcap must be positive or null (off), got {self.logit_softcap}")


def block_attention(c: LlamaConfig, cls: type[Attention] = Attention, **kwargs: Any) -> Attention:
    """The attention layer of a llama ``Block``; ``cls`` swaps the class (sliding window) and ``kwargs``
    add arguments (``use_rope=False``, ``window=...``)."""
    return cls(
        c.d_model,
        c.n_heads,
        c.kv_heads,
        c.dim_head,
        c.rope_theta,
        c.qk_norm,
        c.dropout,
        use_flash_attn=c.attention == "flash_attn",
        norm_eps=c.norm_eps,
        **kwargs,
    )


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

    Variants pass their own ``attn`` (MLA, NoPE) or ``mlp`` (MoE experts); the default is llama's."""

    def __init__(self, c: LlamaConfig, attn: nn.Module | None = None, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = attn if attn is not None else block_attention(c)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = mlp if mlp is not None else MLP(c.d_model, c.ffn, c.mlp, c.dropout)
        self.resid_dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """``cache``: the attention layer's own (a ``LayerKVCache`` for llama's), or None."""
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), cache))
        return x + self.mlp(self.mlp_norm(x))


def llama_attention_matmul_params(c: LlamaConfig) -> int:
    """Weights of q, k, v and o in one layer (grouped k/v when n_kv_heads < n_heads)."""
    return c.d_model * c.n_heads * c.dim_head * 2 + c.d_model * c.kv_heads * c.dim_head * 2


def llama_layer_matmul_params(c: LlamaConfig) -> int:
    return llama_attention_matmul_params(c) + mlp_params(c.d_model, c.ffn, c.mlp)


def llama_param_formula(c: LlamaConfig) -> dict[str, int]:
    """Closed-form parameter counts (the tests compare them with the module)."""
    per_layer = llama_layer_matmul_params(c) + 2 * c.d_model + (2 * c.dim_head if c.qk_norm else 0)
    embedding = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    total = c.n_layers * per_layer + c.d_model + embedding
    return {"total": total, "non_embedding": total - embedding}


def attention_flops_per_token(n_layers: int, seq_len: int, qk_dim: int, v_dim: int) -> float:
    """Training FLOPs per token of attention scores and weighted values over the full T x T."""
    return 3.0 * n_layers * (2 * seq_len * qk_dim + 2 * seq_len * v_dim)


def llama_flops_per_token(c: LlamaConfig, seq_len: int, layer_matmul: int, depth: int | None = None) -> float:
    """Training FLOPs per token of a llama-shaped stack: 6 x (``depth`` layers of ``layer_matmul``
    weights + the V x d head) + attention over the full T x T in every layer (depth: n_layers)."""
    depth = c.n_layers if depth is None else depth
    width = c.n_heads * c.dim_head
    return 6.0 * (depth * layer_matmul + c.vocab_size * c.d_model) + attention_flops_per_token(
        depth, seq_len, width, width
    )


def read_out(
    h: torch.Tensor, embed: nn.Embedding, lm_head: nn.Linear | None, cap: float | None
) -> torch.Tensor:
    """Logits from final states: the untied ``lm_head``, else the (tied) embedding matrix; then soft-cap."""
    out = F.linear(h, embed.weight) if lm_head is None else lm_head(h)
    return softcap(out, cap)


# The config type of a Llama (sub)class: ``class MoE(Llama[MoEConfig])``; a bare ``Llama`` has a LlamaConfig.
LlamaConfigT = TypeVar("LlamaConfigT", bound=LlamaConfig, default=LlamaConfig)


@register(
    "llama",
    description="Decoder-only Transformer baseline (LLaMA design: RMSNorm, SwiGLU, RoPE, GQA)",
    presets={
        "nano": dict(n_layers=2, d_model=64, n_heads=2),
        "micro": dict(n_layers=4, d_model=128, n_heads=2),
        "mini": dict(n_layers=4, d_model=192, n_heads=3),
        "tiny": dict(n_layers=6, d_model=256, n_heads=4),
        "small": dict(n_layers=12, d_model=512, n_heads=8),
        "base": dict(n_layers=24, d_model=768, n_heads=12),
        # Byte-level baselines (bytes tokenizer, V = 257) matched to the byte-patch models' presets;
        # byte-nano is also the default entropy patcher of `bltpatch`.
        "byte-nano": dict(n_layers=2, d_model=64, n_heads=2, vocab_size=257),
        "byte-micro": dict(n_layers=4, d_model=128, n_heads=2, vocab_size=257),
    },
    cpu_presets=("nano", "micro"),
)
class Llama(LumiModel[LlamaConfigT]):
    config_class = LlamaConfig

    def __init__(self, config: LlamaConfigT) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList([self.make_block(i) for i in range(c.n_layers)])
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.embed_dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def make_block(self, layer_idx: int) -> nn.Module:
        """Hook for variants (MoE, low-rank ...) that swap parts of a block."""
        return Block(self.config)

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)
        scale_residual_projections(self, c.n_layers, zero=c.zero_init_proj, std=c.init_std)

    supports_cache = True

    def new_cache(self) -> KVCache:
        return KVCache(layers=[LayerKVCache() for _ in self.blocks])

    def hidden_states(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = self.embed_dropout(self.embed(tokens))
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            if self.config.gradient_checkpointing and self.training and layer_cache is None:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, layer_cache)
        if cache is not None:
            cache.position += tokens.shape[1]
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return read_out(h, self.embed, self.lm_head, self.config.logit_softcap)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.logits(self.hidden_states(tokens, cache))

    def flops_per_token(self, seq_len: int) -> float:
        return llama_flops_per_token(self.config, seq_len, llama_layer_matmul_params(self.config))

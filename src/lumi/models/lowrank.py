"""`lowrank`: every linear layer of the llama blocks as U diag(s) V^T ("Eigenweight", PR #1589).

Source: parameter-golf PR #1589 (nnm2602), "Eigenweight": every linear is U.diag(sigma).V^T. Here each
of the seven block linears (q, k, v, o; gate, up, down) is a ``LowRankLinear`` of rank ``attn_rank``
(attention) or ``mlp_rank`` (MLP), clamped to min(m, n); ``null`` means full rank, where
``load_dense_weights`` SVD-initialises from a dense llama and reproduces its logits. The embedding,
the head and the norms stay dense; causality is llama's (only the matrices change).
Details (init, formulas, presets): docs/architectures/lowrank.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import check_choice
from lumi.models.layers import init_linear_weights
from lumi.models.llama import Block, Llama, LlamaConfig, llama_flops_per_token
from lumi.models.registry import register

ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
RESIDUAL_LINEARS = ("o_proj", "down_proj")
FACTOR_INITS = ("orthogonal", "svd")


@dataclass
class LowRankConfig(LlamaConfig):
    attn_rank: int | None = 32  # rank of q/k/v/o; null = full rank
    mlp_rank: int | None = 64  # rank of the MLP matrices; null = full rank
    factor_init: str = "orthogonal"  # or "svd": truncated SVD of a dense N(0, std) draw

    def validate(self) -> None:
        super().validate()
        for name in ("attn_rank", "mlp_rank"):
            r = getattr(self, name)
            if r is not None and r < 1:
                raise LumiError(f"{name} must be >= 1 or null (full rank), got {r}")
        check_choice("factor_init", self.factor_init, FACTOR_INITS)


class LowRankLinear(nn.Module):
    """y = U diag(s) V^T x, rank = min(rank, in_features, out_features); no bias."""

    def __init__(self, in_features: int, out_features: int, rank: int | None) -> None:
        super().__init__()
        full = min(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.rank = full if rank is None else min(rank, full)
        self.u = nn.Parameter(torch.empty(out_features, self.rank))
        self.s = nn.Parameter(torch.empty(self.rank))
        self.vt = nn.Parameter(torch.empty(self.rank, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.vt) * self.s, self.u)

    @torch.no_grad()
    def set_from_dense(self, weight: torch.Tensor) -> None:
        """Best rank-r approximation (truncated SVD, computed in float64) of a dense [out, in] weight."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"dense weight {tuple(weight.shape)} != {(self.out_features, self.in_features)}")
        u, s, vt = torch.linalg.svd(weight.double(), full_matrices=False)
        r = self.rank
        self.u.copy_(u[:, :r])
        self.s.copy_(s[:r])
        self.vt.copy_(vt[:r])

    @torch.no_grad()
    def reset_orthogonal(self, std: float) -> None:
        """Random orthonormal U, V; s = std * sqrt(max(m, n)) (a dense N(0, std) draw's RMS singular value)."""
        self.u.copy_(_random_orthonormal(self.out_features, self.rank))
        self.vt.copy_(_random_orthonormal(self.in_features, self.rank).T)
        self.s.fill_(std * math.sqrt(max(self.in_features, self.out_features)))

    def dense_weight(self) -> torch.Tensor:
        return (self.u * self.s) @ self.vt

    def num_matmul_params(self) -> int:
        """Multiply-accumulates per token: r (in + out)."""
        return self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _random_orthonormal(rows: int, cols: int) -> torch.Tensor:
    """[rows, cols] with orthonormal columns, uniformly distributed (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols))
    return q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)


def _factorise_block(block: Block, c: LowRankConfig) -> Block:
    """Swap the block's dense linears for low-rank ones of the same shape."""
    for parent, names, rank in (
        (block.attn, ATTN_LINEARS, c.attn_rank),
        (block.mlp, MLP_LINEARS, c.mlp_rank),
    ):
        for name in names:
            dense = getattr(parent, name, None)
            if isinstance(dense, nn.Linear):
                setattr(parent, name, LowRankLinear(dense.in_features, dense.out_features, rank))
    return block


def lowrank_layer_matmul_params(c: LowRankConfig) -> int:
    """Matmul weights of one block (U, V; not s): sum of r (m + n) over its seven linears."""
    d, hd, kvd, f = c.d_model, c.n_heads * c.dim_head, c.kv_heads * c.dim_head, c.ffn

    def cost(m: int, n: int, rank: int | None) -> int:
        r = min(m, n) if rank is None else min(rank, m, n)
        return r * (m + n)

    attn = 2 * cost(d, hd, c.attn_rank) + 2 * cost(d, kvd, c.attn_rank)
    n_mlp = 3 if c.mlp == "swiglu" else 2
    return attn + n_mlp * cost(d, f, c.mlp_rank)


def lowrank_param_formula(c: LowRankConfig) -> dict[str, int]:
    """Closed-form parameter counts: r(m+n)+r per linear, plus llama's norms/embeddings."""
    d, hd, kvd, f = c.d_model, c.n_heads * c.dim_head, c.kv_heads * c.dim_head, c.ffn

    def rank(m: int, n: int, r: int | None) -> int:
        return min(m, n) if r is None else min(r, m, n)

    n_mlp = 3 if c.mlp == "swiglu" else 2
    singular = 2 * rank(d, hd, c.attn_rank) + 2 * rank(d, kvd, c.attn_rank) + n_mlp * rank(d, f, c.mlp_rank)
    per_layer = lowrank_layer_matmul_params(c) + singular + 2 * d + (2 * c.dim_head if c.qk_norm else 0)
    embedding = c.vocab_size * d * (1 if c.tie_embeddings else 2)
    total = c.n_layers * per_layer + d + embedding
    return {"total": total, "non_embedding": total - embedding}


@register(
    "lowrank",
    description="Eigenweight (PR #1589): every block linear as U diag(s) V^T, attention and MLP ranks separate",
    presets={
        "nano": dict(n_layers=2, d_model=64, n_heads=2, attn_rank=16, mlp_rank=32),
        "micro": dict(n_layers=4, d_model=128, n_heads=2, attn_rank=32, mlp_rank=64),
        "micro_full": dict(n_layers=4, d_model=128, n_heads=2, attn_rank=None, mlp_rank=None),
        "tiny": dict(n_layers=6, d_model=256, n_heads=4, attn_rank=64, mlp_rank=128),
        "small": dict(n_layers=12, d_model=512, n_heads=8, attn_rank=128, mlp_rank=256),
    },
    cpu_presets=("nano", "micro"),
)
class LowRank(Llama[LowRankConfig]):
    config_class = LowRankConfig

    def make_block(self, layer_idx: int) -> nn.Module:
        return _factorise_block(Block(self.config), self.config)

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)  # embedding and head (the only dense matmuls left)
        for name, m in self.named_modules():
            if isinstance(m, LowRankLinear):
                residual = name.rsplit(".", 1)[-1] in RESIDUAL_LINEARS
                std = c.init_std / math.sqrt(2 * c.n_layers) if residual else c.init_std
                if c.factor_init == "svd":
                    m.set_from_dense(torch.randn(m.out_features, m.in_features) * std)
                else:
                    m.reset_orthogonal(std)
                if residual and c.zero_init_proj:
                    with torch.no_grad():
                        m.s.zero_()

    @torch.no_grad()
    def load_dense_weights(self, dense: Llama) -> None:
        """Copy a dense llama of the same shape: norms/embeddings as they are, each linear by SVD.

        At full rank the result computes the dense model's function (up to fp32 rounding)."""
        state = dense.state_dict()
        own = dict(self.named_modules())
        for key, value in state.items():
            module_name, _, leaf = key.rpartition(".")
            target = own.get(module_name)
            if isinstance(target, LowRankLinear) and leaf == "weight":
                target.set_from_dense(value)
            else:
                param = self.get_parameter(key)
                param.copy_(value)

    def flops_per_token(self, seq_len: int) -> float:
        return llama_flops_per_token(self.config, seq_len, lowrank_layer_matmul_params(self.config))

"""`moe`: the llama baseline with a mixture-of-experts feed-forward in every layer.

Sources: Switch Transformer (Fedus et al., 2021: router, load-balancing loss, capacity factor),
GShard / Mixtral (top-2 routing, gates renormalised over the chosen experts), ST-MoE (Zoph et al.,
2022: router z-loss). Each token goes to its ``top_k`` most probable experts (llama MLPs of width
``expert_hidden``); ``aux_losses()`` holds the Switch balance loss and the optional z-loss.

Causality with a capacity limit: expert queues are filled in position-major order (every batch row at
position 0, then position 1, ...), so whether token t is dropped depends only on tokens at positions
<= t; the usual batch-major order would let a later token take its slot. Details, formulas and
presets: docs/architectures/moe.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import ParamCounts
from lumi.models.layers import MLP, mlp_params
from lumi.models.llama import Block, Llama, LlamaConfig, llama_attention_matmul_params, llama_flops_per_token
from lumi.models.registry import register


@dataclass
class MoEConfig(LlamaConfig):
    n_experts: int = 4
    top_k: int = 2
    expert_hidden: int | None = None  # None: ffn_hidden // top_k, so active FFN compute == dense llama
    renormalize_gates: bool = True  # gates of the chosen experts sum to 1 (GShard/Mixtral)
    load_balance_weight: float = 0.01  # Switch alpha
    z_loss_weight: float = 0.0  # ST-MoE uses 1e-3; 0 = off
    capacity_factor: float | None = None  # None: no capacity, no dropping

    @property
    def expert_width(self) -> int:
        return self.expert_hidden or self.ffn // self.top_k

    def validate(self) -> None:
        super().validate()
        if self.n_experts < 1:
            raise LumiError(f"n_experts must be >= 1, got {self.n_experts}")
        if not 1 <= self.top_k <= self.n_experts:
            raise LumiError(f"top_k must be in 1..n_experts={self.n_experts}, got {self.top_k}")
        if self.expert_hidden is None and self.ffn % self.top_k:
            raise LumiError(
                f"expert_hidden=None means ffn_hidden // top_k, but ffn_hidden={self.ffn} is not "
                f"divisible by top_k={self.top_k}; set expert_hidden explicitly"
            )
        if self.expert_hidden is not None and self.expert_hidden < 1:
            raise LumiError(
                f"expert_hidden must be >= 1 or null (= ffn_hidden // top_k), got {self.expert_hidden}"
            )
        if self.load_balance_weight < 0:
            raise LumiError(f"load_balance_weight must be >= 0, got {self.load_balance_weight}")
        if self.z_loss_weight < 0:
            raise LumiError(f"z_loss_weight must be >= 0 (0 = off), got {self.z_loss_weight}")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise LumiError(
                f"capacity_factor must be > 0 or null (no capacity limit), got {self.capacity_factor}"
            )


@dataclass
class Routing:
    """One layer's routing of N token rows: router logits/probabilities [N, E], the chosen experts
    and their gates [N, top_k], and which assignments fit in the capacity [N, top_k]."""

    logits: torch.Tensor
    probs: torch.Tensor
    gates: torch.Tensor
    experts: torch.Tensor
    keep: torch.Tensor


class MoEMLP(nn.Module):
    """Top-k routed experts. Input/output [B, T, d]. Keeps the last forward's routing statistics."""

    def __init__(self, c: MoEConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = c.n_experts, c.top_k
        self.renormalize = c.renormalize_gates
        self.capacity_factor = c.capacity_factor
        self.router = nn.Linear(c.d_model, c.n_experts, bias=False)
        self.experts = nn.ModuleList(
            [MLP(c.d_model, c.expert_width, c.mlp, c.dropout) for _ in range(c.n_experts)]
        )
        self.load_balance: torch.Tensor | None = None  # E * sum_i f_i P_i (unweighted)
        self.z_loss: torch.Tensor | None = None  # mean logsumexp^2 (unweighted)
        self.dropped_frac = 0.0
        self.max_load = 0.0  # max_i f_i * E (1 = perfectly balanced)

    def capacity(self, n_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def route(self, flat: torch.Tensor) -> Routing:
        """Routing of position-major token rows [N, d] (row = position * B + batch row)."""
        e, k, n = self.n_experts, self.top_k, flat.shape[0]
        with torch.autocast(device_type=flat.device.type, enabled=False):
            logits = F.linear(flat.float(), self.router.weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)
        gates, idx = probs.topk(k, dim=-1)  # [N, k]
        if self.renormalize:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        keep = torch.ones_like(idx, dtype=torch.bool)
        cap = self.capacity(n)
        if cap is not None:
            # Queue position of each assignment in (position, batch row, slot) order: an assignment
            # only competes with assignments at the same or earlier positions (causal).
            assign = F.one_hot(idx, e).reshape(n * k, e)
            queue = (assign.cumsum(dim=0) - 1).gather(1, idx.reshape(n * k, 1)).reshape(n, k)
            keep = queue < cap
        return Routing(logits=logits, probs=probs, gates=gates, experts=idx, keep=keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.transpose(0, 1).reshape(t * b, d)  # position-major rows, see route()
        r = self.route(flat)
        out = torch.zeros_like(flat)
        for i, expert in enumerate(self.experts):
            rows, slots = ((r.experts == i) & r.keep).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = expert(flat[rows])
            # index_put_ with accumulate has a deterministic CUDA implementation (index_add_ may not).
            gate = r.gates[rows, slots].unsqueeze(-1).to(out.dtype)
            out.index_put_((rows,), y.to(out.dtype) * gate, accumulate=True)

        n_assign = r.experts.numel()
        f = F.one_hot(r.experts, self.n_experts).sum(dim=(0, 1)).float() / n_assign  # f_i, sums to 1
        self.load_balance = self.n_experts * (f * r.probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(r.logits, dim=-1).square().mean()
        self.dropped_frac = float((~r.keep).sum()) / n_assign
        self.max_load = float(f.max()) * self.n_experts
        return out.reshape(t, b, d).transpose(0, 1)


def moe_layer_matmul_params(c: MoEConfig, active: bool) -> int:
    """Matmul weights of one layer: attention + (top_k or all) experts + router."""
    n_exp = c.top_k if active else c.n_experts
    return (
        llama_attention_matmul_params(c)
        + n_exp * mlp_params(c.d_model, c.expert_width, c.mlp)
        + c.d_model * c.n_experts
    )


def moe_param_formula(c: MoEConfig) -> dict[str, int]:
    """Closed-form parameter counts (the tests compare them with the module)."""
    norms = 2 * c.d_model + (2 * c.dim_head if c.qk_norm else 0)
    embedding = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    total = c.n_layers * (moe_layer_matmul_params(c, active=False) + norms) + c.d_model + embedding
    active = c.n_layers * (moe_layer_matmul_params(c, active=True) + norms) + c.d_model + embedding
    return {"total": total, "non_embedding": total - embedding, "active": active}


@register(
    "moe",
    description="llama with a top-k mixture-of-experts FFN (Switch balance loss, optional z-loss and capacity)",
    presets={
        "nano": dict(n_layers=2, d_model=64, n_heads=2, n_experts=4, top_k=2),
        "micro": dict(n_layers=4, d_model=128, n_heads=2, n_experts=4, top_k=2),
        "tiny": dict(n_layers=6, d_model=256, n_heads=4, n_experts=8, top_k=2),
        "small": dict(n_layers=12, d_model=512, n_heads=8, n_experts=8, top_k=2),
    },
    cpu_presets=("nano", "micro"),
)
class MoE(Llama[MoEConfig]):
    config_class = MoEConfig

    def make_block(self, layer_idx: int) -> nn.Module:
        return Block(self.config, mlp=MoEMLP(self.config))

    def moe_layers(self) -> list[MoEMLP]:
        return [cast(MoEMLP, blk.mlp) for blk in self.blocks]

    def aux_losses(self) -> dict[str, torch.Tensor]:
        c = self.config
        layers = self.moe_layers()
        if layers[0].load_balance is None:  # no forward yet
            return {}
        # A forward sets load_balance and z_loss on every layer at once.
        balance = [cast(torch.Tensor, m.load_balance) for m in layers]
        out = {"load_balance": c.load_balance_weight * torch.stack(balance).mean()}
        if c.z_loss_weight > 0:
            z_loss = [cast(torch.Tensor, m.z_loss) for m in layers]
            out["router_z"] = c.z_loss_weight * torch.stack(z_loss).mean()
        return out

    def stats(self) -> dict[str, float]:
        layers = self.moe_layers()
        if layers[0].load_balance is None:
            return {}
        return {
            "dropped_frac": sum(m.dropped_frac for m in layers) / len(layers),
            "max_expert_load": max(m.max_load for m in layers),  # 1.0 = balanced, E = all on one expert
        }

    def param_counts(self) -> ParamCounts:
        total = sum(p.numel() for p in self.parameters())
        c = self.config
        inactive = c.n_layers * (c.n_experts - c.top_k) * mlp_params(c.d_model, c.expert_width, c.mlp)
        return ParamCounts(
            total=total, non_embedding=total - self.embedding_params(), active=total - inactive
        )

    def flops_per_token(self, seq_len: int) -> float:
        return llama_flops_per_token(self.config, seq_len, moe_layer_matmul_params(self.config, active=True))

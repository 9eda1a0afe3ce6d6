"""`ut_act`: a Universal Transformer with adaptive computation time (ACT).

Sources: Graves, "Adaptive Computation Time for Recurrent Neural Networks" (2016); Dehghani et al.,
"Universal Transformers" (ICLR 2019). One shared step (``n_layers`` llama blocks, default 1) is applied
up to ``max_steps`` times, with a learned step embedding. A position halts once its cumulative halting
probability reaches 1 - ``act_eps``; the output is the halting-probability-weighted sum of its states
(Graves' remainder R on the last one), and ``aux_losses()["ponder"]`` = ponder_weight * mean(N + R).

Causality: every halting decision uses only the position's own state, which depends only on tokens
<= t (tests check each t, also with early exit). By default all max_steps steps run for every
position, so the analytic FLOPs are exact. Details: docs/architectures/ut_act.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel
from lumi.models.layers import RMSNorm, init_linear_weights, scale_residual_projections
from lumi.models.llama import (
    Block,
    LlamaConfig,
    llama_flops_per_token,
    llama_layer_matmul_params,
    llama_param_formula,
    read_out,
)
from lumi.models.registry import register


@dataclass
class UTActConfig(LlamaConfig):
    n_layers: int = 1  # distinct layers in the shared step (1 = one shared block, as in the UT paper)
    max_steps: int = 4
    act_eps: float = 0.01  # halt when the cumulative halting probability reaches 1 - act_eps
    ponder_weight: float = 0.01  # tau in tau * (N + R)
    halt_bias_init: float = 1.0
    freeze_halted: bool = True
    early_exit: bool = False

    def validate(self) -> None:
        super().validate()
        if self.max_steps < 1:
            raise LumiError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.act_eps < 1.0:
            raise LumiError(f"act_eps must be in [0, 1), got {self.act_eps}")
        if self.ponder_weight < 0:
            raise LumiError(f"ponder_weight must be >= 0, got {self.ponder_weight}")
        if self.attention == "flash_attn":
            raise LumiError("attention='flash_attn' is not supported by 'ut_act'; use attention='sdpa'")


def ut_act_param_formula(c: UTActConfig) -> dict[str, int]:
    """Closed-form parameter counts: the llama stack of n_layers + step embedding + halting unit."""
    base = llama_param_formula(c)
    extra = c.max_steps * c.d_model + c.d_model + 1
    return {"total": base["total"] + extra, "non_embedding": base["non_embedding"] + extra}


@register(
    "ut_act",
    description="Universal Transformer: one shared block applied up to max_steps times with per-position ACT halting",
    presets={
        "nano": dict(n_layers=1, d_model=64, n_heads=2, max_steps=2),
        "micro": dict(n_layers=1, d_model=128, n_heads=2, max_steps=4),
        "tiny": dict(n_layers=1, d_model=256, n_heads=4, max_steps=6),
        "small": dict(n_layers=1, d_model=512, n_heads=8, max_steps=12),
    },
    cpu_presets=("nano", "micro"),
)
class UTAct(LumiModel[UTActConfig]):
    config_class = UTActConfig

    def __init__(self, config: UTActConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.step_embed = nn.Parameter(torch.empty(c.max_steps, c.d_model))
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layers)])
        self.halt = nn.Linear(c.d_model, 1, bias=True)
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.embed_dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self._ponder: torch.Tensor | None = None
        self._stats: dict[str, float] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)
        nn.init.normal_(self.step_embed, mean=0.0, std=c.init_std)
        nn.init.constant_(self.halt.bias, c.halt_bias_init)
        # Effective depth is max_steps * n_layers residual updates.
        scale_residual_projections(self, c.n_layers * c.max_steps, zero=c.zero_init_proj, std=c.init_std)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        state = self.embed_dropout(self.embed(tokens))  # [B, T, d]
        b, t, _ = state.shape
        # Halting bookkeeping in float32 (exact thresholds under autocast).
        cum = state.new_zeros(b, t, dtype=torch.float32)  # p_1 + ... + p_{n-1} of running positions
        running = torch.ones(b, t, dtype=torch.bool, device=state.device)
        steps = torch.zeros(b, t, dtype=torch.float32, device=state.device)  # N
        remainder = state.new_zeros(b, t, dtype=torch.float32)  # R
        output = torch.zeros_like(state)
        steps_run = 0
        for n in range(c.max_steps):
            new = self.step(state + self.step_embed[n].to(state.dtype))
            steps_run += 1
            state = torch.where(running.unsqueeze(-1), new, state) if c.freeze_halted else new
            if n == c.max_steps - 1:  # forced halt: every running position ends here
                halts = running
                weight = torch.where(halts, 1.0 - cum, torch.zeros_like(cum))
            else:
                p = torch.sigmoid(self.halt(state).squeeze(-1).float())
                halts = running & (cum + p >= 1.0 - c.act_eps)
                keep_going = running & ~halts
                weight = torch.where(keep_going, p, torch.where(halts, 1.0 - cum, torch.zeros_like(cum)))
            remainder = torch.where(halts, 1.0 - cum, remainder)
            steps = torch.where(halts, torch.full_like(steps, n + 1), steps)
            output = output + weight.unsqueeze(-1).to(state.dtype) * state
            if n < c.max_steps - 1:
                cum = torch.where(keep_going, cum + p, cum)
                running = keep_going
                if c.early_exit and not bool(running.any()):
                    break
        self._ponder = (steps + remainder).mean()
        self._stats = {
            "act_steps_mean": float(steps.mean()),
            "act_steps_max": float(steps.max()),
            "act_remainder_mean": float(remainder.mean().detach()),
            "steps_run": float(steps_run),
        }
        return read_out(self.norm(output), self.embed, self.lm_head, c.logit_softcap)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        if self._ponder is None:
            return {}
        return {"ponder": self.config.ponder_weight * self._ponder}

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def flops_per_token(self, seq_len: int) -> float:
        """llama's at depth max_steps x n_layers, plus the halting unit of every step but the last."""
        c = self.config
        depth = c.max_steps * c.n_layers
        halting = 6.0 * (c.max_steps - 1) * c.d_model
        return llama_flops_per_token(c, seq_len, llama_layer_matmul_params(c), depth=depth) + halting

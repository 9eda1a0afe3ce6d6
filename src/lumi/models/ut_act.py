"""`ut_act`: a Universal Transformer with adaptive computation time (ACT).

Sources: Graves, "Adaptive Computation Time for Recurrent Neural Networks" (2016); Dehghani et al.,
"Universal Transformers" (ICLR 2019). ARCHITECTURES.md §3; PR #1589 tried it (1.6967 BPB, 3x step time).

What is implemented: one shared llama block (``n_layers`` distinct layers applied in sequence form the
shared step; the default 1 is the paper's single shared block) is applied up to ``max_steps`` times.

- Position and step signal: RoPE inside attention carries the position (as in every Lumi llama);
  a learned step embedding (``max_steps`` x d_model, init N(0, init_std)) is added to the state
  before each application. (UT adds sinusoidal position + step signals; RoPE replaces the position part.)
- Halting, per position (Graves): after step n the new state s_n gives p_n = sigmoid(w . s_n + b).
  Position t halts at the first step N with p_1 + ... + p_N >= 1 - ``act_eps`` (or at ``max_steps``).
  The remainder R = 1 - (p_1 + ... + p_{N-1}) weights the final step: the output is
  sum_{n<N} p_n s_n + R s_N, a p-weighted average whose weights sum to exactly 1, followed by the
  final RMSNorm and the head. The halting bias starts at ``halt_bias_init`` (default 1.0, the
  tensor2tensor UT default: p ~ 0.73, so a position takes 2 steps at init instead of halting at once).
- Halted positions keep their state (``freeze_halted``, as in the UT paper: "its state is simply
  copied to the next step"); other positions still attend to it. With freeze_halted=False every
  position's state keeps evolving and only the output weights stop.
- Ponder cost: ``aux_losses()["ponder"] = ponder_weight * mean over positions of (N + R)``; N is a
  count, so the gradient flows through R (Graves). ``stats()`` reports the mean steps N taken
  (``act_steps_mean``), its maximum, the mean remainder and the steps actually run.

Every halting decision uses only the position's own state, which depends only on tokens <= t, so the
model is causal at every position (tests check each t, also with early exit).

Compute: by default (``early_exit=False``) all ``max_steps`` applications run for all positions,
because in training a batch almost always has some position that runs to the end and attention needs
every position's state at every step. So the analytic FLOPs are those of max_steps steps — exactly what
runs and what the counter measures: 6 * [max_steps * n_layers * layer matmuls + (max_steps - 1) * d
halting units (the last step's halting unit is not needed: that step halts every position) + V * d
head] + attention over the full T x T for max_steps * n_layers layers. ``early_exit=True`` stops as
soon as every position has halted (identical output, fewer FLOPs; then the analytic number is an
upper bound and ``stats()["steps_run"]`` says what ran).

Parameters: n_layers * (llama layer) + max_steps * d (step embedding) + d + 1 (halting unit) + d
(final norm) + embeddings (V * d, twice when untied).
Not implemented: a KV cache (ACT state per step), the tensor2tensor variant that computes p before
the transition and interpolates states (we follow Graves' form, which the issue describes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel
from lumi.models.layers import RMSNorm, init_linear_weights, scale_residual_projections, softcap
from lumi.models.llama import (
    Block,
    LlamaConfig,
    attention_flops_per_token,
    llama_layer_matmul_params,
    llama_param_formula,
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
class UTAct(LumiModel):
    config_class = UTActConfig
    config: UTActConfig

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
        h = self.norm(output)
        logits = F.linear(h, self.embed.weight) if self.lm_head is None else self.lm_head(h)
        return softcap(logits, c.logit_softcap)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        if self._ponder is None:
            return {}
        return {"ponder": self.config.ponder_weight * self._ponder}

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        width = c.n_heads * c.dim_head
        matmul = (
            c.max_steps * c.n_layers * llama_layer_matmul_params(c)
            + (c.max_steps - 1) * c.d_model
            + c.vocab_size * c.d_model
        )
        return 6.0 * matmul + attention_flops_per_token(c.max_steps * c.n_layers, seq_len, width, width)

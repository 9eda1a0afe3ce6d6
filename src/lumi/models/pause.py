"""`pause`: llama with learned pause vectors inserted inside the model.

Sources: Goyal et al., "Think before you speak: training language models with pause tokens" (ICLR
2024); parameter-golf PR #1589 (4 learned pauses after every 64 real tokens). After every
``pause_every`` real tokens, ``n_pause`` learned vectors are inserted into the embedded sequence and the
llama stack runs on that longer internal sequence; the model still returns one prediction per real
position, and a position followed by a pause group reads its logits at the group's last pause.

Causality: the output for real position t reads internal position <= (index of t) + n_pause, and the
first internal position holding a real token > t lies beyond it (tests check every t). A group also
follows the last token when T is a multiple of pause_every, so no prediction depends on T.
Details: docs/architectures/pause.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lumi.errors import LumiError
from lumi.models.base import LumiModel
from lumi.models.layers import RMSNorm, init_linear_weights, scale_residual_projections
from lumi.models.llama import (
    Block,
    LlamaConfig,
    attention_flops_per_token,
    llama_layer_matmul_params,
    llama_param_formula,
    read_out,
)
from lumi.models.registry import register


@dataclass
class PauseConfig(LlamaConfig):
    n_pause: int = 2  # learned pause vectors per insertion
    pause_every: int = 16  # insert a group after every this many real tokens

    def validate(self) -> None:
        super().validate()
        if self.n_pause < 1:
            raise LumiError(f"n_pause must be >= 1 (use model 'llama' for no pauses), got {self.n_pause}")
        if self.pause_every < 1:
            raise LumiError(f"pause_every must be >= 1, got {self.pause_every}")
        if self.attention == "flash_attn":
            raise LumiError("attention='flash_attn' is not supported by 'pause'; use attention='sdpa'")


def internal_length(seq_len: int, n_pause: int, pause_every: int) -> int:
    """Length of the sequence the stack runs on: real tokens plus every pause group."""
    return seq_len + n_pause * (seq_len // pause_every)


def pause_layout(
    seq_len: int, n_pause: int, pause_every: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps for T real tokens.

    Returns ``source`` [L]: for each internal position, the row of cat([real tokens (T rows),
    pause vectors (n_pause rows)]) it holds; and ``read`` [T]: the internal position whose state
    predicts after real position t (the last pause of a group that directly follows t, else t itself).
    """
    t = torch.arange(seq_len, device=device)
    real_at = t + n_pause * (t // pause_every)  # internal index of real token t
    length = internal_length(seq_len, n_pause, pause_every)
    source = torch.empty(length, dtype=torch.long, device=device)
    source[real_at] = t
    ends = t[(t + 1) % pause_every == 0]  # real positions followed by a pause group
    for j in range(n_pause):
        source[real_at[ends] + 1 + j] = seq_len + j
    read = torch.where((t + 1) % pause_every == 0, real_at + n_pause, real_at)
    return source, read


def pause_param_formula(c: PauseConfig) -> dict[str, int]:
    """Closed-form parameter counts: llama's plus the pause vectors (counted as embeddings)."""
    base = llama_param_formula(c)
    return {"total": base["total"] + c.n_pause * c.d_model, "non_embedding": base["non_embedding"]}


@register(
    "pause",
    description="llama with learned pause vectors inserted after every k real tokens; predictions read after the pauses",
    presets={
        "nano": dict(n_layers=2, d_model=64, n_heads=2),
        "micro": dict(n_layers=4, d_model=128, n_heads=2),
        "tiny": dict(n_layers=6, d_model=256, n_heads=4),
        "small": dict(n_layers=12, d_model=512, n_heads=8, pause_every=64, n_pause=4),
    },
    cpu_presets=("nano", "micro"),
)
class Pause(LumiModel[PauseConfig]):
    config_class = PauseConfig

    def __init__(self, config: PauseConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pause_embed = nn.Parameter(torch.empty(c.n_pause, c.d_model))
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layers)])
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.embed_dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self._last_ratio = 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)
        nn.init.normal_(self.pause_embed, mean=0.0, std=c.init_std)
        scale_residual_projections(self, c.n_layers, zero=c.zero_init_proj, std=c.init_std)

    def embedding_params(self) -> int:
        return super().embedding_params() + self.pause_embed.numel()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, t = tokens.shape
        source, read = pause_layout(t, c.n_pause, c.pause_every, tokens.device)
        real = self.embed(tokens)
        pauses = self.pause_embed.to(real.dtype).unsqueeze(0).expand(b, -1, -1)
        x = self.embed_dropout(torch.cat([real, pauses], dim=1).index_select(1, source))  # [B, L, d]
        for block in self.blocks:
            if c.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        self._last_ratio = source.numel() / t
        h = self.norm(x.index_select(1, read))  # [B, T, d]: one state per real position
        return read_out(h, self.embed, self.lm_head, c.logit_softcap)

    def stats(self) -> dict[str, float]:
        return {"internal_len_ratio": self._last_ratio}

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        length = internal_length(seq_len, c.n_pause, c.pause_every)
        width = c.n_heads * c.dim_head
        stack = 6.0 * c.n_layers * llama_layer_matmul_params(c) + attention_flops_per_token(
            c.n_layers, length, width, width
        )
        return stack * length / seq_len + 6.0 * c.vocab_size * c.d_model

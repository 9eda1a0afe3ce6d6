"""`recurrent`: depth recurrence — a span of `llama` layers re-applied with learned per-pass scales.

Source: parameter-golf PR #686 (msisovic, "Depth Recurrence": layers 4,5 of 11 executed twice with
learnable block scalars) and its use in PR #1589. Layers [loop_start, loop_end) run ``loops`` times
(pattern 0..e-1, s..e-1, ..., e..L-1) with shared weights; every extra pass has its own scales on the
attention and MLP residual branches. With loops = 1 the model is llama exactly (same parameter names,
identical logits). Parameters scale with the unique depth, FLOPs with the effective depth.
Details: docs/architectures/recurrent.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lumi.errors import LumiError
from lumi.models.layers import KVCache, LayerKVCache, init_linear_weights, scale_residual_projections
from lumi.models.llama import (
    Block,
    Llama,
    LlamaConfig,
    llama_flops_per_token,
    llama_layer_matmul_params,
    llama_param_formula,
)
from lumi.models.registry import register


@dataclass
class RecurrentConfig(LlamaConfig):
    loop_start: int | None = None  # first looped layer; null = the middle two layers
    loop_end: int | None = None  # one past the last looped layer
    loops: int = 2  # passes over the span; 1 = llama exactly
    per_channel_scales: bool = True
    pass_scale_init: float = 1.0

    @property
    def span(self) -> tuple[int, int]:
        if self.loop_start is None and self.loop_end is None:
            width = min(2, self.n_layers)
            start = (self.n_layers - width) // 2
            return start, start + width
        start = self.loop_start if self.loop_start is not None else 0
        end = self.loop_end if self.loop_end is not None else self.n_layers
        return start, end

    @property
    def effective_depth(self) -> int:
        start, end = self.span
        return self.n_layers + (self.loops - 1) * (end - start)

    def virtual_layers(self) -> list[tuple[int, int]]:
        """(block index, pass index) in execution order; pass 0 is the plain block."""
        start, end = self.span
        order = [(i, 0) for i in range(start)]
        for p in range(self.loops):
            order += [(i, p) for i in range(start, end)]
        return order + [(i, 0) for i in range(end, self.n_layers)]

    def validate(self) -> None:
        super().validate()
        if self.loops < 1:
            raise LumiError(f"loops must be >= 1 (1 = the llama baseline), got {self.loops}")
        start, end = self.span
        if not 0 <= start < end <= self.n_layers:
            raise LumiError(
                f"loop_start/loop_end must satisfy 0 <= loop_start < loop_end <= n_layers={self.n_layers}, "
                f"got loop_start={self.loop_start}, loop_end={self.loop_end}"
            )


@register(
    "recurrent",
    description="Depth recurrence (parameter-golf PR #686): llama with a layer span re-applied with per-pass scales",
    presets={
        "nano": dict(n_layers=2, d_model=64, n_heads=2, loops=2),  # layers 0,1,0,1
        "micro": dict(n_layers=4, d_model=128, n_heads=2, loops=2),  # layers 0,1,2,1,2,3
        "tiny": dict(n_layers=6, d_model=256, n_heads=4, loops=2),  # layers 0..3,2,3,4,5
        "small": dict(n_layers=12, d_model=512, n_heads=8, loops=2),  # 14 virtual layers from 12
    },
    cpu_presets=("nano", "micro"),
)
class Recurrent(Llama[RecurrentConfig]):
    config_class = RecurrentConfig

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__(config)
        start, end = config.span
        if config.loops > 1:
            width = config.d_model if config.per_channel_scales else 1
            self.scales_shape = (config.loops - 1, end - start, width)  # (extra pass, looped block, channel)
            # Stored flat (1-D) so optimizers treat them as vector parameters (no decay, no Muon).
            n = (config.loops - 1) * (end - start) * width
            self.attn_scales = nn.Parameter(torch.full((n,), float(config.pass_scale_init)))
            self.mlp_scales = nn.Parameter(torch.full((n,), float(config.pass_scale_init)))

    def pass_scales(self, extra_pass: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention, MLP) branch scales of extra pass ``extra_pass`` (1 = the second pass) of a looped block."""
        i = self.config.span[0]
        shape = self.scales_shape
        return (
            self.attn_scales.view(shape)[extra_pass - 1, block - i],
            self.mlp_scales.view(shape)[extra_pass - 1, block - i],
        )

    @property
    def unique_depth(self) -> int:
        return self.config.n_layers

    @property
    def effective_depth(self) -> int:
        return self.config.effective_depth

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)
        scale_residual_projections(self, c.effective_depth, zero=c.zero_init_proj, std=c.init_std)
        for name in ("attn_scales", "mlp_scales"):
            if hasattr(self, name):
                nn.init.constant_(getattr(self, name), float(c.pass_scale_init))

    def new_cache(self) -> KVCache:
        return KVCache(layers=[LayerKVCache() for _ in range(self.config.effective_depth)])

    def _extra_pass(
        self, block: Block, x: torch.Tensor, a: torch.Tensor, m: torch.Tensor, cache: LayerKVCache | None
    ) -> torch.Tensor:
        x = x + a * block.resid_dropout(block.attn(block.attn_norm(x), cache))
        return x + m * block.mlp(block.mlp_norm(x))

    def hidden_states(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        c = self.config
        x = self.embed_dropout(self.embed(tokens))
        for v, (i, p) in enumerate(c.virtual_layers()):
            block = cast(Block, self.blocks[i])
            layer_cache = cache.layers[v] if cache is not None else None
            use_ckpt = c.gradient_checkpointing and self.training and layer_cache is None
            if p == 0:
                x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x, layer_cache)
            else:
                args = (block, x, *self.pass_scales(p, i), layer_cache)
                x = (
                    checkpoint(self._extra_pass, *args, use_reentrant=False)
                    if use_ckpt
                    else self._extra_pass(*args)
                )
        if cache is not None:
            cache.position += tokens.shape[1]
        return self.norm(x)

    def stats(self) -> dict[str, float]:
        return {"unique_depth": float(self.unique_depth), "effective_depth": float(self.effective_depth)}

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        return llama_flops_per_token(c, seq_len, llama_layer_matmul_params(c), depth=c.effective_depth)


def recurrent_param_formula(c: RecurrentConfig) -> dict[str, int]:
    """llama's count at unique depth plus the per-pass scales."""
    base = llama_param_formula(c)
    start, end = c.span
    scales = 2 * (c.loops - 1) * (end - start) * (c.d_model if c.per_channel_scales else 1)
    return {"total": base["total"] + scales, "non_embedding": base["non_embedding"] + scales}

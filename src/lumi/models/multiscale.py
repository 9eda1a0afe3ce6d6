"""`multiscale`: causal multi-scale averaging in place of attention (the LUMI-Arch family).

Source: Mikeore/lumi-arch-research (notes only, no code; commit 68c2d57 discloses "Causal Multi-Scale
Averaging"). The `llama` stack where most layers replace attention by a mixer: causal means of a value
projection over the last w positions for every w in ``windows`` (default 1,4,16,64), fused with learned
softmax weights; every ``attn_every``-th layer is causal attention without positional encoding (NoPE).

Causality: the mean at t covers positions max(0, t-w+1)..t only (prefix-sum differences in float32);
cached decoding keeps the last max(windows)-1 values. The means and the fusion are elementwise, so
they count 0 FLOPs. Details and the parameter matching with llama: docs/architectures/multiscale.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import check_choice
from lumi.models.layers import MLP, KVCache, LayerKVCache, RMSNorm, mlp_params
from lumi.models.llama import (
    Block,
    Llama,
    LlamaConfig,
    attention_flops_per_token,
    block_attention,
    llama_attention_matmul_params,
)
from lumi.models.registry import register

FUSIONS = ("channel", "scalar")
EARLY_POSITIONS = ("available", "zero_pad")


@dataclass
class MultiScaleConfig(LlamaConfig):
    windows: str = "1,4,16,64"  # comma-separated causal averaging windows
    attn_every: int = 4  # every k-th layer is NoPE attention; 0 = no attention layers
    fusion: str = "channel"
    early_positions: str = "available"
    value_proj: bool = True

    @property
    def window_sizes(self) -> tuple[int, ...]:
        return parse_windows(self.windows)

    def is_attention_layer(self, i: int) -> bool:
        return self.attn_every > 0 and (i + 1) % self.attn_every == 0

    @property
    def n_attention_layers(self) -> int:
        return sum(self.is_attention_layer(i) for i in range(self.n_layers))

    def validate(self) -> None:
        super().validate()
        parse_windows(self.windows)
        if self.attn_every < 0:
            raise LumiError(f"attn_every must be >= 0 (0 = no attention layers), got {self.attn_every}")
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("early_positions", self.early_positions, EARLY_POSITIONS)
        if self.attention != "sdpa":
            raise LumiError(f"attention must be 'sdpa' for multiscale, got {self.attention!r}")


def parse_windows(windows: str | list | tuple) -> tuple[int, ...]:
    """'1,4,16,64' (or a list of ints) -> (1, 4, 16, 64); raises LumiError naming the field."""
    items = windows.split(",") if isinstance(windows, str) else list(windows)
    try:
        sizes = tuple(int(str(w).strip()) for w in items)
    except ValueError:
        raise LumiError(
            f"windows must be comma-separated positive integers like '1,4,16,64', got {windows!r}"
        ) from None
    if not sizes or any(w < 1 for w in sizes) or len(set(sizes)) != len(sizes):
        raise LumiError(f"windows must be distinct positive integers like '1,4,16,64', got {windows!r}")
    return sizes


@dataclass
class MixerCache:
    """Decoding state of one mixer layer: the last max(windows)-1 values and the position count."""

    v: torch.Tensor | None = None  # [B, <= max_window-1, d], float32
    length: int = 0


class MultiScaleMixer(nn.Module):
    """Causal means over several windows of a value projection, fused by learned softmax weights."""

    def __init__(self, c: MultiScaleConfig) -> None:
        super().__init__()
        self.windows = c.window_sizes
        self.zero_pad = c.early_positions == "zero_pad"
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=False) if c.value_proj else None
        self.o_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.fusion_width = c.d_model if c.fusion == "channel" else 1
        # Stored flat (1-D) so optimizers treat it as a vector parameter (no decay, no Muon);
        # viewed as [scales, width]. All zeros = equal weight on every scale.
        self.scale_logits = nn.Parameter(torch.zeros(len(self.windows) * self.fusion_width))

    def forward(self, x: torch.Tensor, cache: MixerCache | None = None) -> torch.Tensor:
        b, t, d = x.shape
        v = (self.v_proj(x) if self.v_proj is not None else x).float()
        offset = cache.length if cache is not None else 0
        past = cache.v if cache is not None and cache.v is not None else v.new_zeros(b, 0, d)
        seq = torch.cat([past, v], dim=1)  # rows cover absolute positions offset-P .. offset+t-1
        p = past.shape[1]
        # prefix[j] = sum of seq[:j]; mean over a window = difference of two prefix sums.
        prefix = torch.cat([seq.new_zeros(b, 1, d), seq.cumsum(dim=1)], dim=1)
        end = torch.arange(p + 1, p + t + 1, device=x.device)  # one past each new row
        abs_pos = torch.arange(offset, offset + t, device=x.device)
        weights = self.fusion_weights()  # [S, d] or [S, 1]
        out = torch.zeros(b, t, d, device=x.device, dtype=torch.float32)
        for s, w in enumerate(self.windows):
            start = (end - w).clamp(min=0)
            total = prefix[:, end] - prefix[:, start]
            count = float(w) if self.zero_pad else torch.clamp(abs_pos + 1, max=w).to(torch.float32)[:, None]
            out = out + weights[s] * (total / count)
        if cache is not None:
            keep = max(self.windows) - 1
            cache.v = seq[:, seq.shape[1] - min(keep, seq.shape[1]) :].detach() if keep > 0 else None
            cache.length = offset + t
        return self.o_proj(out.to(x.dtype))

    def fusion_weights(self) -> torch.Tensor:
        """Softmax over the scales of the fusion logits: [scales, d_model] ("channel") or [scales, 1]."""
        return torch.softmax(self.scale_logits.float().view(len(self.windows), self.fusion_width), dim=0)

    def num_matmul_params(self) -> int:
        return self.o_proj.weight.numel() + (self.v_proj.weight.numel() if self.v_proj is not None else 0)


class MultiScaleBlock(nn.Module):
    """Pre-norm residual block with a multi-scale mixer in place of attention."""

    def __init__(self, c: MultiScaleConfig) -> None:
        super().__init__()
        self.mix_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mixer = MultiScaleMixer(c)
        self.mlp_norm = RMSNorm(c.d_model, c.norm_eps)
        self.mlp = MLP(c.d_model, c.ffn, c.mlp, c.dropout)
        self.resid_dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, cache: MixerCache | None = None) -> torch.Tensor:
        x = x + self.resid_dropout(self.mixer(self.mix_norm(x), cache))
        return x + self.mlp(self.mlp_norm(x))


class NoPEBlock(Block):
    """The llama block with full causal attention and no positional encoding at all."""

    def __init__(self, c: MultiScaleConfig) -> None:
        super().__init__(c, attn=block_attention(c, use_rope=False))


def mixer_layer_matmul_params(c: MultiScaleConfig) -> int:
    return c.d_model * c.d_model * (2 if c.value_proj else 1)


def multiscale_param_formula(c: MultiScaleConfig) -> dict[str, int]:
    """Closed-form parameter counts (the tests compare them with the module)."""
    n_attn = c.n_attention_layers
    n_mix = c.n_layers - n_attn
    fusion = len(c.window_sizes) * (c.d_model if c.fusion == "channel" else 1)
    common = mlp_params(c.d_model, c.ffn, c.mlp) + 2 * c.d_model
    attn_layer = llama_attention_matmul_params(c) + common + (2 * c.dim_head if c.qk_norm else 0)
    mix_layer = mixer_layer_matmul_params(c) + fusion + common
    embedding = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    total = n_attn * attn_layer + n_mix * mix_layer + c.d_model + embedding
    return {"total": total, "non_embedding": total - embedding}


@register(
    "multiscale",
    description="LUMI-style causal multi-scale averaging (windows 1/4/16/64) with NoPE attention every 4th layer",
    presets={
        # Parameter-matched to the llama preset of the same name (see docs/architectures/multiscale.md):
        # the FFN width absorbs the parameters the mixers save over attention.
        "nano": dict(
            n_layers=2, d_model=64, n_heads=2, attn_every=2, ffn_hidden=277
        ),  # llama:nano +128 (+0.1%)
        "micro": dict(n_layers=4, d_model=128, n_heads=2, ffn_hidden=575),  # == llama:micro exactly
        "micro_deep": dict(
            n_layers=5, d_model=128, n_heads=2, ffn_hidden=443
        ),  # llama:micro +896 (+0.085%), deeper
        "tiny": dict(n_layers=6, d_model=256, n_heads=4, ffn_hidden=1165),  # llama:tiny -512 (-0.008%)
        "small": dict(n_layers=12, d_model=512, n_heads=8, ffn_hidden=2303),  # == llama:small exactly
    },
    cpu_presets=("nano", "micro"),
)
class MultiScale(Llama[MultiScaleConfig]):
    config_class = MultiScaleConfig

    def make_block(self, layer_idx: int) -> nn.Module:
        c = self.config
        return NoPEBlock(c) if c.is_attention_layer(layer_idx) else MultiScaleBlock(c)

    def new_cache(self) -> KVCache:
        c = self.config
        return KVCache(
            layers=[LayerKVCache() if c.is_attention_layer(i) else MixerCache() for i in range(c.n_layers)]
        )

    def stats(self) -> dict[str, float]:
        return {"attention_layers": float(self.config.n_attention_layers)}

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        n_attn = c.n_attention_layers
        n_mix = c.n_layers - n_attn
        mlp = mlp_params(c.d_model, c.ffn, c.mlp)
        matmul = (
            n_attn * (llama_attention_matmul_params(c) + mlp)
            + n_mix * (mixer_layer_matmul_params(c) + mlp)
            + c.vocab_size * c.d_model
        )
        qk = c.n_heads * c.dim_head
        return 6.0 * matmul + attention_flops_per_token(n_attn, seq_len, qk, qk)

"""A complete Lumi plugin: a tiny "shift-mix" language model in one file.

Each layer mixes a position with the previous `window - 1` positions through one linear layer
over their concatenation (causal by construction: it only ever shifts to the right), then
applies an MLP. Run it with:  lumi check shiftmix --model-file shiftmix.py
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi import LumiModel, ModelConfig, register


@dataclass
class ShiftMixConfig(ModelConfig):
    vocab_size: int = 256
    n_layers: int = 2
    d_model: int = 64
    window: int = 4  # how many positions (this one and the previous window-1) a layer mixes

    def validate(self) -> None:
        super().validate()
        from lumi.errors import LumiError

        if self.window < 1:
            raise LumiError(f"window must be >= 1, got {self.window}")


class ShiftMixBlock(nn.Module):
    def __init__(self, d: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.mix_norm, self.mlp_norm = nn.RMSNorm(d), nn.RMSNorm(d)
        self.mix = nn.Linear(window * d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix_norm(x)
        # Position t sees t, t-1, ..., t-window+1: pad on the left, never on the right.
        shifted = [F.pad(h, (0, 0, s, 0))[:, : h.shape[1]] for s in range(self.window)]
        x = x + self.mix(torch.cat(shifted, dim=-1))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


@register("shiftmix", description="Plugin example: causal shift-and-mix layers + MLP",
          presets={"nano": dict(n_layers=2, d_model=64), "small": dict(n_layers=4, d_model=128)},
          cpu_presets=["nano"])
class ShiftMix(LumiModel):
    config_class = ShiftMixConfig
    check_overfit_lr = 1e-2  # `lumi check` overfits one batch; this model likes a larger step

    def __init__(self, config: ShiftMixConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(ShiftMixBlock(c.d_model, c.window) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        # Training = 3 x forward; forward = 2 x multiply-accumulates of every matmul (incl. the head).
        matmul_params = c.n_layers * (c.window * c.d_model**2 + 8 * c.d_model**2) + c.d_model * c.vocab_size
        return 6.0 * matmul_params

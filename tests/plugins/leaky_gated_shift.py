"""Deliberately broken: an RWKV-style "time shift" whose shift reads position t+1, behind a gate
initialised to zero.

The bug: each block blends its input with the *shifted* input through a learned per-channel gate,
``x + mix * (shift(x) - x)``, and the shift pads on the wrong side:
``F.pad(x, (0, 0, 0, 1))[:, 1:]`` is position t+1. Written honestly the shift pads on the left,
``F.pad(x, (0, 0, 1, 0))[:, :-1]`` (position t-1), as in ``shiftmix.py``.

Why a naive check misses it: the gate starts at zero ("start as identity", a common trick), so at
initialisation the leak adds exactly 0 to the logits and exactly 0 to d logits / d input — both the
perturbation and the gradient probe of a freshly initialised model pass. The gate's own gradient is
not zero, so a few optimizer steps open it and the model reads the next token.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lumi import register
from lumi.models.llama import Block, Llama


class GatedShiftBlock(Block):
    def __init__(self, c):
        super().__init__(c)
        self.time_mix = nn.Parameter(torch.zeros(c.d_model))  # zero: the block starts as a plain llama block

    def forward(self, x, cache=None):
        shifted = F.pad(x, (0, 0, 0, 1))[:, 1:]  # the bug: the "previous" token is the next one
        x = x + self.time_mix * (shifted - x)
        return super().forward(x, cache)


@register("leaky_gated_shift", description="BROKEN on purpose: zero-init gated token shift that reads t+1",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyGatedShift(Llama):
    def make_block(self, layer_idx):
        return GatedShiftBlock(self.config)

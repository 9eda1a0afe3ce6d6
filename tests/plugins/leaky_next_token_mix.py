"""Deliberately broken: every block mixes in the next position's state (x + roll(x, -1)).

`lumi check` must reject it. Used by tests/test_check.py.
"""

import torch

from lumi import register
from lumi.models.llama import Block, Llama


class NextTokenMixBlock(Block):
    def forward(self, x, cache=None):
        x = x + 0.5 * torch.roll(x, shifts=-1, dims=1)  # the bug: position t reads t+1
        return super().forward(x, cache)


@register("leaky_next_token_mix", description="BROKEN on purpose: blocks mix in the next token",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyNextTokenMix(Llama):
    def make_block(self, layer_idx):
        return NextTokenMixBlock(self.config)

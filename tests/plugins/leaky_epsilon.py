"""Deliberately broken, subtly: the first block adds 1e-7 x the next position's embedding.

The effect on the logits is far below the perturbation tolerance (1e-5), so only the
gradient probe of `lumi check` can see it. Used by tests/test_check.py.
"""

import torch

from lumi import register
from lumi.models.llama import Block, Llama


class EpsilonLeakBlock(Block):
    def forward(self, x, cache=None):
        x = x + 1e-7 * torch.roll(x, shifts=-1, dims=1)  # the bug, scaled to hide in float noise
        return super().forward(x, cache)


@register("leaky_epsilon", description="BROKEN on purpose: future tokens leak with weight 1e-7",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyEpsilon(Llama):
    def make_block(self, layer_idx):
        return EpsilonLeakBlock(self.config) if layer_idx == 0 else Block(self.config)

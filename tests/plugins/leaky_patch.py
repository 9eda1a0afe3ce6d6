"""Deliberately broken: each position adds the mean of its own patch of 4 (the "patch decoder
sees its own patch" leak). Only the last position of a patch is innocent, so the check has to
probe every position. Used by tests/test_check.py.
"""

import torch.nn.functional as F

from lumi import register
from lumi.models.llama import Block, Llama

PATCH = 4


class OwnPatchMeanBlock(Block):
    def forward(self, x, cache=None):
        b, t, d = x.shape
        pad = (-t) % PATCH
        patches = F.pad(x, (0, 0, 0, pad)).view(b, -1, PATCH, d)
        pooled = patches.mean(dim=2, keepdim=True).expand_as(patches).reshape(b, -1, d)[:, :t]
        return super().forward(x + pooled, cache)  # the bug: the pool includes later positions


@register("leaky_patch", description="BROKEN on purpose: positions see the mean of their own patch",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyPatch(Llama):
    def make_block(self, layer_idx):
        return OwnPatchMeanBlock(self.config) if layer_idx == 0 else Block(self.config)

"""Deliberately broken: a "time-norm" branch whose inference fast path is not causal.

Each block adds a branch that divides its (normalised) input, channel by channel, by the RMS over
time so far, sqrt(mean_{s<=t} h_s^2). The training path computes it with a cumulative sum. The bug
is a fast path taken only when autograd is off (evaluation, generation): "generation only needs the
last position, whose prefix statistic is the one over the whole sequence", so it uses
``h.pow(2).mean(1)`` for *every* position — position t then normalises by tokens after t. Written
honestly the fast path is the cumulative statistic too (or is applied to the last position only).

Why a naive check misses it: anything that runs with gradients enabled — a gradient probe, training
itself — takes the causal path. Only a forward under ``torch.no_grad()`` leaks.
"""

import torch
from torch import nn

from lumi import register
from lumi.models.layers import RMSNorm
from lumi.models.llama import Block, Llama


class PrefixMeanBlock(Block):
    def __init__(self, c):
        super().__init__(c)
        self.ctx_norm = RMSNorm(c.d_model, c.norm_eps)
        self.ctx_proj = nn.Linear(c.d_model, c.d_model, bias=False)

    def prefix_rms(self, h):
        if not torch.is_grad_enabled():  # inference fast path
            return h.pow(2).mean(dim=1, keepdim=True).sqrt()  # the bug: over ALL positions
        counts = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)
        return (h.pow(2).cumsum(dim=1) / counts[None, :, None]).sqrt()

    def forward(self, x, cache=None):
        h = self.ctx_norm(x)
        x = x + self.ctx_proj(h / (self.prefix_rms(h) + 1e-5))
        return super().forward(x, cache)


@register("leaky_no_grad", description="BROKEN on purpose: prefix-mean branch leaks under torch.no_grad()",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyNoGrad(Llama):
    def make_block(self, layer_idx):
        return PrefixMeanBlock(self.config)

    def flops_per_token(self, seq_len):
        c = self.config
        return super().flops_per_token(seq_len) + 6.0 * c.n_layers * c.d_model**2  # + ctx_proj

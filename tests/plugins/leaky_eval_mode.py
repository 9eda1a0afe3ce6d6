"""Deliberately broken: "token-shift dropout" whose eval-time expectation uses a centred kernel.

Training regulariser: with probability p each position's embedding is replaced by the previous
position's (causal). In eval mode the model, like dropout, uses the expectation instead of a random
draw — and the bug is that the expectation is written as a symmetric smoothing,
``(1 - p) e_t + p/2 (e_{t-1} + e_{t+1})``, so every position reads the next token's embedding.
Written honestly the expectation is ``(1 - p) e_t + p e_{t-1}``.

Why a naive check misses it: training runs in train mode, where the model is causal, so a check of
the training forward (or a gradient probe taken in train mode) sees nothing. Only ``model.eval()``
— validation, generation — leaks.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lumi import register
from lumi.models.llama import Llama, LlamaConfig


@dataclass
class ShiftDropConfig(LlamaConfig):
    shift_p: float = 0.2  # probability that a position sees its predecessor's embedding instead


@register("leaky_eval_mode", description="BROKEN on purpose: eval-mode smoothing reads the next token",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyEvalMode(Llama):
    config_class = ShiftDropConfig

    def shift_dropout(self, e):
        p = self.config.shift_p
        prev = F.pad(e, (0, 0, 1, 0))[:, :-1]
        if self.training:
            swap = torch.rand(e.shape[:2], device=e.device) < p
            return torch.where(swap[..., None], prev, e)
        nxt = F.pad(e, (0, 0, 0, 1))[:, 1:]
        return (1 - p) * e + p / 2 * (prev + nxt)  # the bug: "expectation" with a centred kernel

    def hidden_states(self, tokens, cache=None):
        x = self.shift_dropout(self.embed(tokens))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

"""Deliberately broken: sliding-window attention whose window is off by one past the window size.

The bug: positions t < window use the plain causal mask; past that, each query keeps only its last
``window`` keys, built row by row with ``mask[t, t - window + 1 : t + 2]`` — the slice end is t + 2,
so key t+1 is visible to every query t >= window (200 by default). Written honestly the slice is
``t - window + 1 : t + 1``.

Why a naive check misses it: the model is exactly causal at every position below 200, so probes at
T = 32 (or any T <= 200) see nothing. It has no maximum context (RoPE), so it is trained at 256+
where a quarter or more of the positions read the next token.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lumi import register
from lumi.models.layers import Attention, RotaryEmbedding
from lumi.models.llama import Block, Llama, LlamaConfig


@dataclass
class WindowConfig(LlamaConfig):
    window: int = 200  # attention span once the sequence is longer than this


def window_mask(t: int, window: int, device) -> torch.Tensor:
    mask = torch.ones(t, t, dtype=torch.bool, device=device).tril()  # short sequences: plain causal
    for i in range(window, t):  # past the window: only the last `window` keys
        mask[i] = False
        mask[i, i - window + 1: i + 2] = True  # the bug: the end should be i + 1
    return mask


class WindowAttention(Attention):
    window = 200

    def forward(self, x, cache=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rope.cos_sin(t, 0, x.device)
        q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(t, self.window, x.device))
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


@register("leaky_beyond_position", description="BROKEN on purpose: sliding window sees key t+1 past position 200",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyBeyondPosition(Llama):
    config_class = WindowConfig

    def make_block(self, layer_idx):
        c = self.config
        block = Block(c)
        block.attn = WindowAttention(c.d_model, c.n_heads, c.kv_heads, c.dim_head, c.rope_theta)
        block.attn.window = c.window
        return block

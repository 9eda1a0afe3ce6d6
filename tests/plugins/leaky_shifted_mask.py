"""Deliberately broken: a llama whose causal mask is shifted by one (query t also sees key t+1).

`lumi check` must reject it. Used by tests/test_check.py; never register it in Lumi itself.
"""

import torch
import torch.nn.functional as F

from lumi import register
from lumi.models.layers import Attention, RotaryEmbedding
from lumi.models.llama import Block, Llama


class ShiftedMaskAttention(Attention):
    def forward(self, x, cache=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rope.cos_sin(t, 0, x.device)
        q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
        pos = torch.arange(t, device=x.device)
        mask = pos[None, :] <= pos[:, None] + 1  # the bug: off by one, key t+1 is visible
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


@register("leaky_shifted_mask", description="BROKEN on purpose: causal mask shifted by one",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyShiftedMask(Llama):
    def make_block(self, layer_idx):
        c = self.config
        block = Block(c)
        block.attn = ShiftedMaskAttention(c.d_model, c.n_heads, c.kv_heads, c.dim_head, c.rope_theta)
        return block

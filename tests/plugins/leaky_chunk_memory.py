"""Deliberately broken: a chunked model with a compressed memory that lets a chunk read itself.

Every block first reads a compressed memory: each chunk of ``chunk_size`` (64) positions is
mean-pooled into ``chunk_size / mem_pool`` slots, and queries in chunk c attend (with RoPE) to the
slots of earlier chunks. Chunk 0 has no memory (a zero "null" slot stands in). The bug is an
off-by-one in the visibility test: ``slot_chunk <= query_chunk`` where it should be ``<``, so chunk
c also reads the slots of its OWN chunk, i.e. pooled summaries of positions after t.

Why a naive check misses it: nothing leaks before position 64 (chunk 0 sees only the null slot), so
probes at T = 32 and 35 pass; training at T = 128 leaks in every chunk after the first.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi import register
from lumi.models.layers import RMSNorm, RotaryEmbedding
from lumi.models.llama import Block, Llama, LlamaConfig


@dataclass
class ChunkMemoryConfig(LlamaConfig):
    chunk_size: int = 64
    mem_pool: int = 2  # positions per memory slot


class MemoryRead(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c, self.h, self.hd = c, c.n_heads, c.d_model // c.n_heads
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.q, self.k, self.v, self.o = (nn.Linear(c.d_model, c.d_model, bias=False) for _ in range(4))
        self.rope = RotaryEmbedding(self.hd, c.rope_theta)

    def forward(self, x):
        b, t, d = x.shape
        P, C = self.c.mem_pool, self.c.chunk_size
        h = self.norm(x)
        slots = F.avg_pool1d(h.transpose(1, 2), P, ceil_mode=True).transpose(1, 2)  # [B, S, d]
        pos, slot_pos = torch.arange(t, device=x.device), torch.arange(slots.shape[1], device=x.device) * P
        cos, sin = self.rope.cos_sin(t, 0, x.device)
        q = RotaryEmbedding.rotate(self.q(h).view(b, t, self.h, self.hd).transpose(1, 2), cos, sin)
        k = self.k(slots).view(b, -1, self.h, self.hd).transpose(1, 2)
        k = RotaryEmbedding.rotate(k, cos[slot_pos], sin[slot_pos])
        v = self.v(slots).view(b, -1, self.h, self.hd).transpose(1, 2)
        null = k.new_zeros(b, self.h, 1, self.hd)  # chunk 0 has no memory: it attends to a zero slot
        visible = (slot_pos[None, :] // C <= pos[:, None] // C) & (pos[:, None] >= C)  # the bug: <= must be <
        mask = torch.cat([torch.ones(t, 1, dtype=torch.bool, device=x.device), visible], dim=1)
        y = F.scaled_dot_product_attention(q, torch.cat([null, k], 2), torch.cat([null, v], 2), attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class MemoryBlock(Block):
    def __init__(self, c):
        super().__init__(c)
        self.memory = MemoryRead(c)

    def forward(self, x, cache=None):
        return super().forward(x + self.memory(x), cache)


@register("leaky_chunk_memory", description="BROKEN on purpose: chunk memory includes the current chunk",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyChunkMemory(Llama):
    config_class = ChunkMemoryConfig

    def make_block(self, layer_idx):
        return MemoryBlock(self.config)

    def flops_per_token(self, seq_len):
        c = self.config
        slots = -(-seq_len // c.mem_pool)
        macs = c.d_model**2 * (2 + 2 * slots / seq_len)  # q, o per token; k, v per slot
        attn = 3.0 * 4 * (slots + 1) * c.d_model  # scores and values over the slots (+ null)
        return super().flops_per_token(seq_len) + c.n_layers * (6.0 * macs + attn)

"""Building blocks shared by the Transformer-family models: RMSNorm, RoPE, attention, MLPs.

Plain single-device PyTorch. Attention goes through ``F.scaled_dot_product_attention`` so the
best kernel for the device is used (flash / memory-efficient on CUDA, fused on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import check_choice


class RMSNorm(nn.Module):
    """RMSNorm with a weight initialised to 1 (HF Llama layout: no +1 offset)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused kernel, in float32 for stability under bf16 autocast (as HF Llama normalises).
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in the half-split layout HF Llama uses (rotate_half).

    ``cos_sin`` returns tables for positions offset..offset+T-1 (offset > 0 when decoding with a
    cache): cos, and sin with the sign of rotate_half folded in ([-sin, sin]), so ``rotate`` is two
    multiplies, one add and a flip (no slicing, negation or concatenation in forward or backward).
    The tables are computed once per device for a capacity that doubles when a longer sequence comes,
    so decoding does not rebuild them per token.
    """

    inv_freq: torch.Tensor  # buffer

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise LumiError(f"rotary dimension must be even, got {head_dim}")
        self.head_dim = head_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self, seq_len: int, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        end = offset + seq_len
        tables = self._tables
        if tables is None or tables[0].shape[0] < end or tables[0].device != torch.device(device):
            capacity = max(end, 2 * tables[0].shape[0] if tables is not None else 0)
            # Ordinary tensors even when first needed while decoding under inference_mode: a later
            # training step multiplies by them and autograd must be able to save them.
            with torch.inference_mode(False):
                pos = torch.arange(capacity, device=device, dtype=torch.float32)
                freqs = torch.outer(pos, self.inv_freq.to(device))
                cos, sin = freqs.cos(), freqs.sin()
                tables = self._tables = (torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1))
        return tables[0][offset:end], tables[1][offset:end]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, D]; cos/sin: [T, D] from ``cos_sin``. x * cos + rotate_half(x) * sin, where
        rotate_half(x) = [-x2, x1]: the halves swapped by a flip, the minus sign being in the table."""
        swapped = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)
        return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


@dataclass
class LayerKVCache:
    """Keys/values of one attention layer for cached decoding.

    ``k`` and ``v`` ([B, H_kv, T_so_far, D]) are views of preallocated buffers whose capacity doubles
    when full, so appending a token writes one slice instead of copying the whole cache (a ``torch.cat``
    per layer and token was a fifth of llama:tiny's decode time). The buffers are private: what the
    cache holds is ``k`` and ``v``.
    """

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    _k_buffer: torch.Tensor | None = field(default=None, repr=False)
    _v_buffer: torch.Tensor | None = field(default=None, repr=False)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if self._k_buffer is None or self._v_buffer is None or end > self._k_buffer.shape[2]:
            capacity = max(end, 2 * start, 16)
            self._k_buffer, self._v_buffer = (
                self._grown(self.k, k, capacity),
                self._grown(self.v, v, capacity),
            )
        self._k_buffer[:, :, start:end] = k
        self._v_buffer[:, :, start:end] = v
        self.k, self.v = self._k_buffer[:, :, :end], self._v_buffer[:, :, :end]
        return self.k, self.v

    @staticmethod
    def _grown(old: torch.Tensor | None, new: torch.Tensor, capacity: int) -> torch.Tensor:
        b, h, _, d = new.shape
        buffer = new.new_empty(b, h, capacity, d)
        if old is not None:
            buffer[:, :, : old.shape[2]] = old
        return buffer

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


@dataclass
class KVCache:
    """Per-layer caches plus the number of positions already processed."""

    layers: list = field(default_factory=list)
    position: int = 0

    def num_elements_per_token(self) -> int:
        """Cached numbers per token (summed over layers) — what a cache-size comparison reports."""
        total = 0
        for layer in self.layers:
            for name, t in vars(layer).items():  # private attributes are capacity, not content
                if isinstance(t, torch.Tensor) and not name.startswith("_"):
                    total += t.shape[1] * t.shape[-1] if t.dim() == 4 else t.shape[-1]
        return total


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, use_flash_attn: bool = False
) -> torch.Tensor:
    """Causal attention for q [B, H, Tq, D] against k/v [B, H, Tk, D] where the queries are the
    last Tq of the Tk positions (Tq == Tk in training; Tq < Tk when decoding with a cache)."""
    tq, tk = q.shape[2], k.shape[2]
    if use_flash_attn:
        return _flash_attn(q, k, v, dropout_p)
    if tq == tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if tq == 1:  # one new query may attend to everything cached
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # Several new queries after a cached prefix: query i sits at absolute position tk - tq + i.
    q_pos = torch.arange(tk - tq, tk, device=q.device)[:, None]
    k_pos = torch.arange(tk, device=q.device)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=k_pos <= q_pos, dropout_p=dropout_p)


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    try:
        from flash_attn import flash_attn_func  # optional; only on CUDA with fp16/bf16
    except ImportError:
        raise LumiError(
            "attention='flash_attn' needs the flash-attn package (pip install flash-attn); "
            "use attention='sdpa' (the default), which picks a flash kernel when available"
        ) from None
    # flash_attn wants [B, T, H, D]; bottom-right-aligned causal mask handles cached prefixes.
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=True
    )
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, RoPE, optional QK RMS-norm, no biases."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        rope_theta: float = 10000.0,
        qk_norm: bool = False,
        dropout: float = 0.0,
        use_rope: bool = True,
        use_flash_attn: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.q_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None
        self.rope = RotaryEmbedding(head_dim, rope_theta) if use_rope else None
        self.dropout = dropout
        self.use_flash_attn = use_flash_attn

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        offset = cache.length if cache is not None else 0
        if self.rope is not None:
            cos, sin = self.rope.cos_sin(t, offset, x.device)
            q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = self.attend(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Heads [B, H, T, D] after RoPE and the KV cache; a subclass swaps the mask (sliding window)."""
        return causal_attention(q, k, v, self.dropout if self.training else 0.0, self.use_flash_attn)

    def num_matmul_params(self) -> int:
        return sum(m.weight.numel() for m in (self.q_proj, self.k_proj, self.v_proj, self.o_proj))


MLP_ACTIVATIONS = ("swiglu", "relu2", "gelu")


class MLP(nn.Module):
    """Feed-forward: SwiGLU (gate, up, down) or a 2-matrix MLP with relu^2 / GELU."""

    def __init__(self, d_model: int, hidden: int, activation: str = "swiglu", dropout: float = 0.0) -> None:
        super().__init__()
        check_choice("mlp activation", activation, MLP_ACTIVATIONS)
        self.activation = activation
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.gate_proj = nn.Linear(d_model, hidden, bias=False) if activation == "swiglu" else None
        self.down_proj = nn.Linear(hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            assert self.gate_proj is not None
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.activation == "relu2":
            h = F.relu(self.up_proj(x)).square()
        else:
            h = F.gelu(self.up_proj(x))
        return self.dropout(self.down_proj(h))


def mlp_params(d_model: int, hidden: int, activation: str) -> int:
    return (3 if activation == "swiglu" else 2) * d_model * hidden


def init_linear_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for every Linear and Embedding; zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)


def scale_residual_projections(
    module: nn.Module,
    n_layers: int,
    zero: bool = False,
    std: float = 0.02,
    names: tuple[str, ...] = ("o_proj", "down_proj"),
) -> None:
    """GPT-2 style: residual output projections get std / sqrt(2 * n_layers), or zeros."""
    for name, p in module.named_parameters():
        if any(name.endswith(f"{n}.weight") for n in names):
            if zero:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * n_layers))


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap) (Gemma-2 / modded-nanogpt logit soft-capping); off when cap is None."""
    if not cap:
        return logits
    return cap * torch.tanh(logits / cap)

"""`bytepatch`: fixed-size byte patches with a global and a local Transformer (MEGABYTE / LayerCake).

Source: Yu et al., "MEGABYTE: Predicting Million-byte Sequences with Multiscale Transformers"
(2023), and the patch core of LayerCake (Yoder23/layercake, ``CausalBytePatchLM``): bytes are
grouped into patches of P; a global causal Transformer runs over patch embeddings; a small local
model decodes the bytes of each patch.

What is implemented (MEGABYTE's "patch shift plus byte shift"):
- global byte embedding of width d_global / P (+ optional hashed n-gram embeddings, n = 2..ngram_max,
  each hashing the n bytes ENDING at the position, as in LayerCake/BLT); a patch embedding is the
  concatenation of its P byte embeddings (width d_global);
- global model: llama blocks over patches; its input is shifted right by one patch (a learned pad
  patch in front, the last patch dropped), so global output k depends on patches < k only;
- global output k is split into P slots of width d_global / P, each projected to d_local;
- local model: llama blocks within each patch (all patches in parallel as one batch, RoPE over the
  slot index); its input at slot i is the projected global slot i plus the local embedding of the
  byte before it (slot 0: a learned start vector, as MEGABYTE's pad byte);
- final RMSNorm and an untied head from d_local.

Alignment with Lumi (logits at position t predict byte t+1). Let u = t + 1 be the index of the
predicted byte, k = u // P its patch and i = u % P its slot.
- The global model contributes output k, which sees only COMPLETE patches strictly before the
  patch containing the predicted byte: bytes 0 .. kP-1 (all <= t, because kP <= u - 1 = t).
- The local model at slot i sees the bytes of the current patch up to and including t:
  bytes kP .. u-1 = kP .. t (slot j > 0 holds byte kP+j-1; slot 0 holds no byte).
So the logits at t are MEGABYTE's prediction for byte u. Internally the model therefore runs on
u = 0..T, i.e. K = ceil((T+1) / P) patches: the prediction for u = 0 (byte 0 from nothing) is
dropped, and the last patch is padded ON THE RIGHT only, which can never reach an earlier output.
The head runs on the T kept positions only. Any T >= 1 works.

Choices where the public description is open (config fields):
- ``ngram_max`` / ``ngram_buckets``: hashed n-gram tables (0 = off), added to the GLOBAL byte
  embeddings only (the local model sees plain byte embeddings); rolling polynomial hash, one table
  per n (see byte_utils.hashed_ngram_ids).
- ``ffn_mult``: SwiGLU hidden = ffn_mult x width in both stacks (``mlp`` picks the activation).
- No norm between the global output and the slot projection (MEGABYTE projects the raw output);
  with P = 1, d_local = d_global, no local layers and an identity projection the model is exactly
  a byte llama run on [pad, x_0, ..., x_{T-1}] (tested).
Not implemented: MEGABYTE's cross-patch attention in the local model, strided inference, the
LayerCake ABI projection and bricks, the GRU local decoder.

Parameters: V*(d_global/P) + V*d_local (byte embeddings) + ngram tables + V*d_local (head)
  + d_global (pad patch) + d_local (slot-0 vector) + (d_global/P)*d_local (slot projection)
  + L_g * block(d_global) + L_l * block(d_local) + d_local (final norm).
FLOPs/token at length T (training = 3 x forward), K = ceil((T+1)/P):
  forward = [K * L_g * (2 M_g + 4 K d_global) + K P (2 (d_global/P) d_local)
             + K P * L_l * (2 M_l + 4 P d_local) + T * 2 d_local V] / T
  with M = matmul weights of one llama block; attention counted over the full K x K (global) and
  P x P (local) per the shared convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel, ModelConfig
from lumi.models.byte_utils import (
    HashNgramEmbedding,
    block_forward_flops,
    block_params,
    ngram_params,
    sub_config,
    validate_ngrams,
)
from lumi.models.layers import MLP_ACTIVATIONS, RMSNorm, init_linear_weights, scale_residual_projections
from lumi.models.llama import Block, LlamaConfig
from lumi.models.registry import register


@dataclass
class BytePatchConfig(ModelConfig):
    vocab_size: int = 257  # the bytes tokenizer: 256 byte values + the document separator
    patch_size: int = 4
    n_global_layers: int = 2
    d_global: int = 64
    n_global_heads: int = 2
    n_local_layers: int = 1
    d_local: int = 32
    n_local_heads: int = 1
    ngram_max: int = 0  # 0: off; k: hashed n-gram embeddings for n = 2..k
    ngram_buckets: int = 1024
    mlp: str = "swiglu"
    ffn_mult: int = 4
    qk_norm: bool = False
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        if self.patch_size < 1:
            raise LumiError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.d_global % self.patch_size:
            raise LumiError(
                f"d_global={self.d_global} must be a multiple of patch_size={self.patch_size} "
                "(a patch embedding concatenates patch_size byte embeddings of width d_global/patch_size)"
            )
        if self.n_global_layers < 1:
            raise LumiError(f"n_global_layers must be >= 1, got {self.n_global_layers}")
        if self.n_local_layers < 0:
            raise LumiError(f"n_local_layers must be >= 0, got {self.n_local_layers}")
        if self.ffn_mult < 1:
            raise LumiError(f"ffn_mult must be >= 1, got {self.ffn_mult}")
        if self.mlp not in MLP_ACTIVATIONS:
            raise LumiError(f"mlp must be one of {', '.join(MLP_ACTIVATIONS)}, got {self.mlp!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LumiError(f"dropout must be in [0, 1), got {self.dropout}")
        validate_ngrams(self.ngram_max, self.ngram_buckets)
        self.global_config()
        self.local_config()

    @property
    def byte_dim(self) -> int:
        """Width of one byte's slot in a patch embedding."""
        return self.d_global // self.patch_size

    def _stack(self, d: int, n_layers: int, n_heads: int, field: str) -> LlamaConfig:
        return sub_config(
            d_model=d,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp=self.mlp,
            ffn_mult=self.ffn_mult,
            qk_norm=self.qk_norm,
            norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
            dropout=self.dropout,
            init_std=self.init_std,
            field=field,
        )

    def global_config(self) -> LlamaConfig:
        return self._stack(
            self.d_global, self.n_global_layers, self.n_global_heads, "d_global/n_global_heads"
        )

    def local_config(self) -> LlamaConfig:
        return self._stack(self.d_local, self.n_local_layers, self.n_local_heads, "d_local/n_local_heads")


def num_patches(seq_len: int, patch_size: int) -> int:
    """Patches covering the predicted positions u = 0..T (see the module docstring)."""
    return math.ceil((seq_len + 1) / patch_size)


@register(
    "bytepatch",
    description="MEGABYTE-style fixed byte patches: global Transformer over patches + local byte decoder",
    presets={
        "nano": dict(
            patch_size=4,
            n_global_layers=2,
            d_global=64,
            n_global_heads=2,
            n_local_layers=1,
            d_local=32,
            n_local_heads=1,
        ),
        "micro": dict(
            patch_size=4,
            n_global_layers=4,
            d_global=128,
            n_global_heads=2,
            n_local_layers=2,
            d_local=64,
            n_local_heads=2,
        ),
        "micro-ngram": dict(
            patch_size=4,
            n_global_layers=4,
            d_global=128,
            n_global_heads=2,
            n_local_layers=2,
            d_local=64,
            n_local_heads=2,
            ngram_max=3,
            ngram_buckets=4096,
        ),
        "tiny": dict(
            patch_size=4,
            n_global_layers=6,
            d_global=256,
            n_global_heads=4,
            n_local_layers=2,
            d_local=128,
            n_local_heads=2,
        ),
        "small": dict(
            patch_size=8,
            n_global_layers=12,
            d_global=512,
            n_global_heads=8,
            n_local_layers=4,
            d_local=256,
            n_local_heads=4,
        ),
    },
    cpu_presets=("nano",),
)
class BytePatch(LumiModel):
    config_class = BytePatchConfig
    config: BytePatchConfig
    check_overfit_lr = 1e-2  # 40 Adam steps at the default 3e-3 are too few for two stacks

    def __init__(self, config: BytePatchConfig) -> None:
        super().__init__(config)
        c = config
        gc, lc = c.global_config(), c.local_config()
        # Registered first: the token-fed embeddings (lumi check hooks them for the gradient probe).
        self.global_embed = nn.Embedding(c.vocab_size, c.byte_dim)
        self.local_embed = nn.Embedding(c.vocab_size, c.d_local)
        self.ngrams = HashNgramEmbedding(c.ngram_max, c.ngram_buckets, c.byte_dim) if c.ngram_max else None
        self.pad_patch = nn.Parameter(torch.zeros(c.d_global))
        self.slot0 = nn.Parameter(torch.zeros(c.d_local))
        self.global_blocks = nn.ModuleList([Block(gc) for _ in range(c.n_global_layers)])
        self.slot_proj = nn.Linear(c.byte_dim, c.d_local, bias=False)
        self.local_blocks = nn.ModuleList([Block(lc) for _ in range(c.n_local_layers)])
        self.norm = RMSNorm(c.d_local, c.norm_eps)
        self.lm_head = nn.Linear(c.d_local, c.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        init_linear_weights(self, c.init_std)
        nn.init.normal_(self.pad_patch, std=c.init_std)
        nn.init.normal_(self.slot0, std=c.init_std)
        scale_residual_projections(self.global_blocks, c.n_global_layers, std=c.init_std)
        if c.n_local_layers:
            scale_residual_projections(self.local_blocks, c.n_local_layers, std=c.init_std)

    # -- forward ------------------------------------------------------------------------------
    def byte_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.global_embed(tokens)
        if self.ngrams is not None:
            e = e + self.ngrams(tokens)
        return e

    def global_input(self, byte_emb: torch.Tensor, n_patches: int) -> torch.Tensor:
        """[B, K, d_global]: pad patch, then patches 0..K-2 (the one-patch shift)."""
        b, _, d = byte_emb.shape
        p = self.config.patch_size
        complete = byte_emb[:, : (n_patches - 1) * p].reshape(b, n_patches - 1, p * d)
        return torch.cat([self.pad_patch.expand(b, 1, -1).to(complete.dtype), complete], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, t = tokens.shape
        p = c.patch_size
        k = num_patches(t, p)

        g = self.global_input(self.byte_embeddings(tokens), k)
        for block in self.global_blocks:
            g = block(g)
        slots = self.slot_proj(g.reshape(b, k, p, c.byte_dim))  # [B, K, P, d_local]

        # Byte shift: slot u holds byte u-1 (u = 1..T); positions past T are right padding.
        prev = self.local_embed(tokens)
        prev = F.pad(prev, (0, 0, 1, k * p - 1 - t)).reshape(b, k, p, c.d_local)
        prev = torch.cat([self.slot0.expand(b, k, 1, -1).to(prev.dtype), prev[:, :, 1:]], dim=2)

        x = (slots + prev).reshape(b * k, p, c.d_local)
        for block in self.local_blocks:
            x = block(x)
        x = x.reshape(b, k * p, c.d_local)[:, 1 : t + 1]  # predictions for bytes 1..T
        return self.lm_head(self.norm(x))

    # -- accounting -----------------------------------------------------------------------------
    def param_formula(self) -> dict[str, int]:
        c = self.config
        gc, lc = c.global_config(), c.local_config()
        embedding = c.vocab_size * (c.byte_dim + 2 * c.d_local) + ngram_params(
            c.ngram_max, c.ngram_buckets, c.byte_dim
        )
        total = (
            embedding
            + c.d_global
            + c.d_local
            + c.byte_dim * c.d_local
            + c.n_global_layers * block_params(gc)
            + c.n_local_layers * block_params(lc)
            + c.d_local
        )
        return {"total": total, "non_embedding": total - embedding}

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        gc, lc = c.global_config(), c.local_config()
        k = num_patches(seq_len, c.patch_size)
        positions = k * c.patch_size
        fwd = (
            k * c.n_global_layers * block_forward_flops(gc, k)
            + positions * 2.0 * c.byte_dim * c.d_local
            + positions * c.n_local_layers * block_forward_flops(lc, c.patch_size)
            + seq_len * 2.0 * c.d_local * c.vocab_size
        )
        return 3.0 * fwd / seq_len

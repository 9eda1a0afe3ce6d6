"""`bytepatch`: fixed byte patches — a global Transformer over patches + a local byte decoder (MEGABYTE).

Source: Yu et al., "MEGABYTE: Predicting Million-byte Sequences with Multiscale Transformers" (2023),
and the patch core of LayerCake (Yoder23/layercake, ``CausalBytePatchLM``). Bytes are grouped into
patches of P; llama blocks over patch embeddings (P concatenated byte embeddings) give one global
output per patch, split into P slots that feed small llama blocks run inside each patch.

Causality (logits at t predict byte u = t + 1 of patch k = u // P): the global input is shifted right
by one patch (a learned pad patch in front), so global output k sees bytes 0..kP-1 only; the local
input is shifted by one byte, so it sees bytes kP..t. Internally the model runs on u = 0..T (the last
patch padded on the right only) and drops u = 0. Details: docs/architectures/bytepatch.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel
from lumi.models.byte_utils import (
    ByteModelConfig,
    HashNgramEmbedding,
    block_forward_flops,
    block_params,
    ngram_params,
)
from lumi.models.layers import RMSNorm, init_linear_weights, scale_residual_projections
from lumi.models.llama import Block, LlamaConfig
from lumi.models.registry import register


@dataclass
class BytePatchConfig(ByteModelConfig):
    patch_size: int = 4
    n_global_layers: int = 2
    d_global: int = 64
    n_global_heads: int = 2
    n_local_layers: int = 1
    d_local: int = 32
    n_local_heads: int = 1

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
        self.global_config()
        self.local_config()

    @property
    def byte_dim(self) -> int:
        """Width of one byte's slot in a patch embedding."""
        return self.d_global // self.patch_size

    def global_config(self) -> LlamaConfig:
        return self.stack_config(
            self.d_global, self.n_global_layers, self.n_global_heads, "d_global/n_global_heads"
        )

    def local_config(self) -> LlamaConfig:
        return self.stack_config(
            self.d_local, self.n_local_layers, self.n_local_heads, "d_local/n_local_heads"
        )


def num_patches(seq_len: int, patch_size: int) -> int:
    """Patches covering the predicted positions u = 0..T (see the module docstring)."""
    return math.ceil((seq_len + 1) / patch_size)


# The `micro` preset; `micro-ngram` is the same model plus hashed n-grams.
_MICRO = dict(
    patch_size=4,
    n_global_layers=4,
    d_global=128,
    n_global_heads=2,
    n_local_layers=2,
    d_local=64,
    n_local_heads=2,
)


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
        "micro": _MICRO,
        "micro-ngram": dict(_MICRO, ngram_max=3, ngram_buckets=4096),
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
class BytePatch(LumiModel[BytePatchConfig]):
    config_class = BytePatchConfig
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

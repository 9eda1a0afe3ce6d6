"""`bltpatch`: BLT-lite — dynamic patches where a small frozen byte LM finds the next byte hard.

Source: Pagnoni et al., "Byte Latent Transformer: Patches Scale Better Than Tokens" (Meta, 2024),
facebookresearch/blt. The patcher is a trained `llama` byte model (``patcher_checkpoint``) frozen into
persistent buffers: never trained, not in ``param_counts()``, saved with the model. Position t is a
boundary when the patcher's next-byte entropy H_t exceeds ``entropy_threshold`` (``patch_rule="global"``)
or exceeds H_{t-1} by more than ``entropy_margin`` ("monotonic"); the rest is `spacebyte`'s
local/global/local machinery (``LocalGlobalModel``).

Causality: H_t is the patcher's prediction from bytes 0..t, so a boundary at t depends on bytes <= t
only, and the running global budget keeps the prediction at t to global states of boundaries <= t.
Workflow, checkpoint formats, FLOPs and presets: docs/architectures/bltpatch.md.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import cast

import torch
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import check_choice
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.registry import get_spec, make_config, register
from lumi.models.spacebyte import SPACEBYTE_PRESETS, LocalGlobalModel, SpaceByteConfig

PATCH_RULES = ("global", "monotonic")


@dataclass
class BltPatchConfig(SpaceByteConfig):
    patch_rule: str = "global"
    entropy_threshold: float = 1.335  # nats; BLT repo default for its trained patcher
    entropy_margin: float = 0.2  # nats; the monotonic rule's rise
    patcher_checkpoint: str | None = None
    patcher_preset: str = "byte-nano"  # llama preset of the random patcher when there is no checkpoint

    def validate(self) -> None:
        super().validate()
        check_choice("patch_rule", self.patch_rule, PATCH_RULES)
        if not math.isfinite(self.entropy_threshold) or self.entropy_threshold < 0:
            raise LumiError(
                f"entropy_threshold must be a finite number of nats >= 0, got {self.entropy_threshold}"
            )
        if not math.isfinite(self.entropy_margin):
            raise LumiError(f"entropy_margin must be a finite number of nats, got {self.entropy_margin}")
        if self.patcher_checkpoint in ("", "none", "None", "null"):
            self.patcher_checkpoint = None
        if self.patcher_checkpoint is not None:  # absolute, so a saved config works from any directory
            self.patcher_checkpoint = str(Path(self.patcher_checkpoint).expanduser().resolve())
        if self.patcher_checkpoint is None and self.patcher_preset not in get_spec("llama").presets:
            presets = ", ".join(sorted(get_spec("llama").presets))
            raise LumiError(f"patcher_preset must be a llama preset ({presets}), got {self.patcher_preset!r}")


def resolve_patcher_files(path: str | Path) -> tuple[Path, Path]:
    """(model.safetensors, model_config.json) for a run dir, a checkpoint dir or a .safetensors file."""
    p = Path(path).expanduser()
    candidates = []
    if p.is_file():
        candidates.append((p, p.parent / "model_config.json"))
    else:
        for d in (p / "checkpoints" / "latest", p / "checkpoints" / "previous", p):  # `lumi train` layout
            candidates.append((d / "model.safetensors", d / "model_config.json"))
    for weights, cfg in candidates:
        if weights.is_file() and cfg.is_file():
            return weights, cfg
    raise LumiError(
        f"patcher_checkpoint {str(p)!r}: no model.safetensors + model_config.json found (expected a `lumi train` "
        "run directory with checkpoints/latest/, a checkpoint directory, or a .safetensors file with "
        "model_config.json beside it); train the patcher first, e.g. `lumi train llama --preset byte-nano`"
    )


def load_patcher(path: str | Path, vocab_size: int) -> Llama:
    """A trained llama byte model from a checkpoint (see ``resolve_patcher_files``)."""
    from safetensors.torch import load_model

    weights, cfg_path = resolve_patcher_files(path)
    try:
        values = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LumiError(f"patcher config {str(cfg_path)!r} is not readable JSON: {e}") from None
    known = {f.name for f in fields(LlamaConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LumiError(
            f"patcher config {str(cfg_path)!r} has fields {', '.join(unknown)} that a llama config does "
            "not have: the patcher must be a `llama` byte model"
        )
    config = cast(LlamaConfig, make_config("llama", None, values))
    if config.vocab_size != vocab_size:
        raise LumiError(
            f"patcher {str(cfg_path)!r} has vocab_size {config.vocab_size} but this model has "
            f"{vocab_size}: train the patcher on the same (bytes) tokenizer"
        )
    patcher = Llama(config)
    try:
        load_model(patcher, str(weights), strict=True)
    except (RuntimeError, OSError) as e:
        raise LumiError(f"patcher weights {str(weights)!r} do not fit its model_config.json: {e}") from None
    return patcher


def freeze_into_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` into a persistent buffer (frozen, saved, not trained)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            del m._parameters[name]
            m.register_buffer(name, p.detach().clone().requires_grad_(False), persistent=True)


@register(
    "bltpatch",
    description="BLT-lite: entropy patches from a frozen byte-LM patcher + SpaceByte-style local/global blocks",
    presets={  # spacebyte's stacks + n-grams + the random patcher's llama preset
        "nano": dict(SPACEBYTE_PRESETS["nano"], patcher_preset="byte-nano"),
        "micro": dict(
            SPACEBYTE_PRESETS["micro"], ngram_max=4, ngram_buckets=2048, patcher_preset="byte-nano"
        ),
        "tiny": dict(SPACEBYTE_PRESETS["tiny"], ngram_max=5, ngram_buckets=8192, patcher_preset="byte-micro"),
    },
    cpu_presets=("nano",),
)
class BltPatch(LocalGlobalModel[BltPatchConfig]):
    config_class = BltPatchConfig

    def __init__(self, config: BltPatchConfig) -> None:
        super().__init__(config)
        c = config
        if c.patcher_checkpoint is not None:
            patcher = load_patcher(c.patcher_checkpoint, c.vocab_size)
        else:
            warnings.warn(
                "bltpatch: no patcher_checkpoint given — using a randomly initialised frozen patcher "
                f"(llama:{c.patcher_preset}); its entropies are meaningless. Train a byte llama first "
                "and pass its run directory as patcher_checkpoint.",
                stacklevel=2,
            )
            patcher = Llama(
                cast(LlamaConfig, make_config("llama", c.patcher_preset, vocab_size=c.vocab_size))
            )
        freeze_into_buffers(patcher)
        self.patcher = patcher.eval()

    def train(self, mode: bool = True) -> BltPatch:
        super().train(mode)
        self.patcher.eval()  # frozen: no dropout, ever
        return self

    def entropies(self, tokens: torch.Tensor) -> torch.Tensor:
        """H_t in nats of the patcher's next-byte distribution at each position, float32 [B, T]."""
        with torch.no_grad():
            logp = torch.log_softmax(self.patcher(tokens).float(), dim=-1)
            return -(logp.exp() * logp).sum(dim=-1)

    def boundaries(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        h = self.entropies(tokens)
        if c.patch_rule == "global":
            b = h > c.entropy_threshold
        else:
            rise = h - torch.nn.functional.pad(h, (1, 0), value=float("inf"))[:, :-1]
            b = rise > c.entropy_margin
        b = b | (tokens >= 256)
        b[:, 0] = True
        self._last_entropy = float(h.mean())
        return b

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = super().forward(tokens)
        self._stats["mean_entropy"] = self._last_entropy
        self._stats["patcher_flops_per_token"] = self.patcher_flops_per_token(tokens.shape[1])
        return logits

    # -- accounting -----------------------------------------------------------------------------
    def embedding_params(self) -> int:
        """Byte embedding + n-gram tables + head of the trained model (the patcher is not counted)."""
        emb = self.embed.weight.numel() + self.lm_head.weight.numel()
        return emb + (self.ngrams.num_params() if self.ngrams is not None else 0)

    def patcher_params(self) -> int:
        """Weights of the frozen patcher (persistent buffers; not in ``param_counts()``)."""
        return sum(v.numel() for v in self.patcher.state_dict().values())

    def patcher_flops_per_token(self, seq_len: int) -> float:
        """Forward-only FLOPs/token of the frozen patcher (its training FLOPs / 3)."""
        return self.patcher.flops_per_token(seq_len) / 3.0

    def flops_per_token(self, seq_len: int) -> float:
        return super().flops_per_token(seq_len) + self.patcher_flops_per_token(seq_len)

"""`bltpatch`: BLT-lite — dynamic patches where a small frozen byte LM finds the next byte hard.

Source: Pagnoni et al., "Byte Latent Transformer: Patches Scale Better Than Tokens" (Meta, 2024),
facebookresearch/blt. BLT's entropy patcher is a small byte LM that computes the next-byte entropy
H at every position; a patch boundary goes where H exceeds a global threshold, or where H rises by
more than a margin over the previous position (the "approximately monotonic" rule).

What is implemented:
- the patcher: a `llama` byte model, FROZEN. Its weights are stored as persistent buffers, not
  parameters: the optimizer never sees them, ``param_counts()`` excludes them (they are reported
  separately by ``patcher_params()``), and they travel with the model's safetensors/state_dict.
  It runs under ``torch.no_grad()`` in eval mode on the same token stream;
- H_t = entropy (nats) of the patcher's distribution at position t, i.e. of its prediction of byte
  t+1 from bytes 0..t. Position t is a boundary (the global model runs at t) when
  ``patch_rule="global"``: H_t > entropy_threshold, or ``patch_rule="monotonic"``:
  H_t - H_{t-1} > entropy_margin; position 0 and separator ids (>= 256) always, plus a forced
  boundary every ``max_patch`` positions. A boundary at t therefore means "the byte after t is hard",
  and the global model's state at t (bytes 0..t) is spent exactly there — BLT's alignment, where a
  new patch starts at a high-entropy byte and is predicted from the global states of earlier patches;
- the rest is `spacebyte`'s local/global/local machinery (code reused: ``LocalGlobalModel``), with
  its running global budget, so the prediction at t uses global states of boundaries <= t only;
- hashed n-gram embeddings (BLT uses n = 3..8) via ``ngram_max`` (n = 2..ngram_max).

Workflow (train the patcher first, then point this model at its run directory):
    lumi train llama --preset byte-nano --data shakespeare:bytes ...  -> runs/<patcher-run>
    lumi train bltpatch --preset micro --set patcher_checkpoint=runs/<patcher-run> ...
``patcher_checkpoint`` is a `lumi train` run directory (loads checkpoints/latest/model.safetensors
and model_config.json), a checkpoint directory holding those two files, or the .safetensors file
itself (model_config.json beside it). With no checkpoint the patcher is a randomly initialised
llama of ``patcher_preset`` (fine for `lumi check`, useless for real patching: a warning says so).
The path is stored absolute. A bltpatch checkpoint also holds the patcher's weights (buffers), but
building the model reads the patcher checkpoint first, so keep it in place while the run is used.

Reported: ``stats()`` gives mean_patch_len, dropped_boundary_frac (boundaries beyond the global
budget), mean_entropy and patcher_flops_per_token; ``patcher_flops_per_token(T)`` is the patcher's
FORWARD cost per token (2 x its matmul weights incl. head + its attention), which is included in
``flops_per_token`` (the patcher is never backpropagated, so it is counted once, not 3x).

Not implemented: BLT's cross-attention patch encoder/decoder (pooling and un-pooling are SpaceByte's
gather/scatter here), the entropy-context reset at newlines, incremental patching at inference,
and BLT's patch-size/model-size scaling recipes.
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
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.registry import get_spec, make_config, register
from lumi.models.spacebyte import LocalGlobalModel, SpaceByteConfig

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
        if self.patch_rule not in PATCH_RULES:
            raise LumiError(f"patch_rule must be one of {', '.join(PATCH_RULES)}, got {self.patch_rule!r}")
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
    presets={
        "nano": dict(
            d_local=32,
            n_local_heads=1,
            n_local_before=1,
            n_local_after=1,
            local_window=16,
            d_global=64,
            n_global_heads=2,
            n_global_layers=2,
            max_patch=8,
            global_patch_len=4,
            patcher_preset="byte-nano",
        ),
        "micro": dict(
            d_local=64,
            n_local_heads=2,
            n_local_before=1,
            n_local_after=1,
            local_window=64,
            d_global=128,
            n_global_heads=2,
            n_global_layers=4,
            max_patch=16,
            global_patch_len=4,
            ngram_max=4,
            ngram_buckets=2048,
            patcher_preset="byte-nano",
        ),
        "tiny": dict(
            d_local=128,
            n_local_heads=2,
            n_local_before=2,
            n_local_after=2,
            local_window=128,
            d_global=256,
            n_global_heads=4,
            n_global_layers=6,
            max_patch=16,
            global_patch_len=4,
            ngram_max=5,
            ngram_buckets=8192,
            patcher_preset="byte-micro",
        ),
    },
    cpu_presets=("nano",),
)
class BltPatch(LocalGlobalModel):
    config_class = BltPatchConfig
    config: BltPatchConfig

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

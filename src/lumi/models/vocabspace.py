"""`vocabspace`: vocabulary-space models — the hidden state IS the prediction (width V, no embedding or head).

Source: urmzd/exp-agi-models (revision f753659), models ``v2_conv`` and ``v8_lowrank_vv``. The input is
sqrt(V) * one_hot(token); each of ``n_steps`` steps adds a cross-position mixer and a within-position
mixer of the parameter-free RMS-normalised state; the logits are the RMS-normalised final state times
a learned scalar, soft-capped. ``variant="conv"``: a depthwise causal conv over time + a V -> C -> V
channel mixer; ``variant="interaction"``: decayed similarities with earlier positions + a rank-r V x V
map.

Causality: the conv is left-padded by kernel_size - 1 (position t sees t-K+1..t), and the interaction
weights are exactly 0 for keys s >= t (``DecayedInteraction.lag`` is t - s; the published reversed
mask, tests/plugins/leaky_vocabspace.py, leaks). Formulas, FLOPs accounting, presets and the
differences from the source: docs/architectures/vocabspace.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel, ModelConfig, check_choice
from lumi.models.layers import softcap
from lumi.models.registry import register

VARIANTS = ("conv", "interaction")
READS = ("lowrank", "fourier")
ACTIVATIONS = ("gelu", "relu2", "silu")


@dataclass
class VocabSpaceConfig(ModelConfig):
    vocab_size: int = 256
    variant: str = "conv"  # conv (v2_conv) | interaction (v8_lowrank_vv)
    n_steps: int = 8
    # conv
    kernel_size: int = 16
    n_channels: int = 128
    read: str = "lowrank"  # lowrank | fourier (the source)
    n_fourier_basis: int = 16
    # interaction
    rank: int = 8
    decay_init: float = 3.0  # decay = sigmoid(decay_init)
    qk_init: float = 1.0
    # both
    mixer_scale: float = 0.1  # initial learned output scale of the mixers (conv: within-mixer only)
    activation: str = "gelu"
    logit_scale_init: float = 1.0  # the output scalar starts at logit_scale_init / sqrt(V)
    logit_softcap: float | None = 30.0
    init_std: float = 0.02
    norm_eps: float = 1e-6

    def validate(self) -> None:
        super().validate()
        check_choice("vocabspace config field 'variant'", self.variant, VARIANTS)
        check_choice("vocabspace config field 'read'", self.read, READS)
        check_choice("vocabspace config field 'activation'", self.activation, ACTIVATIONS)
        for name in ("n_steps", "kernel_size", "n_channels", "n_fourier_basis", "rank"):
            if getattr(self, name) < 1:
                raise LumiError(f"vocabspace config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.logit_scale_init <= 0:
            raise LumiError(
                f"vocabspace config field 'logit_scale_init' must be > 0, got {self.logit_scale_init}"
            )
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise LumiError(
                f"vocabspace config field 'logit_softcap' must be positive or null (off), "
                f"got {self.logit_softcap}"
            )
        if self.init_std < 0:
            raise LumiError(f"vocabspace config field 'init_std' must be >= 0, got {self.init_std}")
        if self.norm_eps <= 0:
            raise LumiError(f"vocabspace config field 'norm_eps' must be > 0, got {self.norm_eps}")


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMS norm over the vocabulary dimension."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


def activate(h: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu2":
        return F.relu(h).square()
    if name == "silu":
        return F.silu(h)
    return F.gelu(h)


def fourier_basis(vocab_size: int, n_basis: int) -> torch.Tensor:
    """[V, 2F]: cos and sin of 2 pi f i / V over vocabulary index i, for f = 1..F (interleaved)."""
    i = torch.arange(vocab_size, dtype=torch.float64)[:, None] / vocab_size
    f = torch.arange(1, n_basis + 1, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * f * i
    return torch.stack([angle.cos(), angle.sin()], dim=-1).reshape(vocab_size, 2 * n_basis).float()


class OneHotInput(nn.Embedding):
    """token -> sqrt(V) * one_hot(token): the RMS-normalised one-hot, with no weights.

    An ``nn.Embedding`` subclass so that code looking for the input embedding (lumi check's
    gradient causality probe hooks every nn.Embedding fed the tokens) finds it. ``weight`` builds
    the equivalent table sqrt(V) I on request; it is not a parameter and is never saved.
    """

    def __init__(self, vocab_size: int) -> None:
        nn.Module.__init__(self)  # deliberately skip nn.Embedding's weight allocation
        self.num_embeddings = self.embedding_dim = vocab_size
        self.padding_idx, self.max_norm, self.sparse = None, None, False
        self.scale = math.sqrt(vocab_size)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]  # computed on request, never stored
        return torch.eye(self.num_embeddings) * self.scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens, self.num_embeddings).to(torch.float32) * self.scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, scale=sqrt({self.num_embeddings}), no weights"


# -- conv variant (v2_conv) ------------------------------------------------------------------


class _DepthwiseConv(torch.autograd.Function):
    """conv1d(x, w, b, groups=V) with a hand-written backward built from two forward convolutions.

    Why: torch's FlopCounterMode ignores ``groups`` when it counts ``convolution_backward``'s weight
    gradient, overcounting a depthwise conv by a factor of V. Computing the gradients as a depthwise
    transposed conv (input) and a depthwise conv with batch and channels folded together (weight)
    gives the same numbers and is counted exactly: 2 B T V K FLOPs each, i.e. backward = 2 x forward.
    (On CPU the folded weight-gradient conv is no slower than the native kernel.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv1d(x, weight, bias, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        b, v, length = x.shape
        t, k = grad_out.shape[-1], weight.shape[-1]
        # Under autocast the forward ran in low precision and grad_out arrives in that dtype while
        # the saved tensors keep theirs: compute in grad_out's dtype, return each input's own dtype.
        dtype = grad_out.dtype
        acc = torch.promote_types(dtype, torch.float32)  # sums over the batch in at least fp32
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose1d(grad_out, weight.to(dtype), groups=v).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # grad_w[v, j] = sum_{b, t} grad_out[b, v, t] * x[b, v, t + j]: one group per (b, v).
            folded = F.conv1d(
                x.to(dtype).reshape(1, b * v, length), grad_out.reshape(b * v, 1, t), groups=b * v
            )
            grad_w = folded.to(acc).reshape(b, v, k).sum(0).unsqueeze(1).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.to(acc).sum(dim=(0, 2)).to(weight.dtype)  # bias and weight share a dtype
        return grad_x, grad_w, grad_b


class DepthwiseCausalConv(nn.Module):
    """One filter of K taps per vocabulary dimension, left-padded: position t sees t-K+1..t."""

    def __init__(self, c: VocabSpaceConfig) -> None:
        super().__init__()
        self.kernel_size = c.kernel_size
        self.weight = nn.Parameter(torch.randn(c.vocab_size, 1, c.kernel_size) * c.init_std)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        h = F.pad(n.transpose(1, 2), (self.kernel_size - 1, 0))
        return _DepthwiseConv.apply(h, self.weight, self.bias).transpose(1, 2)


class ChannelMixer(nn.Module):
    """Within-position V -> C -> V: gelu(n R M + b) W * scale; R, W learned or Fourier-parameterised."""

    def __init__(self, c: VocabSpaceConfig) -> None:
        super().__init__()
        self.read_kind, self.activation = c.read, c.activation
        v, ch, std = c.vocab_size, c.n_channels, c.init_std
        if c.read == "lowrank":
            self.read = nn.Parameter(torch.randn(v, ch) * std)
            self.write = nn.Parameter(torch.randn(ch, v) * std)
        else:
            self.read_coeffs = nn.Parameter(torch.randn(2 * c.n_fourier_basis, ch) * std)
            self.write_coeffs = nn.Parameter(torch.randn(2 * c.n_fourier_basis, ch) * std)
        self.mix = nn.Parameter(torch.randn(ch, ch) * std)
        self.bias = nn.Parameter(torch.zeros(ch))
        self.out_scale = nn.Parameter(torch.tensor(float(c.mixer_scale)))

    def read_write(self, basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(R [V, C], W [C, V]); the Fourier form rebuilds them from the coefficients each forward."""
        if self.read_kind == "lowrank":
            return self.read, self.write
        assert basis is not None, "the fourier read needs the basis"
        read = torch.softmax(basis @ self.read_coeffs, dim=0)  # each channel: a distribution over V
        write = (basis @ self.write_coeffs).t()
        return read, write

    def forward(self, n: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        read, write = self.read_write(basis)
        h = activate((n @ read) @ self.mix + self.bias, self.activation)
        return (h @ write) * self.out_scale


# -- interaction variant (v8_lowrank_vv) ------------------------------------------------------


class DecayedInteraction(nn.Module):
    """Cross-position: scores[t, s] = <n_t q, n_s k> decay^(t-s-1) for s < t only; out = scores n."""

    def __init__(self, c: VocabSpaceConfig) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.full((c.vocab_size,), float(c.qk_init)))
        self.k = nn.Parameter(torch.full((c.vocab_size,), float(c.qk_init)))
        self.decay_logit = nn.Parameter(torch.tensor(float(c.decay_init)))
        self.out_scale = nn.Parameter(torch.tensor(float(c.mixer_scale)))

    @staticmethod
    def lag(seq_len: int, device: torch.device) -> torch.Tensor:
        """[T, T] with entry [t, s] = t - s: how far key s lies BEFORE query t."""
        pos = torch.arange(seq_len, device=device)
        return pos[:, None] - pos[None, :]

    def position_weights(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """decay^(t-s-1) where s < t, exactly 0 elsewhere (s = t included: the current token is the
        residual stream's job)."""
        lag = self.lag(seq_len, device)
        earlier = lag > 0
        log_decay = F.logsigmoid(self.decay_logit)
        w = torch.exp((lag - 1).clamp(min=0).to(log_decay.dtype) * log_decay)
        return torch.where(earlier, w, torch.zeros((), dtype=w.dtype, device=device))

    def forward(self, n: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
        scores = (n * self.q) @ (n * self.k).transpose(1, 2)  # [B, T, T], no softmax
        scores = scores * self.position_weights(n.shape[1], n.device).to(n.dtype)
        return (scores @ n) * self.out_scale


class LowRankVocabMap(nn.Module):
    """Within-position: gelu(n U W^T + n * d + b) * scale — rank-r plus diagonal V x V map."""

    def __init__(self, c: VocabSpaceConfig) -> None:
        super().__init__()
        self.activation = c.activation
        self.U = nn.Parameter(torch.randn(c.vocab_size, c.rank) * c.init_std)
        self.W = nn.Parameter(torch.randn(c.vocab_size, c.rank) * c.init_std)
        self.diag = nn.Parameter(torch.zeros(c.vocab_size))
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.out_scale = nn.Parameter(torch.tensor(float(c.mixer_scale)))

    def forward(self, n: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
        h = (n @ self.U) @ self.W.t() + n * self.diag + self.bias
        return activate(h, self.activation) * self.out_scale


class VocabStep(nn.Module):
    """x + g_cross * cross(rms(x)), then x + g_within * within(rms(x))."""

    def __init__(self, c: VocabSpaceConfig, cross: nn.Module, within: nn.Module) -> None:
        super().__init__()
        self.eps = c.norm_eps
        self.cross, self.within = cross, within
        gain_shape = (c.vocab_size,) if c.variant == "conv" else ()
        self.cross_gain = nn.Parameter(torch.ones(gain_shape))
        self.within_gain = nn.Parameter(torch.ones(gain_shape))

    def forward(self, x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.cross, DepthwiseCausalConv):
            x = x + self.cross_gain * self.cross(rms(x, self.eps))
        else:
            x = x + self.cross_gain * self.cross(rms(x, self.eps), basis)
        return x + self.within_gain * self.within(rms(x, self.eps), basis)


def vocabspace_param_formula(c: VocabSpaceConfig) -> dict[str, int]:
    """Closed-form parameter counts (the tests compare them with the module)."""
    v = c.vocab_size
    if c.variant == "conv":
        read_write = (
            2 * v * c.n_channels if c.read == "lowrank" else 2 * (2 * c.n_fourier_basis) * c.n_channels
        )
        step = v * c.kernel_size + v + read_write + c.n_channels**2 + c.n_channels + 1 + 2 * v
    else:
        step = 2 * v + 2 * v * c.rank + 2 * v + 5
    total = c.n_steps * step + 1
    return {"total": total, "non_embedding": total}


@register(
    "vocabspace",
    description="Vocabulary-space model (exp-agi-models v2_conv / v8_lowrank_vv): width = V, no embedding/head",
    presets={
        "conv-nano": dict(variant="conv", n_steps=2, kernel_size=4, n_channels=16),
        "conv-micro": dict(variant="conv", n_steps=4, kernel_size=8, n_channels=64),
        # v2_conv as published: 8 steps, 16 taps, 128 channels, Fourier read/write over 16 frequencies.
        "conv-paper": dict(
            variant="conv", n_steps=8, kernel_size=16, n_channels=128, read="fourier", n_fourier_basis=16
        ),
        "interaction-nano": dict(variant="interaction", n_steps=2, rank=8),
        "interaction-micro": dict(variant="interaction", n_steps=4, rank=32),
        # v8_lowrank_vv as published: 8 hops, rank 8, decay_init 3.
        "interaction-paper": dict(variant="interaction", n_steps=8, rank=8),
    },
    cpu_presets=("conv-nano", "conv-micro", "interaction-nano", "interaction-micro"),
)
class VocabSpace(LumiModel[VocabSpaceConfig]):
    config_class = VocabSpaceConfig
    basis: torch.Tensor | None  # buffer for read="fourier", else None
    # Mixer classes per variant (a test plugin swaps the interaction mixer for the reversed-mask bug).
    interaction_class: type[nn.Module] = DecayedInteraction
    # The output scalar starts at 1/sqrt(V) and must grow ~20x before predictions can be confident,
    # so lumi check's one-batch overfit needs a larger step than its default 3e-3 (the source trained
    # with Adam 0.03; 1e-2 memorises every CPU preset in <= ~65 steps, 0.03 is erratic for
    # interaction-micro).
    check_overfit_lr = 1e-2
    check_overfit_steps = 100

    def __init__(self, config: VocabSpaceConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = OneHotInput(c.vocab_size)
        self.steps = nn.ModuleList([self.make_step() for _ in range(c.n_steps)])
        self.logit_scale = nn.Parameter(torch.tensor(c.logit_scale_init / math.sqrt(c.vocab_size)))
        if c.variant == "conv" and c.read == "fourier":
            self.register_buffer("basis", fourier_basis(c.vocab_size, c.n_fourier_basis), persistent=False)
        else:
            self.basis = None

    def make_step(self) -> VocabStep:
        c = self.config
        if c.variant == "conv":
            return VocabStep(c, DepthwiseCausalConv(c), ChannelMixer(c))
        return VocabStep(c, self.interaction_class(c), LowRankVocabMap(c))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for step in self.steps:
            x = step(x, self.basis)
        logits = rms(x, self.config.norm_eps) * self.logit_scale
        return softcap(logits, self.config.logit_softcap)

    def embedding_params(self) -> int:
        return 0  # the one-hot input has no weights and there is no output head

    def stats(self) -> dict[str, float]:
        out = {"logit_scale": float(self.logit_scale.detach())}
        if self.config.variant == "interaction":
            decays = [
                float(torch.sigmoid(cast(torch.Tensor, s.cross.decay_logit).detach()))
                for s in self.steps
                if hasattr(s.cross, "decay_logit")
            ]
            if decays:
                out["mean_decay"] = sum(decays) / len(decays)
        return out

    def forward_flops_per_token(self, seq_len: int) -> tuple[float, float]:
        """(cross-mixer, within-mixer) forward FLOPs per token of ONE step."""
        c, v = self.config, self.config.vocab_size
        if c.variant == "conv":
            return 2.0 * v * c.kernel_size, 4.0 * v * c.n_channels + 2.0 * c.n_channels**2
        return 4.0 * seq_len * v, 4.0 * v * c.rank

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        cross, within = self.forward_flops_per_token(seq_len)
        training = 3.0 * c.n_steps * (cross + within)
        # Step 1's cross mixer reads the constant one-hot: no input gradient is computed there.
        no_input_grad = 2.0 * c.vocab_size * (c.kernel_size if c.variant == "conv" else seq_len)
        return training - no_input_grad

    def weight_generation_flops(self) -> float:
        """Per forward+backward (not per token): building R and W from the Fourier coefficients."""
        c = self.config
        if c.variant != "conv" or c.read != "fourier":
            return 0.0
        per_matrix = 2.0 * c.vocab_size * (2 * c.n_fourier_basis) * c.n_channels  # one B @ A product
        return c.n_steps * 2 * (per_matrix + per_matrix)  # read and write; forward + coefficient grad

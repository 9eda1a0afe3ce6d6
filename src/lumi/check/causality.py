"""The leak catcher: logits at position t may depend on tokens 0..t only.

Two independent probes, because each misses leaks the other catches:

- perturbation: for every cut t, replace all tokens after t with different random tokens and
  require the logits at positions <= t to stay put (float tolerance). Probing every t, at two
  lengths (T and T+3), covers every patch/chunk boundary of patch models.
- gradient: the gradient of logits[:, t] with respect to the input-embedding output at any
  position > t must be exactly zero. This catches leaks too small for the perturbation
  tolerance (a future token mixed in with weight 1e-7).
"""

from __future__ import annotations

import torch
from torch import nn

from lumi.check.context import CheckContext, forward_logits
from lumi.check.report import CheckResult

PERTURBATION_ATOL = 1e-5  # absolute, on fp32 logits


def _perturb_after(tokens: torch.Tensor, t: int, vocab_size: int, g: torch.Generator) -> torch.Tensor:
    """Copy of ``tokens`` whose positions > t all hold a different token."""
    out = tokens.clone()
    tail = out[:, t + 1:]
    shift = torch.randint(1, vocab_size, tail.shape, generator=g)
    out[:, t + 1:] = (tail + shift) % vocab_size
    return out


def check_perturbation(ctx: CheckContext) -> CheckResult:
    name = "causality_perturbation"
    model = ctx.build().eval()
    v = ctx.vocab_size
    worst = 0.0
    lengths = ctx.causal_lengths()
    first_leak: tuple[int, int, int, float] | None = None  # (T, cut t, leaking position, |delta|)
    leak_counts: dict[int, int] = {}
    with torch.no_grad():
        for stream, T in enumerate(lengths):
            x = ctx.tokens(ctx.batch_size, T, stream=10 + stream)
            ref = forward_logits(model, x, v)
            if not torch.isfinite(ref).all():
                return CheckResult(name, False, f"logits are not finite at T={T} (cannot judge causality)")
            g = torch.Generator().manual_seed(ctx.seed * 1000 + 20 + stream)
            leaks = 0
            for t in range(T - 1):
                out = forward_logits(model, _perturb_after(x, t, v, g), v)
                per_pos = (out[:, : t + 1] - ref[:, : t + 1]).abs().amax(dim=(0, 2))  # [t+1]
                bad = ~(per_pos <= PERTURBATION_ATOL)  # NaN counts as a leak
                m = float(per_pos.nan_to_num(float("inf")).max())
                worst = max(worst, m)
                if bad.any():
                    leaks += 1
                    if first_leak is None:
                        p = int(bad.nonzero()[0, 0])
                        first_leak = (T, t, p, float(per_pos[p]))
            leak_counts[T] = leaks
    lens = " and ".join(f"T={T}" for T in lengths)
    if first_leak is not None:
        T, t, p, d = first_leak
        counts = ", ".join(f"{leak_counts[L]} of {L - 1} cuts leak at T={L}" for L in lengths)
        return CheckResult(
            name, False,
            f"LEAK at position {p}: changing the tokens after position t={t} (T={T}) changed the logits at "
            f"position {p} by {d:.3g} (tolerance {PERTURBATION_ATOL:g} abs); {counts}",
            value=worst,
        )
    return CheckResult(
        name, True,
        f"logits at positions <= t unchanged for every cut t in 0..T-2 at {lens} "
        f"(max |Δlogit| {worst:.1e}, tolerance {PERTURBATION_ATOL:g} abs)",
        value=worst,
    )


def _capture_input_embeddings(model: nn.Module, tokens: torch.Tensor):
    """Forward hooks that swap the output of every nn.Embedding fed the token tensor for a leaf
    tensor we can differentiate with respect to (same values, so the forward is unchanged)."""
    captured: list[torch.Tensor] = []

    def fed_the_tokens(x) -> bool:  # the token tensor itself, or a copy/cast of it
        return (isinstance(x, torch.Tensor) and x.shape == tokens.shape and not x.is_floating_point()
                and torch.equal(x.to(tokens.dtype), tokens))

    def hook(module, inputs, output):
        if inputs and fed_the_tokens(inputs[0]) and isinstance(output, torch.Tensor) and output.is_floating_point():
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()  # a non-leaf copy, so in-place edits inside the model stay legal
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Embedding)]
    return captured, handles


GRADIENT_SAMPLES = 8  # positions probed at the second length (every position at the first)


def _gradient_positions(T: int, every: bool, g: torch.Generator) -> list[int]:
    """Every t in 0..T-2, or a sample: 0, 1, the middle, T-3, T-2 and random others."""
    if every or T - 1 <= GRADIENT_SAMPLES:
        return list(range(T - 1))
    fixed = {0, 1, (T - 1) // 2, T - 3, T - 2}
    rest = [t for t in torch.randperm(T - 1, generator=g).tolist() if t not in fixed]
    return sorted(fixed | set(rest[: GRADIENT_SAMPLES - len(fixed)]))


def check_gradient(ctx: CheckContext) -> CheckResult:
    name = "causality_gradient"
    model = ctx.build().eval()
    v = ctx.vocab_size
    lengths = ctx.causal_lengths()
    first_leak: tuple[int, int, int, float] | None = None
    leak_counts: dict[int, tuple[int, int]] = {}  # T -> (leaking, probed)
    n_emb = 0
    for stream, T in enumerate(lengths):
        x = ctx.tokens(ctx.batch_size, T, stream=30 + stream)
        captured, handles = _capture_input_embeddings(model, x)
        try:
            with torch.enable_grad():
                logits = forward_logits(model, x, v)
        finally:
            for h in handles:
                h.remove()
        if not captured:
            return CheckResult(name, True, "n/a: model has no input embedding (nn.Embedding fed the tokens); "
                               "the perturbation row covers causality", skipped=True)
        if not logits.requires_grad:
            return CheckResult(name, False, "logits do not depend on the input embedding (no gradient path)")
        n_emb = len(captured)
        g = torch.Generator().manual_seed(ctx.seed * 1000 + 40 + stream)
        leaks = probed = 0
        for t in _gradient_positions(T, every=stream == 0, g=g):
            # A random projection of logits[:, t] so no direction can cancel out.
            r = torch.randn(ctx.batch_size, v, generator=g)
            grads = torch.autograd.grad((logits[:, t].float() * r).sum(), captured, retain_graph=True,
                                        allow_unused=True)
            per_pos = torch.zeros(T - t - 1)
            for gr in grads:
                if gr is not None:
                    per_pos = torch.maximum(per_pos, gr[:, t + 1:].abs().flatten(2).amax(dim=(0, 2)).nan_to_num(1.0))
            bad = per_pos != 0
            probed += 1
            if bad.any():
                leaks += 1
                if first_leak is None:
                    p = int(bad.nonzero()[0, 0])
                    first_leak = (T, t, t + 1 + p, float(per_pos[p]))
        leak_counts[T] = (leaks, probed)
        del logits
    lens = f"T={lengths[0]}" + "".join(f" (and {GRADIENT_SAMPLES} positions incl. 0, middle, T-2 at T={L})"
                                       for L in lengths[1:])
    if first_leak is not None:
        T, t, p, d = first_leak
        counts = ", ".join(f"{leak_counts[L][0]} of {leak_counts[L][1]} probed positions leak at T={L}" for L in lengths)
        return CheckResult(
            name, False,
            f"LEAK at position {t}: the gradient of the logits at position {t} (T={T}) w.r.t. the input "
            f"embedding at future position {p} is {d:.3g} (must be exactly 0); {counts}",
            value=d,
        )
    what = "input embedding" if n_emb == 1 else f"{n_emb} input embeddings"
    return CheckResult(
        name, True,
        f"d logits[t] / d {what}[>t] == 0 exactly for every t in 0..T-2 at {lens}",
        value=0.0,
    )

"""The leak catcher: logits at position t may depend on tokens 0..t of their own sequence only.

Three check rows, each running one probe of `lumi.check.probes` under every condition a leak hides
behind (docs/plugins.md, "Mistakes Lumi catches"):

- weights: the initialisation, every parameter re-drawn at random (zero-initialised gates open),
  and the weights after the overfit check's training;
- mode: eval with autograd off (the inference path) and train with autograd on (the training path);
- lengths: T and T+3, a long length (256), the model's maximum context, and any asked for; every
  cut at short lengths, block boundaries plus a sample at long ones;
- batch: many rows per forward, and (perturbation) single sequences too.

The first leaking condition is reported with the length, the cut and the position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lumi.check import probes
from lumi.check.context import CheckContext, forward_logits
from lumi.check.probes import PERTURBATION_ATOL, Condition, ProbeResult
from lumi.check.report import CheckResult

# Tokens pushed through the model per (length, condition): bounds the cuts probed at long lengths.
PROBE_TOKENS = 1 << 13
ROWS = 64  # cuts per forward/backward (fewer when the logits would not fit MAX_LOGIT_ELEMENTS)
SINGLE_CUTS = 4  # batch-1 perturbation cuts per length (one forward each)

MODES = (("eval", False), ("train", True))  # (mode, autograd): the inference path and the training path

__all__ = ["PERTURBATION_ATOL", "check_batch", "check_gradient", "check_perturbation"]


@dataclass
class _Weights:
    name: str
    model: nn.Module | None
    note: str | None = None  # why this weight set was not probed


def _weight_sets(ctx: CheckContext) -> list[_Weights]:
    """The initialised model, a randomised one (every path active) and the overfit-trained one."""
    sets = [_Weights("init", ctx.build())]
    randomised = probes.randomised_copy(
        ctx.build(), _forward(ctx), ctx.vocab_size, ctx.seq_len, ctx.seed * 1000 + 7
    )
    sets.append(
        _Weights(
            "randomised",
            randomised,
            None
            if randomised is not None
            else "randomised weights give non-finite logits at every scale tried",
        )
    )
    run = ctx.overfit()
    if run.error is None and _finite(ctx, run.model):
        sets.append(_Weights("trained", run.model))
    else:
        sets.append(_Weights("trained", None, "the overfit training did not give finite logits"))
    return sets


def _finite(ctx: CheckContext, model: nn.Module) -> bool:
    model.eval()
    with torch.no_grad():
        out = forward_logits(model, ctx.tokens(1, ctx.seq_len, stream=5), ctx.vocab_size)
    return bool(torch.isfinite(out).all())


def _forward(ctx: CheckContext) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    return lambda model, x: forward_logits(model, x, ctx.vocab_size)


@dataclass
class _Outcome:
    """What one row saw over all conditions and lengths."""

    probes_run: int = 0
    worst: float = 0.0
    leak: str | None = None
    counts: str = ""
    not_applicable: bool = False


def _run_row(ctx: CheckContext, kind: str) -> tuple[_Outcome, list[int], list[str]]:
    """Probe ``kind`` under every weight set x mode x length; stop after the first leaking condition."""
    lengths, skipped = ctx.probe_lengths()
    skipped = list(skipped)
    out = _Outcome()
    forward = _forward(ctx)
    failed_lengths: set[int] = set()
    weight_sets = _weight_sets(ctx)
    skipped += [w.note for w in weight_sets if w.model is None and w.note]
    for w in weight_sets:
        if w.model is None:
            continue
        for mode, grad in MODES:
            if kind == "gradient":
                grad = True  # a gradient needs autograd; the mode still switches train/eval paths
            per_length: list[tuple[int, ProbeResult]] = []
            for T in lengths:
                if T in failed_lengths:
                    continue
                try:
                    results = _probe(ctx, kind, w, mode, grad, T, forward)
                except Exception as e:  # a forward that fails at a long length is not a leak
                    if ctx.seq_len + 3 >= T:
                        raise
                    failed_lengths.add(T)
                    skipped.append(
                        f"T={T} (forward raised {type(e).__name__}: {str(e).splitlines()[0][:80]}; "
                        "declare max_context() if the model has a maximum length)"
                    )
                    continue
                for r in results:
                    if not r.applicable:
                        out.not_applicable = True
                        return out, lengths, skipped
                    out.probes_run += r.probed
                    out.worst = max(out.worst, r.worst)
                    per_length.append((T, r))
            first = next((r.first for _, r in per_length if r.first is not None), None)
            if first is not None:
                out.leak = first.message()
                # Counts per length for the same kind of pass (batched cuts, or single sequences).
                same = [(T, r) for T, r in per_length if (r.batch > 1) == (first.condition.batch > 1)]
                what = "cuts" if kind != "batch" else "probes"
                out.counts = ", ".join(
                    f"{r.leaking} of {r.probed} {what} leak at T={T}" for T, r in same if r.probed
                )
                return out, lengths, skipped
    return out, [T for T in lengths if T not in failed_lengths], skipped


def _probe(
    ctx: CheckContext,
    kind: str,
    w: _Weights,
    mode: str,
    grad: bool,
    T: int,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> list[ProbeResult]:
    assert w.model is not None
    device = torch.device("cpu")
    seed = ctx.seed * 1000 + 300 + T
    if kind == "batch":
        if ctx.seq_len != T:
            return []
        cond = Condition(w.name, mode, grad, probes.BATCH_ROWS)
        return [probes.probe_batch(w.model, forward, T, ctx.vocab_size, cond, seed, device)]
    plan = probes.plan_cuts(T, ctx.vocab_size, PROBE_TOKENS, ROWS, SINGLE_CUTS, seed)
    results = [
        probes.run_probe(
            kind,
            w.model,
            forward,
            T,
            ctx.vocab_size,
            plan.cuts,
            Condition(w.name, mode, grad, plan.rows),
            seed,
            device,
        )
    ]
    if kind == "perturbation" and not grad:  # single sequences too: a leak may depend on the batch size
        results.append(
            probes.run_probe(
                kind,
                w.model,
                forward,
                T,
                ctx.vocab_size,
                plan.single,
                Condition(w.name, mode, grad, 1),
                seed,
                device,
            )
        )
    return results


def _lengths_text(ctx: CheckContext, lengths: list[int]) -> str:
    parts = []
    for T in lengths:
        n = len(probes.select_cuts(T, max(1, PROBE_TOKENS // T), 0))
        parts.append(f"{T}" if n == T - 1 else f"{T} ({n} of {T - 1} cuts: block boundaries first)")
    return "T=" + ", ".join(parts)


def _result(ctx: CheckContext, name: str, kind: str, passed_what: str) -> CheckResult:
    out, lengths, skipped = _run_row(ctx, kind)
    if out.not_applicable:
        return CheckResult(
            name,
            True,
            "n/a: model has no input embedding (nn.Embedding fed the tokens); "
            "the perturbation and batch rows cover causality",
            skipped=True,
        )
    if out.leak is not None:
        return CheckResult(name, False, f"{out.leak}; {out.counts}", value=out.worst)
    modes = "eval and train mode" if kind == "gradient" else "eval mode (grad off) and train mode (grad on)"
    where = _lengths_text(ctx, lengths) if kind != "batch" else f"T={ctx.seq_len}"
    detail = f"{passed_what} at {where}, init / randomised / trained weights, {modes}"
    if kind == "perturbation":
        detail += f"; max |Δlogit| {out.worst:.1e} (tolerance {PERTURBATION_ATOL:g} x max(1, |logit|))"
    if skipped:
        detail += "; skipped: " + "; ".join(skipped)
    return CheckResult(name, True, detail, value=out.worst)


def check_perturbation(ctx: CheckContext) -> CheckResult:
    return _result(
        ctx,
        "causality_perturbation",
        "perturbation",
        "changing the tokens after cut t leaves the logits at positions <= t unchanged for every "
        "cut probed (batches of cuts and single sequences)",
    )


def check_gradient(ctx: CheckContext) -> CheckResult:
    return _result(
        ctx,
        "causality_gradient",
        "gradient",
        "d logits[<= t] / d input embedding[> t] == 0 exactly for every cut t probed",
    )


def check_batch(ctx: CheckContext) -> CheckResult:
    return _result(
        ctx,
        "causality_batch",
        "batch",
        f"the logits of a sequence do not depend on the other {probes.BATCH_ROWS - 1} sequences of "
        "its batch (value, and exact-zero gradient with grad on)",
    )

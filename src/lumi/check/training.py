"""Checks that a model can be trained: sane initial loss, one batch can be overfit, finite gradients."""

from __future__ import annotations

import math

import torch

from lumi.check.context import CheckContext, OverfitRun, aux_loss_sum, forward_logits, lm_loss
from lumi.check.report import CheckResult

INITIAL_LOSS_MARGIN = 0.25  # |loss - ln V| < 0.25 ln V on uniform random tokens
OVERFIT_FRACTION = 0.3  # after training on one batch: loss < 0.3 ln V


def check_initial_loss(ctx: CheckContext) -> CheckResult:
    model = ctx.build().eval()
    x = ctx.tokens(4, ctx.seq_len, stream=50)
    with torch.no_grad():
        loss = float(lm_loss(forward_logits(model, x, ctx.vocab_size), x))
    ln_v = math.log(ctx.vocab_size)
    ok = abs(loss - ln_v) < INITIAL_LOSS_MARGIN * ln_v
    detail = (
        f"loss {loss:.3f} on random tokens vs ln V = {ln_v:.3f} (V={ctx.vocab_size}); "
        f"must be within {INITIAL_LOSS_MARGIN:g} x ln V = ±{INITIAL_LOSS_MARGIN * ln_v:.2f}"
    )
    if not ok:
        detail += (
            "; an initial model should be close to uniform — check the init scale and that the "
            "input does not already predict the current token"
        )
    return CheckResult("initial_loss", ok, detail, value=loss)


def train_on_one_batch(ctx: CheckContext) -> OverfitRun:
    """Adam on one batch until memorised (or the step limit): the overfit check's training."""
    model = ctx.build().train()
    steps = int(model.check_overfit_steps)  # LumiModel declares the defaults (40 steps at 3e-3)
    lr = float(model.check_overfit_lr)
    x = ctx.tokens(ctx.batch_size, ctx.seq_len, stream=60)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    target = OVERFIT_FRACTION * math.log(ctx.vocab_size)
    start, used, error = math.nan, 0, None
    for used in range(1, steps + 1):
        logits = forward_logits(model, x, ctx.vocab_size)
        ce = lm_loss(logits, x)
        loss = ce + aux_loss_sum(model)
        if used == 1:
            start = float(ce.detach())
        if not torch.isfinite(loss):
            error = f"loss became {float(loss.detach())} while overfitting one batch (lr {lr:g})"
            break
        if float(ce.detach()) < 0.5 * target:  # clearly memorised: stop early to keep the check fast
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = float(lm_loss(forward_logits(model, x, ctx.vocab_size), x))
    return OverfitRun(model, lr, steps, used, start, final, error)


def check_overfit(ctx: CheckContext) -> CheckResult:
    run = ctx.overfit()
    if run.error is not None:
        return CheckResult("overfit", False, run.error)
    target = OVERFIT_FRACTION * math.log(ctx.vocab_size)
    ok = run.final_loss < target
    detail = (
        f"one batch {ctx.batch_size}x{ctx.seq_len}, Adam lr {run.lr:g}, {run.used} of max {run.steps} steps: "
        f"loss {run.start_loss:.3f} -> {run.final_loss:.3f}; must fall below {OVERFIT_FRACTION:g} x ln V = "
        f"{target:.2f}"
    )
    if not ok:
        detail += " (a model that cannot memorise one batch is not learning; set check_overfit_steps/_lr if it needs more)"
    return CheckResult("overfit", ok, detail, value=run.final_loss)


def check_finite_grads(ctx: CheckContext) -> CheckResult:
    model = ctx.build().train()
    x = ctx.tokens(ctx.batch_size, ctx.seq_len, stream=70)
    logits = forward_logits(model, x, ctx.vocab_size)
    loss = lm_loss(logits, x) + aux_loss_sum(model)
    if not torch.isfinite(loss):
        return CheckResult("finite_grads", False, f"training loss is {float(loss.detach())} (not finite)")
    loss.backward()
    bad, missing, n = [], [], 0
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n += 1
        if p.grad is None:
            missing.append(pname)
        elif not torch.isfinite(p.grad).all():
            bad.append(pname)
    if bad:
        return CheckResult(
            "finite_grads",
            False,
            f"non-finite gradients in {len(bad)} of {n} parameters: {_names(bad)}",
            value=len(bad),
        )
    detail = f"all {n - len(missing)} parameters with a gradient have finite gradients (loss {float(loss.detach()):.3f})"
    if missing:
        detail += f"; warning: {len(missing)} parameters get no gradient: {_names(missing)}"
    return CheckResult("finite_grads", True, detail, value=0)


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")

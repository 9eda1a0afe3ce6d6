"""Parameter counts are consistent; the analytic FLOPs/token matches a measured count.

FLOPs are measured with ``torch.utils.flop_counter.FlopCounterMode`` over one forward +
backward in training mode, with attention forced onto the MATH SDPA backend (the fused CPU
kernels are invisible to the counter). The counter sees matmuls only, which is exactly Lumi's
convention: 2 x multiply-accumulates of every linear layer incl. the head, attention over the
full T x T, backward = 2 x forward; embedding lookups, norms and elementwise ops are free.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.check.context import CheckContext, aux_loss_sum, forward_logits, lm_loss
from lumi.check.report import CheckResult
from lumi.models.base import LumiModel

FLOPS_RTOL = 0.05  # |analytic - measured| / measured


def check_params(ctx: CheckContext) -> CheckResult:
    model = ctx.build()
    pc = model.param_counts()
    unique = sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates
    problems = []
    if pc.total != unique:
        problems.append(
            f"param_counts().total = {pc.total:,} but the module has {unique:,} unique parameters"
        )
    if not 0 <= pc.non_embedding <= pc.total:
        problems.append(f"non_embedding = {pc.non_embedding:,} is outside [0, total = {pc.total:,}]")
    if pc.active is not None and not 0 < pc.active <= pc.total:
        problems.append(f"active = {pc.active:,} is outside (0, total = {pc.total:,}]")
    if problems:
        return CheckResult("params", False, "; ".join(problems), value=float(pc.total))
    detail = f"total {pc.total:,}, non-embedding {pc.non_embedding:,}"
    if pc.active is not None and pc.active != pc.total:
        detail += f", active {pc.active:,}"
    return CheckResult("params", True, detail + f" (V={ctx.vocab_size})", value=float(pc.total))


def measure_flops_per_token(model: LumiModel, tokens: torch.Tensor, vocab_size: int) -> float:
    """Measured training FLOPs (forward + backward) per token for one batch."""
    model.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = forward_logits(model, tokens, vocab_size)
        loss = lm_loss(logits, tokens) + aux_loss_sum(model)
        loss.backward()
    return counter.get_total_flops() / tokens.numel()


def check_flops(ctx: CheckContext) -> CheckResult:
    model = ctx.build()
    T = ctx.seq_len
    try:
        analytic = float(model.flops_per_token(T))
    except NotImplementedError:
        return CheckResult(
            "flops", False, f"{type(model).__name__} does not implement flops_per_token(seq_len)"
        )
    measured = measure_flops_per_token(model, ctx.tokens(ctx.batch_size, T, stream=100), ctx.vocab_size)
    if measured <= 0:
        return CheckResult(
            "flops",
            False,
            f"measured 0 FLOPs (analytic {analytic:,.0f}/token): the model does no "
            "matmuls the counter can see",
        )
    rel = abs(analytic - measured) / measured
    ok = rel <= FLOPS_RTOL
    detail = (
        f"analytic {analytic:,.0f} vs measured {measured:,.0f} training FLOPs/token at T={T} "
        f"({100 * rel:.2f}% apart, tolerance {100 * FLOPS_RTOL:g}%)"
    )
    if not ok:
        detail += (
            "; fix flops_per_token (3 x forward; forward = 2 x MACs of every matmul + full T x T attention)"
        )
    return CheckResult("flops", ok, detail, value=rel)

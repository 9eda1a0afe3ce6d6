"""Same seed -> same model; save -> load (safetensors) -> same logits."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lumi.check.context import CheckContext, forward_logits
from lumi.check.report import CheckResult


def check_determinism(ctx: CheckContext) -> CheckResult:
    x = ctx.tokens(ctx.batch_size, ctx.seq_len, stream=80)
    a, b = ctx.build().eval(), ctx.build().eval()
    with torch.no_grad():
        la = forward_logits(a, x, ctx.vocab_size)
        la2 = forward_logits(a, x, ctx.vocab_size)
        lb = forward_logits(b, x, ctx.vocab_size)
    sa, sb = a.state_dict(), b.state_dict()
    differing = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
    if differing:
        return CheckResult(
            "determinism",
            False,
            f"two builds with seed {ctx.seed} have different weights in {differing[0]!r}"
            f"{f' (+{len(differing) - 1} more)' if len(differing) > 1 else ''}; "
            "initialise only from torch's global RNG",
        )
    failed = _logit_mismatch(
        "determinism",
        la,
        la2,
        "two forwards of the same model on the same tokens differ (max |Δlogit| {d:.3g}); the forward pass "
        "must not be random in eval mode",
    ) or _logit_mismatch(
        "determinism",
        la,
        lb,
        f"two builds with seed {ctx.seed} give different logits (max |Δlogit| {{d:.3g}})",
    )
    if failed is not None:
        return failed
    return CheckResult(
        "determinism",
        True,
        f"two builds with seed {ctx.seed}: identical weights and bitwise identical logits",
        value=0.0,
    )


def check_save_load(ctx: CheckContext) -> CheckResult:
    from lumi.errors import LumiError
    from lumi.train.checkpoint import WEIGHTS, load_model_weights, save_model_files

    x = ctx.tokens(ctx.batch_size, ctx.seq_len, stream=90)
    original = ctx.build().eval()
    other = ctx.build(seed=ctx.seed + 1).eval()  # different init, so loading must actually change it
    with torch.no_grad():
        want = forward_logits(original, x, ctx.vocab_size)
    with tempfile.TemporaryDirectory(prefix="lumi-check-") as tmp:
        # The checkpoint code `lumi train` uses: safetensors weights (tied tensors kept once) + model config.
        save_model_files(Path(tmp), original)
        size = (Path(tmp) / WEIGHTS).stat().st_size
        try:
            load_model_weights(Path(tmp), other)
        except LumiError as e:
            return CheckResult("save_load", False, f"safetensors load into a fresh model failed: {e}")
    with torch.no_grad():
        got = forward_logits(other, x, ctx.vocab_size)
    failed = _logit_mismatch(
        "save_load",
        want,
        got,
        "logits after a safetensors save/load round trip differ (max |Δlogit| {d:.3g}); is some state kept "
        "outside parameters and persistent buffers?",
    )
    if failed is not None:
        return failed
    return CheckResult(
        "save_load",
        True,
        f"safetensors round trip ({size / 1e6:.2f} MB) into a differently "
        "initialised model gives bitwise identical logits",
        value=0.0,
    )


def _logit_mismatch(name: str, a: torch.Tensor, b: torch.Tensor, message: str) -> CheckResult | None:
    """A failed row when two logit tensors are not bitwise equal (``message`` formats ``{d}``, the max
    |Δlogit|), else None."""
    if torch.equal(a, b):
        return None
    d = float((a - b).abs().max())
    return CheckResult(name, False, message.format(d=d), value=d)

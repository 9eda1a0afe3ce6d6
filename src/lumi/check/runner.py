"""Run the contract checks on a model factory or a registered model name."""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lumi.check import accounting, causality, reproducibility, training
from lumi.check.context import CheckContext, forward_logits
from lumi.check.report import CheckReport, CheckResult
from lumi.errors import LumiError, closest
from lumi.models.base import LumiModel


def check_shape(ctx: CheckContext) -> CheckResult:
    model = ctx.build().eval()
    x = ctx.tokens(ctx.batch_size, ctx.seq_len, stream=1)
    with torch.no_grad():
        logits = forward_logits(model, x, ctx.vocab_size)
    if not torch.isfinite(logits).all():
        return CheckResult(
            "shape",
            False,
            f"logits [{ctx.batch_size}, {ctx.seq_len}, {ctx.vocab_size}] contain "
            "NaN or inf at initialisation",
        )
    return CheckResult(
        "shape",
        True,
        f"tokens [{ctx.batch_size}, {ctx.seq_len}] -> finite logits "
        f"[{ctx.batch_size}, {ctx.seq_len}, {ctx.vocab_size}] ({logits.dtype})",
    )


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: Callable[[CheckContext], CheckResult]


# Table order: cheapest contract first, then the leak catcher, then training, then bookkeeping.
CHECKS: dict[str, Check] = {
    c.name: c
    for c in [
        Check("shape", "output shape", check_shape),
        Check("causality_perturbation", "causality: perturbation", causality.check_perturbation),
        Check("causality_gradient", "causality: gradient", causality.check_gradient),
        Check("causality_batch", "causality: batch independence", causality.check_batch),
        Check("initial_loss", "initial loss ≈ ln V", training.check_initial_loss),
        Check("overfit", "overfit one batch", training.check_overfit),
        Check("finite_grads", "finite gradients", training.check_finite_grads),
        Check("determinism", "determinism", reproducibility.check_determinism),
        Check("save_load", "save/load (safetensors)", reproducibility.check_save_load),
        Check("params", "parameter counts", accounting.check_params),
        Check("flops", "FLOPs/token estimate", accounting.check_flops),
    ]
}

# Shorthands accepted by `only=` / `--only`.
CHECK_GROUPS = {"causality": ["causality_perturbation", "causality_gradient", "causality_batch"]}


def select_checks(only: list[str] | None) -> list[str]:
    if not only:
        return list(CHECKS)
    chosen: list[str] = []
    for raw in only:
        key = raw.strip().lower().replace("-", "_").replace("/", "_")
        names = CHECK_GROUPS.get(key) or ([key] if key in CHECKS else None)
        if names is None:
            choices = list(CHECKS) + list(CHECK_GROUPS)
            raise LumiError(f"unknown check {raw!r}{closest(key, choices)}; checks: {', '.join(choices)}")
        chosen += [n for n in names if n not in chosen]
    return [n for n in CHECKS if n in chosen]  # keep table order


def check_model(
    model_factory: Callable[[], LumiModel],
    *,
    label: str,
    seq_len: int = 32,
    preset: str | None = None,
    batch_size: int = 2,
    seed: int = 0,
    only: list[str] | None = None,
    threads: int | None = 1,
    extra_lengths: tuple[int, ...] | list[int] = (),
) -> CheckReport:
    """Run the contract checks on models built by ``model_factory`` (called under torch.manual_seed).

    Every check builds its own fresh model. A check that raises is reported as failed with the
    exception (a LumiError — bad user input — propagates). The caller's RNG state is preserved.
    ``extra_lengths`` are probed for causality on top of the defaults (T, T+3, 256, the model's
    maximum context), e.g. the lengths a run trains and evaluates at.
    The checked instances are tiny, so by default they run on one thread: more threads only add
    synchronisation overhead there, and oversubscribe a busy machine badly. ``threads=None`` keeps
    torch's setting.
    """
    names = select_checks(only)
    if seq_len < 4:
        raise LumiError(f"--seq-len must be >= 4 for the causality checks, got {seq_len}")
    if batch_size < 1:
        raise LumiError(f"batch_size must be >= 1, got {batch_size}")
    bad = [L for L in extra_lengths if int(L) < 2]
    if bad:
        raise LumiError(f"probe lengths must be >= 2, got {bad[0]}")
    start = time.perf_counter()
    report = CheckReport(model=label, preset=preset)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _run_all(
            model_factory,
            label,
            seq_len,
            batch_size,
            seed,
            names,
            report,
            tuple(int(L) for L in extra_lengths),
        )
    finally:
        torch.set_num_threads(old_threads)
    report.seconds = time.perf_counter() - start
    return report


def _run_all(
    model_factory: Callable[[], LumiModel],
    label: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    names: list[str],
    report: CheckReport,
    extra_lengths: tuple[int, ...],
) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            probe = model_factory()
        except LumiError:
            raise
        except Exception as e:
            report.results.append(CheckResult("build", False, f"building the model raised {_describe(e)}"))
            return
        vocab = int(getattr(getattr(probe, "config", None), "vocab_size", 0) or 0)
        if vocab < 2:
            raise LumiError(f"{label}: model config must have vocab_size >= 2 (got {vocab or 'none'})")
        max_len = probe.max_context()
        if max_len is not None and seq_len > max_len:
            raise LumiError(f"--seq-len {seq_len} exceeds the model's maximum context {max_len}")
        ctx = CheckContext(model_factory, label, seq_len, batch_size, seed, vocab, max_len, extra_lengths)
        del probe
        for name in names:
            try:
                result = CHECKS[name].run(ctx)
            except LumiError:
                raise
            except Exception as e:
                result = CheckResult(name, False, f"raised {_describe(e)}")
            report.results.append(result)


def run_checks(
    name: str,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    seq_len: int = 32,
    seed: int = 0,
    only: list[str] | None = None,
    extra_lengths: tuple[int, ...] | list[int] = (),
) -> CheckReport:
    """Check a registered model (preset + overrides resolved exactly as training would)."""
    from lumi.models.registry import get_spec, make_config

    spec = get_spec(name)
    config = make_config(name, preset, overrides, vocab_size)  # LumiError on bad input
    label = f"{name}:{preset}" if preset else name

    def factory() -> LumiModel:
        return spec.cls(copy.deepcopy(config))

    return check_model(
        factory,
        label=label,
        preset=preset,
        seq_len=seq_len,
        seed=seed,
        only=only,
        extra_lengths=extra_lengths,
    )


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}{where}: {msg}" if msg else f"{type(e).__name__}{where}"

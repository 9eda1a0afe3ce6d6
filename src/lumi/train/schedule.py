"""Learning-rate schedules as a multiplier of the peak lr, keyed to the fraction of the budget used.

Keying to the budget fraction (not to a step count) is what lets a wall-clock budget end annealed:
for step/token/FLOP budgets the fraction is ``step / total_steps``; for time budgets it is
``elapsed_training_seconds / budget_seconds``, so the warmdown starts when the clock says so.

- warmup: linear from ~0 to 1 over ``warmup_steps`` steps when set, else over ``warmup_frac`` of the
  budget (measured at the end of the step, so the first step's lr is small but not zero when the
  total is known);
- ``constant``: 1 after warmup;
- ``cosine``: half-cosine from 1 (end of warmup) to ``min_lr_frac`` (end of budget);
- ``wsd`` (warmup-stable-decay): 1 until the last ``warmdown_frac`` of the budget, then linear to
  ``min_lr_frac``.
"""

from __future__ import annotations

import math

from lumi.train.config import OptimSection


def lr_multiplier(cfg: OptimSection, step: int, frac_start: float, frac_end: float) -> float:
    """Multiplier for optimizer step ``step`` (0-based) that covers [frac_start, frac_end] of the budget."""
    frac_start = min(max(frac_start, 0.0), 1.0)
    frac_end = min(max(frac_end, frac_start), 1.0)
    if cfg.warmup_steps is not None:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        warm_frac = 0.0
    else:
        warm = min(1.0, frac_end / cfg.warmup_frac) if cfg.warmup_frac > 0 else 1.0
        warm_frac = cfg.warmup_frac
    lo = cfg.min_lr_frac
    if cfg.schedule == "constant":
        decay = 1.0
    elif cfg.schedule == "cosine":
        q = (frac_start - warm_frac) / (1.0 - warm_frac) if warm_frac < 1.0 else 1.0
        q = min(max(q, 0.0), 1.0)
        decay = lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * q))
    elif cfg.schedule == "wsd":
        start = 1.0 - cfg.warmdown_frac
        if frac_start <= start or cfg.warmdown_frac <= 0:
            decay = 1.0
        else:
            decay = 1.0 - (1.0 - lo) * (frac_start - start) / cfg.warmdown_frac
    else:  # validated in config; kept for direct callers
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    return warm * decay

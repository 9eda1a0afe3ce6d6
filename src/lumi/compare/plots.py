"""Validation-BPB curves of a comparison: per arm, the mean over seeds with a min–max band.

One PNG per x-axis: tokens, training FLOPs and training wall-clock seconds, all read from the
periodic eval rows (results["arms"][i]["runs"][j]["curve"]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lumi.compare.stats import is_number

# (file name, curve key for x, axis label)
PLOTS = (
    ("bpb_vs_tokens.png", "tokens", "training tokens"),
    ("bpb_vs_flops.png", "flops", "training FLOPs"),
    ("bpb_vs_wall.png", "elapsed_s", "training wall-clock (s)"),
)


def _points(run: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, val_bpb) of one run's curve, sorted by x, finite points only; None when empty."""
    curve = run.get("curve") or {}
    xs, ys = curve.get(key) or [], curve.get("val_bpb") or []
    pts = sorted((float(x), float(y)) for x, y in zip(xs, ys, strict=False) if is_number(x) and is_number(y))
    if not pts:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    x, idx = np.unique(x, return_index=True)  # np.interp needs increasing x
    return x, y[idx]


def arm_band(
    runs: list[dict[str, Any]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
    """(grid, mean, min, max, n_runs) over the runs' curves against ``key``; None without data.

    Only the usable (completed) runs when the arm has any: a crashed run's partial curve would make
    the mean jump where it stops. The grid is the union of the runs' x values inside the range all
    of them cover, each run interpolated there (np.interp, never extrapolated), so every point of the
    line is a mean over the same seeds. Runs whose ranges do not overlap fall back to the union of
    the ranges, averaging at each point the runs that reached it.
    """
    usable = [r for r in runs if r.get("usable")]
    curves = [c for c in (_points(r, key) for r in (usable or runs)) if c is not None]
    if not curves:
        curves = [c for c in (_points(r, key) for r in runs) if c is not None]
    if not curves:
        return None
    grid = np.unique(np.concatenate([c[0] for c in curves]))
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if lo <= hi:
        grid = grid[(grid >= lo) & (grid <= hi)]
    stack = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x[0]) & (grid <= x[-1])
        stack[i, inside] = np.interp(grid[inside], x, y)
    return grid, np.nanmean(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0), len(curves)


def make_plots(results: dict[str, Any], comp_dir: str | Path) -> dict[str, Path]:
    """Write bpb_vs_tokens.png, bpb_vs_flops.png and bpb_vs_wall.png into ``comp_dir``.

    Returns file name -> path for the plots written; a plot without any data is skipped.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed (servers, CI, ssh)
    from matplotlib.figure import Figure

    comp_dir = Path(comp_dir)
    written: dict[str, Path] = {}
    for fname, key, xlabel in PLOTS:
        bands = [
            (arm, band)
            for arm in results.get("arms", [])
            if (band := arm_band(arm.get("runs", []), key)) is not None
        ]
        if not bands:
            continue
        # Figure directly, not pyplot: no global figure state, nothing left open.
        fig = Figure(figsize=(7.5, 4.8), dpi=120)
        ax = fig.add_subplot(1, 1, 1)
        for i, (arm, (grid, mean, lo, hi, n)) in enumerate(bands):
            color = f"C{i % 10}"
            name = f"{arm['label']}{' (baseline)' if arm.get('is_baseline') else ''}, {n} seed{'s' if n != 1 else ''}"
            few = len(grid) < 12
            ax.plot(
                grid,
                mean,
                color=color,
                label=name,
                lw=2.2 if arm.get("is_baseline") else 1.6,
                marker="o" if few else None,
                ms=3,
            )
            if n > 1:
                ax.fill_between(grid, lo, hi, color=color, alpha=0.18, lw=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation BPB (periodic evals)")
        ax.set_title(
            f"{results.get('name', 'comparison')}: val BPB vs {xlabel.split(' (')[0]}"
            f" (mean over seeds, min–max band)",
            fontsize=10,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = comp_dir / fname
        tmp = path.with_name(f".{fname}.tmp{os.getpid()}")
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)  # a reader never sees a half-written PNG
        finally:
            tmp.unlink(missing_ok=True)
        written[fname] = path
    return written

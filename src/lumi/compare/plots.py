"""Validation-BPB curves of a comparison: per arm, the mean over seeds with a min–max band.

One PNG per x-axis: tokens, training FLOPs and training wall-clock seconds, all read from the
periodic eval rows (results["arms"][i]["runs"][j]["curve"]). Also the overlay of several runs' curves
that `lumi runs --compare` draws (PNG, and HTML when plotly is installed).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import TABLEAU_COLORS

from lumi.compare.stats import is_number
from lumi.io import write_file_atomic

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
        written[fname] = write_file_atomic(comp_dir / fname, functools.partial(fig.savefig, format="png"))
    return written


# -- lumi runs --compare ---------------------------------------------------------------------------

# matplotlib's default colour cycle (tab10), so a run has the same colour in the PNG and the HTML
PALETTE = tuple(TABLEAU_COLORS.values())


def _title(curves: list[dict[str, Any]], note: str | None) -> str:
    title = f"validation BPB of {len(curves)} run{'s' if len(curves) != 1 else ''} (periodic evals; ★ final)"
    return title + ("\n(different tokenizers: tokens are not comparable)" if note else "")


def overlay_png(curves: list[dict[str, Any]], path: Path, note: str | None = None) -> Path:
    """`lumi runs --compare`: one line per run, val BPB against tokens trained; the final evaluation a star.
    ``curves``: [{"path", "tokens", "val_bpb", "final": {"tokens", "val_bpb"} | None}]."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        if c["tokens"]:
            ax.plot(c["tokens"], c["val_bpb"], color=color, lw=1.6, marker="o", ms=3, label=c["path"])
        if c["final"]:
            ax.plot(
                [c["final"]["tokens"]],
                [c["final"]["val_bpb"]],
                color=color,
                marker="*",
                ms=11,
                ls="none",
                label=None if c["tokens"] else c["path"],
            )
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("validation BPB")
    ax.set_title(_title(curves, note), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return write_file_atomic(path, functools.partial(fig.savefig, format="png"))


def overlay_html(curves: list[dict[str, Any]], path: Path, note: str | None = None) -> Path | None:
    """The same plot as interactive HTML (plotly.js embedded: opens offline); None without plotly."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    fig = go.Figure()
    for i, c in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        if c["tokens"]:
            fig.add_trace(
                go.Scatter(
                    x=c["tokens"],
                    y=c["val_bpb"],
                    mode="lines+markers",
                    name=c["path"],
                    line={"color": color},
                    legendgroup=c["path"],
                )
            )
        if c["final"]:
            fig.add_trace(
                go.Scatter(
                    x=[c["final"]["tokens"]],
                    y=[c["final"]["val_bpb"]],
                    mode="markers",
                    name=f"{c['path']} (final)",
                    marker={"symbol": "star", "size": 14, "color": color},
                    legendgroup=c["path"],
                )
            )
    fig.update_layout(
        title=_title(curves, note).replace("\n", "<br>"),
        xaxis_title="tokens trained",
        yaxis_title="validation BPB",
        template="plotly_white",
    )
    return write_file_atomic(
        path, lambda tmp: fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    )

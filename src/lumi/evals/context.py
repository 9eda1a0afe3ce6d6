"""How a model uses context: BPB by context length inside the window, and at windows longer than training.

``context_curve`` scores the same text with non-overlapping windows of T, 2T, 4T, ... (up to the
model's maximum, or ``max_window``); each result carries its ``by_position`` buckets (1-8, 9-32, ...
tokens of context). A model that uses context well keeps improving along the buckets; one that
extrapolates keeps its BPB at windows beyond the training length. ``plot_context_curves`` draws one
line per (run, window) so several runs can be compared side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumi.errors import LumiError


def curve_lengths(train_len: int, max_context: int | None, max_window: int | None) -> list[int]:
    """T, 2T, 4T, ... up to ``max_window`` (default 4T) and never beyond the model's maximum."""
    limit = max_window if max_window is not None else 4 * train_len
    if max_context is not None:
        limit = min(limit, max_context)
    lengths, n = [], train_len
    while n <= limit:
        lengths.append(n)
        n *= 2
    return lengths or [min(train_len, limit)]


def context_curve(
    model: torch.nn.Module,
    tokens: np.ndarray,
    target_bytes: np.ndarray,
    lengths: list[int],
    max_targets: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """One evaluation per window length (same targets each time): bpb and by_position buckets."""
    from lumi.metrics.evaluate import evaluate_bpb

    out = []
    for length in lengths:
        try:
            r = evaluate_bpb(model, tokens, target_bytes, length, batch_size, device, max_targets=max_targets)
        except (RuntimeError, IndexError) as e:  # e.g. a learned position table shorter than the window
            raise LumiError(
                f"the model cannot score windows of {length} tokens: {str(e).splitlines()[0]}"
            ) from None
        out.append(
            {"window": length, "bpb": r["bpb"], "targets": r["targets"], "by_position": r["by_position"]}
        )
    return out


def plot_context_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """PNG: BPB against tokens of context (bucket midpoints, log scale), one line per run and window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = ["-", "--", ":", "-."]
    for i, (label, curve) in enumerate(curves.items()):
        color = f"C{i}"
        for j, entry in enumerate(curve):
            pts = [
                (np.sqrt(b["first"] * b["last"]), b["bpb"])
                for b in entry["by_position"]
                if b["bpb"] is not None
            ]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(
                xs,
                ys,
                styles[j % len(styles)],
                color=color,
                marker="o",
                ms=3,
                label=f"{label}, window {entry['window']} ({entry['bpb']:.3f})",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens of context inside the window (bucket midpoint)")
    ax.set_ylabel("bits per byte")
    ax.set_title(title or "context curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

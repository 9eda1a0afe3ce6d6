"""Curve diagnoses of one run from its metrics rows (docs/compare.md, "Curve diagnoses").

The rows are those `lumi train` writes to metrics.jsonl: ``kind`` "train" (step, tokens, loss,
loss_ema ...), "eval" (val_bpb, val_loss, train_loss_ema, ``final``) and "diverged". Labels, in
this order: diverged, descending | plateaued, unstable, overfitting, suspicious, no-eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lumi.compare.stats import as_number

SANITY_FLOOR_BPB = 0.3  # below this on natural text: a leak or broken byte accounting, not a good model
TAIL_FRACTION = 0.25  # the trend is judged over the last quarter of the x-range (tokens)
PLATEAU_DROP = 0.01  # fell more than 1% over the tail: still descending
SPIKE_RATIO = 1.25  # a loss above 1.25x the running median is a spike
SPIKE_WINDOW = 10  # ... of the previous 10 logged (finite) losses
OVERFIT_RISE = 0.01  # val BPB 1% above its best ...
OVERFIT_GAP_GROWTH = 0.02  # ... while val_loss - train_loss_ema grew by 0.02 nats
MIN_EVALS_FOR_TREND = 4  # fewer periodic evals: judge the trend on the train loss instead


@dataclass
class Diagnosis:
    """One label of a run's curve, with a human-readable reason."""

    label: str
    detail: str
    brief: str | None = None  # a short form for summaries across seeds ("val BPB fell 2.0%")

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def split_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, periodic eval rows). The final eval is left out: it may use another protocol
    (the full split instead of the periodic prefix), so it does not belong on the curve."""
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval" and not r.get("final")]
    return train, evals


def relative_tail_drop(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Relative fall of y over the last TAIL_FRACTION of the x-range: (y(x_tail) - y_last) / y_last.

    y(x_tail) is linearly interpolated at the start of the tail. Positive = still falling.
    None with fewer than 2 points, an empty x-range or a zero last value.
    """
    pts = [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=False)
        if as_number(x) is not None and as_number(y) is not None
    ]
    if len(pts) < 2:
        return None
    pts.sort(key=lambda p: p[0])
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    if x[-1] <= x[0] or y[-1] == 0:
        return None
    start = x[-1] - TAIL_FRACTION * (x[-1] - x[0])
    return float((np.interp(start, x, y) - y[-1]) / abs(y[-1]))


def find_spikes(
    losses: Sequence[float | None], window: int = SPIKE_WINDOW, ratio: float = SPIKE_RATIO
) -> list[int]:
    """Indices of losses above ``ratio`` x the median of the previous ``window`` finite losses.

    No judgement until ``window`` finite losses were seen; non-finite losses are skipped (divergence
    is its own diagnosis).
    """
    spikes: list[int] = []
    history: list[float] = []
    for i, loss in enumerate(losses):
        v = as_number(loss)
        if v is None:
            continue
        if len(history) >= window and v > ratio * float(np.median(history[-window:])):
            spikes.append(i)
        history.append(v)
    return spikes


def _x_of(row: dict[str, Any]) -> float | None:
    """Tokens seen (the comparison's common axis); the step when a row lacks tokens."""
    x = as_number(row.get("tokens"))
    return x if x is not None else as_number(row.get("step"))


def _pct(frac: float) -> float:
    return round(100.0 * frac, 1) + 0.0  # + 0.0 turns -0.0 into 0.0


def _diverged(
    train: list[dict[str, Any]], rows: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> Diagnosis | None:
    div_rows = [r for r in rows if r.get("kind") == "diverged"]
    bad_train = [r for r in train if as_number(r.get("loss")) is None]
    if not (
        summary.get("status") == "diverged"
        or summary.get("diverged_at_step") is not None
        or div_rows
        or bad_train
    ):
        return None
    step = summary.get("diverged_at_step")
    if step is None and div_rows:
        step = div_rows[0].get("diverged_at_step", div_rows[0].get("step"))
    if step is None and bad_train:
        step = bad_train[0].get("step")
    what = "a non-finite loss"
    if (
        div_rows
        and as_number(div_rows[0].get("loss")) is not None
        and as_number(div_rows[0].get("grad_norm")) is None
    ):
        what = "a non-finite gradient norm"
    where = f"at step {step}" if step is not None else "(step unknown)"
    return Diagnosis("diverged", f"training stopped on {what} {where}")


def _trend(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> Diagnosis | None:
    val = [
        (x, v)
        for r in evals
        if (x := _x_of(r)) is not None and (v := as_number(r.get("val_bpb"))) is not None
    ]
    use_ema = any(as_number(r.get("loss_ema")) is not None for r in train)
    key = "loss_ema" if use_ema else "loss"
    tr = [(x, v) for r in train if (x := _x_of(r)) is not None and (v := as_number(r.get(key))) is not None]
    few = f" (only {len(val)} periodic eval{'s' if len(val) != 1 else ''})"
    if len(val) >= MIN_EVALS_FOR_TREND:
        pts, what, why = val, "val BPB", ""
    elif len(tr) >= 2:
        pts, what, why = tr, f"train loss{' (EMA)' if use_ema else ''}", few
    elif len(val) >= 2:  # no train rows to fall back on: a short val curve beats no judgement
        pts, what, why = val, "val BPB", few
    else:
        return None
    drop = relative_tail_drop([p[0] for p in pts], [p[1] for p in pts])
    if drop is None:
        return None
    tail = f"over the last {round(100 * TAIL_FRACTION)}% of tokens{why}"
    pct = _pct(drop)
    if drop > PLATEAU_DROP:
        return Diagnosis(
            "descending",
            f"{what} fell {pct:.1f}% {tail}: still improving, a longer budget may change the ranking",
            brief=f"{what} fell {pct:.1f}%",
        )
    moved = f"fell {pct:.1f}%" if pct >= 0 else f"rose {-pct:.1f}%"
    return Diagnosis("plateaued", f"{what} {moved} {tail}, not more than {_pct(PLATEAU_DROP):g}%")


def _unstable(train: list[dict[str, Any]]) -> Diagnosis | None:
    # The raw loss, not the EMA: smoothing hides exactly the spikes we look for.
    spikes = find_spikes([r.get("loss") for r in train])
    if not spikes:
        return None
    first = train[spikes[0]].get("step")
    return Diagnosis(
        "unstable",
        f"{len(spikes)} train-loss spike(s) above {SPIKE_RATIO}x the median of the "
        f"previous {SPIKE_WINDOW} logged losses, first at step {first}",
    )


def _overfitting(evals: list[dict[str, Any]]) -> Diagnosis | None:
    pts = [r for r in evals if as_number(r.get("val_bpb")) is not None]
    if len(pts) < 2:
        return None
    vals = [float(r["val_bpb"]) for r in pts]
    best_i = int(np.argmin(vals))
    best, last = pts[best_i], pts[-1]
    if best_i == len(pts) - 1 or vals[best_i] <= 0:
        return None
    rise = (vals[-1] - vals[best_i]) / vals[best_i]
    if rise <= OVERFIT_RISE:
        return None

    def gap(r: dict[str, Any]) -> float | None:
        vl, tl = as_number(r.get("val_loss")), as_number(r.get("train_loss_ema"))
        return None if vl is None or tl is None else vl - tl

    g0, g1 = gap(best), gap(last)
    # Without the gap we cannot tell overfitting from a run that got worse everywhere (e.g. a bad LR).
    if g0 is None or g1 is None or g1 - g0 <= OVERFIT_GAP_GROWTH:
        return None
    return Diagnosis(
        "overfitting",
        f"val BPB rose {_pct(rise):.1f}% above its best ({vals[best_i]:.4f} at step "
        f"{best.get('step')}) by step {last.get('step')}, while the val − train "
        f"gap grew by {g1 - g0:.3f} nats",
    )


def diagnose_run(
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any] | None,
    check_passed: bool | None = True,
    check_detail: str | None = None,
) -> list[Diagnosis]:
    """The curve diagnoses of one run from its metrics rows and summary.json (may be empty).

    ``check_passed`` False (the arm failed `lumi check`) makes the run suspicious, with
    ``check_detail`` (e.g. "causality_perturbation: leak at position 0") as the reason.
    """
    summary = summary or {}
    train, evals = split_rows(rows)
    out: list[Diagnosis] = []

    diverged = _diverged(train, rows, summary)
    if diverged is not None:
        out.append(diverged)
    else:  # a diverged run's curve ends in garbage: no trend to read from it
        trend = _trend(train, evals)
        if trend is not None:
            out.append(trend)
    for d in (_unstable(train), _overfitting(evals)):
        if d is not None:
            out.append(d)

    reasons: list[str] = []
    final = as_number(summary.get("final_val_bpb"))
    periodic = [v for r in evals if (v := as_number(r.get("val_bpb"))) is not None]
    bpb, which = (
        (final, "final val BPB")
        if final is not None
        else ((periodic[-1], "last val BPB") if periodic else (None, ""))
    )
    if bpb is not None and bpb < SANITY_FLOOR_BPB:
        reasons.append(
            f"{which} {bpb:.4f} is below the sanity floor of {SANITY_FLOOR_BPB} (no compact model "
            "reaches that on natural text: a leak or broken byte accounting)"
        )
    if check_passed is False:
        reasons.append(f"failed lumi check: {check_detail}" if check_detail else "failed lumi check")
    if reasons:
        out.append(Diagnosis("suspicious", "; ".join(reasons)))

    any_final = any(as_number(r.get("val_bpb")) is not None for r in rows if r.get("kind") == "eval")
    if final is None and not any_final:
        out.append(Diagnosis("no-eval", "the run logged no validation BPB"))
    return out

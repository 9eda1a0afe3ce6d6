"""Curve diagnosis on synthetic metrics rows (the same row shapes `lumi train` writes)."""

from __future__ import annotations

import math

import pytest

from lumi.compare.diagnose import (
    SANITY_FLOOR_BPB,
    diagnose_run,
    find_spikes,
    relative_tail_drop,
    split_rows,
)


def train_rows(losses, every=10, tokens_per_step=100):
    return [{"kind": "train", "step": (i + 1) * every, "tokens": (i + 1) * every * tokens_per_step, "loss": loss}
            for i, loss in enumerate(losses)]


def eval_rows(bpbs, every=50, tokens_per_step=100, train_ema=None, val_loss=None):
    rows = []
    for i, b in enumerate(bpbs):
        row = {"kind": "eval", "step": (i + 1) * every, "tokens": (i + 1) * every * tokens_per_step,
               "val_bpb": b, "final": False}
        if train_ema is not None:
            row["train_loss_ema"] = train_ema[i]
        if val_loss is not None:
            row["val_loss"] = val_loss[i]
        rows.append(row)
    return rows


def labels(diags):
    return [d.label for d in diags]


def test_relative_tail_drop_interpolates_the_start_of_the_tail():
    # y at x = 75 (start of the last quarter of [0, 100]) is 1.25; the end is 1.0 -> drop 25%.
    assert relative_tail_drop([0, 100], [2.0, 1.0]) == pytest.approx(0.25)
    assert relative_tail_drop([0, 50, 100], [3.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert relative_tail_drop([5], [1.0]) is None


def test_descending_from_the_validation_curve():
    rows = train_rows([5 - 0.02 * i for i in range(40)]) + eval_rows([3.0, 2.8, 2.6, 2.4, 2.2, 2.0, 1.8, 1.6])
    d = diagnose_run(rows, {"status": "completed", "final_val_bpb": 1.6})
    assert labels(d) == ["descending"]
    assert "val BPB" in d[0].detail


def test_plateaued_curve():
    evals = eval_rows([3.0, 2.0, 1.6, 1.5, 1.5, 1.5, 1.5, 1.5])
    d = diagnose_run(train_rows([3.0] * 40) + evals, {"status": "completed", "final_val_bpb": 1.5})
    assert labels(d) == ["plateaued"]
    assert "fell 0.0%" in d[0].detail


def test_trend_falls_back_to_train_loss_with_few_evals():
    rows = train_rows([4.0 - 0.05 * i for i in range(40)]) + eval_rows([2.0, 1.9])
    d = diagnose_run(rows, {"status": "completed", "final_val_bpb": 1.9})
    assert labels(d) == ["descending"] and "train loss" in d[0].detail


def test_spikes_against_the_running_median():
    losses = [3.0] * 12 + [3.0 * 1.3] + [3.0] * 5 + [3.0 * 1.2]
    assert find_spikes(losses) == [12]  # 1.3x is a spike, 1.2x is below the 1.25x ratio
    assert find_spikes([3.0] * 5 + [10.0]) == []  # fewer than `window` previous losses: no judgement yet
    rows = train_rows(losses) + eval_rows([2.0, 1.9, 1.8, 1.7])
    d = diagnose_run(rows, {"status": "completed", "final_val_bpb": 1.7})
    assert "unstable" in labels(d)
    assert "first at step 130" in next(x for x in d if x.label == "unstable").detail


def test_diverged_run():
    rows = train_rows([3.0, 2.5, 2.0]) + [{"kind": "diverged", "step": 30, "diverged_at_step": 31, "loss": None}]
    d = diagnose_run(rows, {"status": "diverged", "diverged_at_step": 31, "final_val_bpb": None})
    assert labels(d)[0] == "diverged" and "step 31" in d[0].detail
    assert "descending" not in labels(d) and "plateaued" not in labels(d)
    assert "no-eval" in labels(d)
    # A NaN loss row alone (no summary yet) is enough.
    d2 = diagnose_run(train_rows([3.0, math.nan]), {})
    assert labels(d2)[0] == "diverged"


def test_overfitting_needs_a_growing_gap():
    val = [2.0, 1.8, 1.7, 1.75, 1.8]
    ema = [2.0, 1.7, 1.5, 1.3, 1.1]  # train keeps falling
    vloss = [1.4, 1.25, 1.18, 1.21, 1.25]
    d = diagnose_run(eval_rows(val, train_ema=ema, val_loss=vloss), {"status": "completed", "final_val_bpb": 1.8})
    of = next(x for x in d if x.label == "overfitting")
    assert "rose 5.9%" in of.detail and "step 150" in of.detail
    # Val worse at the end but train got worse too: not overfitting.
    ema_up = [2.0, 1.7, 1.5, 1.53, 1.57]
    d2 = diagnose_run(eval_rows(val, train_ema=ema_up, val_loss=vloss), {"status": "completed"})
    assert "overfitting" not in labels(d2)


def test_suspicious_below_the_sanity_floor_or_failed_check():
    rows = eval_rows([1.0, 0.5, 0.2, 0.1])
    d = diagnose_run(rows, {"status": "completed", "final_val_bpb": 0.1})
    s = next(x for x in d if x.label == "suspicious")
    assert f"{SANITY_FLOOR_BPB}" in s.detail
    ok = diagnose_run(eval_rows([3.0, 2.0, 1.9, 1.9]), {"status": "completed", "final_val_bpb": 1.9})
    assert "suspicious" not in labels(ok)
    leaky = diagnose_run(eval_rows([3.0, 2.0, 1.9, 1.9]), {"status": "completed", "final_val_bpb": 1.9},
                         check_passed=False, check_detail="causality_perturbation: leak at position 0")
    s = next(x for x in leaky if x.label == "suspicious")
    assert "failed lumi check" in s.detail and "position 0" in s.detail


def test_final_eval_row_is_not_part_of_the_curve():
    rows = eval_rows([3.0, 2.0]) + [{"kind": "eval", "step": 100, "tokens": 10000, "val_bpb": 1.95, "final": True}]
    train, evals = split_rows(rows)
    assert train == [] and [r["val_bpb"] for r in evals] == [3.0, 2.0]

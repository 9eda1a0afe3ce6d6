"""Adaptive seeds (`--seeds auto[:MAX]`): the anytime-valid confidence sequence, the stop rule, and power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lumi.compare.sequential import (
    ALPHA,
    AUTO_DEFAULT_MAX,
    AUTO_MIN_SEEDS,
    confidence_sequence,
    cs_half_width,
    decide,
    parse_auto_seeds,
)
from lumi.compare.stats import compare_paired, seeds_needed
from lumi.errors import LumiError


def _ever_excludes(seq: np.ndarray, truth: float) -> tuple[bool, bool]:
    """(the confidence sequence, a naive 95% t interval) wrongly excludes ``truth`` at some look n = 3..len."""
    cs = naive = False
    for n in range(AUTO_MIN_SEEDS, len(seq) + 1):
        lo, hi = confidence_sequence(seq[:n])
        cs |= not lo < truth < hi
        half = sps.t.ppf(0.975, n - 1) * seq[:n].std(ddof=1) / math.sqrt(n)
        naive |= abs(seq[:n].mean() - truth) > half
    return cs, naive


def test_peeking_after_every_seed_keeps_the_error_rate():
    # 2,000 sequences under the null, looked at after every seed up to MAX: the confidence sequence's
    # time-uniform error stays <= alpha (Ville), while peeking at a t interval inflates it far beyond.
    rng = np.random.default_rng(1234)
    n_seq = 2000
    cs_errors = naive_errors = 0
    for _ in range(n_seq):
        seq = rng.normal(0.3, 0.02, AUTO_DEFAULT_MAX)  # any mean and scale: the method is scale-invariant
        cs, naive = _ever_excludes(seq, 0.3)
        cs_errors += cs
        naive_errors += naive
    # Monte Carlo sd of a rate near 0.05 over 2,000 draws is ~0.005: three of them as slack.
    assert cs_errors / n_seq <= ALPHA + 0.015
    assert naive_errors / n_seq > 0.10  # the problem the method solves (about 0.17 here)


def test_heavier_tails_than_normal_still_covered_in_this_range():
    rng = np.random.default_rng(7)
    errors = sum(_ever_excludes(rng.standard_t(5, AUTO_DEFAULT_MAX), 0.0)[0] for _ in range(1000))
    assert errors / 1000 <= ALPHA + 0.02


def test_decides_quickly_for_a_large_effect():
    rng = np.random.default_rng(0)
    d = rng.normal(-0.05, 0.005, AUTO_DEFAULT_MAX)  # Δ = -0.05 BPB, seed-to-seed sd 0.005
    first = next(n for n in range(2, len(d) + 1) if decide(d[:n].mean(), *confidence_sequence(d[:n]), 0.005)
                 != "undecided")
    assert first == AUTO_MIN_SEEDS
    assert decide(d[:3].mean(), *confidence_sequence(d[:3]), 0.005) == "better"
    assert decide(-d[:3].mean(), *confidence_sequence(-d[:3]), 0.005) == "worse"


def test_equivalence_when_the_interval_sits_inside_the_threshold():
    rng = np.random.default_rng(3)
    d = rng.normal(0.0, 0.0004, 6)
    assert decide(d.mean(), *confidence_sequence(d), 0.005) == "equivalent"
    assert decide(0.0, 0.0, 0.0, 0.005) == "equivalent"  # identical arms: every Δ exactly 0


def test_decision_rules():
    assert decide(-0.02, -0.03, -0.01, 0.005) == "better"
    assert decide(0.02, 0.01, 0.03, 0.005) == "worse"
    assert decide(-0.002, -0.003, -0.001, 0.005) == "equivalent"  # excludes 0, but |Δ| is below the threshold
    assert decide(-0.002, -0.004, 0.006, 0.005) == "undecided"
    assert decide(-0.02, -0.04, 0.001, 0.005) == "undecided"
    assert decide(None, None, None, 0.005) == "undecided"


def test_half_width_closed_form():
    assert cs_half_width(2, 1.0) == math.inf  # 2 seeds can never bound the mean with this prior
    widths = [cs_half_width(n, 1.0) for n in range(3, 11)]
    assert all(math.isfinite(w) for w in widths) and widths == sorted(widths, reverse=True)
    # always wider than the fixed-n t interval (the price of looking at every n)
    for n, w in zip(range(3, 11), widths):
        assert w > sps.t.ppf(0.975, n - 1) / math.sqrt(n)
    assert cs_half_width(5, 2.0) == pytest.approx(2 * cs_half_width(5, 1.0))


def test_parse_auto_seeds_and_spec():
    from lumi.compare.comparison import _run_defining
    from lumi.compare.spec import spec_from_dict

    assert parse_auto_seeds("auto") == AUTO_DEFAULT_MAX
    assert parse_auto_seeds("auto:6") == 6
    assert parse_auto_seeds(3) is None and parse_auto_seeds("0,1") is None
    for bad in ("auto:2", "auto:x", "autox"):
        with pytest.raises(LumiError, match="auto"):
            parse_auto_seeds(bad)
    spec = spec_from_dict({"arms": ["llama:nano", "llama:nano+mlp=relu2"], "seeds": "auto:6"}, "test")
    assert spec.seeds == list(range(AUTO_MIN_SEEDS)) and spec.seeds_max == 6
    assert spec.to_dict()["seeds"] == "auto:6"
    other = spec_from_dict({"arms": ["llama:nano", "llama:nano+mlp=relu2"], "seeds": "auto:8"}, "test")
    assert _run_defining(spec.to_dict()) == _run_defining(other.to_dict())  # MAX does not change any run
    with pytest.raises(LumiError, match="test: seeds 'auto:1'"):
        spec_from_dict({"arms": ["llama:nano"], "seeds": "auto:1"}, "test")


def test_seeds_needed_resolves_the_threshold_at_the_observed_spread():
    sd, thr = 0.01, 0.005

    def brute(margin, half):
        return next(n for n in range(2, 10_000) if half(n) * sd < margin)

    def t_half(n):
        return sps.t.ppf(0.975, n - 1) / math.sqrt(n)

    # |Δ| >= threshold: the interval must exclude 0, so the margin is |Δ|
    assert seeds_needed(-0.02, sd, thr) == brute(0.02, t_half) == 4
    assert seeds_needed(-0.02, sd, thr, anytime=True) == brute(0.02, lambda n: cs_half_width(n, 1.0)) == 7
    # |Δ| < threshold: the interval must fit inside ±threshold, so the margin is threshold - |Δ|
    assert seeds_needed(0.001, sd, thr) == brute(0.004, t_half) == 27
    assert seeds_needed(0.0, 0.0, thr) == 2 and seeds_needed(0.0, 0.0, thr, anytime=True) == 3
    assert seeds_needed(0.005 - 1e-9, sd, thr) == 10_001  # right at the threshold: beyond the cap
    assert seeds_needed(None, None, thr) is None and seeds_needed(0.01, 0.01, 0.0) is None


def test_paired_comparison_and_verdict_line_state_power_and_the_sequence():
    from lumi.compare.report import verdict_line

    base = {0: 2.0, 1: 2.1, 2: 2.05, 3: 2.02}
    arm = {0: 1.95, 1: 2.04, 2: 2.01, 3: 1.96}
    vs = compare_paired("idea", "base", arm, base, threshold=0.005)
    assert vs.seeds_needed == seeds_needed(vs.mean_diff, vs.std_diff, 0.005)
    assert vs.seeds_needed_anytime == seeds_needed(vs.mean_diff, vs.std_diff, 0.005, anytime=True)
    assert vs.cs_low < vs.ci_low and vs.cs_high > vs.ci_high  # the anytime interval is the wider one
    line = verdict_line({"label": "idea", "vs_baseline": vs.to_dict(), "runs": [],
                         "sequential": {"decision": "better", "seeds": 4, "reason": "every arm decided"}}, "base")
    assert (f"resolving ±0.005 needs ~{vs.seeds_needed_anytime} seeds with the anytime-valid interval at the "
            f"observed spread (sd {vs.std_diff:.4f})") in line
    fixed = verdict_line({"label": "idea", "vs_baseline": vs.to_dict(), "runs": []}, "base")
    assert f"resolving ±0.005 needs ~{vs.seeds_needed} seeds at the observed spread" in fixed
    assert "seeds auto: better after 4 seeds (anytime-valid 95% interval [" in line


def test_auto_rounds_stop_and_record_why():
    from lumi.compare.comparison import _attach_auto, _auto_round
    from lumi.compare.spec import spec_from_dict

    spec = spec_from_dict({"arms": ["a=llama:nano", "b=llama:nano+mlp=relu2"], "seeds": "auto:4"}, "test")

    def results(cs_low, cs_high, mean):
        return {"seeds": spec.seeds, "arms": [
            {"label": "a", "is_baseline": True},
            {"label": "b", "is_baseline": False, "vs_baseline": {"mean_diff": mean, "cs_low": cs_low,
                                                                 "cs_high": cs_high}}]}

    rounds: list = []
    assert _auto_round(results(-0.1, 0.05, -0.02), spec, rounds) == (False, "")
    spec.seeds = [0, 1, 2, 3]
    r = results(-0.1, 0.05, -0.02)
    assert _auto_round(r, spec, rounds) == (True, "reached the maximum of 4 seeds")
    _attach_auto(r, spec, rounds, interrupted=False)
    assert r["seeds_rule"]["stopped_after"] == 4 and r["seeds_rule"]["rounds"][0] == {"seeds": 3,
                                                                                       "decisions": {"b": "undecided"}}
    assert r["arms"][1]["sequential"] == {"decision": "undecided", "seeds": 4,
                                          "reason": "reached the maximum of 4 seeds"}
    spec.seeds = [0, 1, 2]
    assert _auto_round(results(-0.05, -0.01, -0.03), spec, []) == (True, "every arm decided")

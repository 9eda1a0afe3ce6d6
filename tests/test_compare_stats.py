"""Comparison statistics against values computed by hand (closed-form t distributions for df = 2, 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lumi.compare.stats import compare_paired, sign_flip_p_value, summarize


def test_summary_mean_and_sample_std():
    s = summarize({0: 1.0, 1: 1.2, 2: 1.4})
    assert s.n == 3
    assert s.mean == pytest.approx(1.2, abs=1e-12)
    assert s.std == pytest.approx(0.2, abs=1e-12)  # ddof=1: sqrt((0.04 + 0 + 0.04) / 2)
    assert (s.min, s.max) == (1.0, 1.4)
    one = summarize({3: 1.5})
    assert one.n == 1 and one.mean == 1.5 and one.std is None


def test_three_seeds_hand_computed():
    # d = arm - baseline = [-0.01, -0.02, -0.03]: mean -0.02, sd 0.01, se 0.01/sqrt(3), t = -2 sqrt(3), df 2.
    arm = {0: 1.00, 1: 1.10, 2: 1.20}
    base = {0: 1.01, 1: 1.12, 2: 1.23}
    r = compare_paired("arm", "base", arm, base, threshold=0.005)
    assert r.seeds == [0, 1, 2] and r.n == 3
    assert r.differences == pytest.approx([-0.01, -0.02, -0.03], abs=1e-12)
    assert r.mean_diff == pytest.approx(-0.02, abs=1e-12)
    assert r.std_diff == pytest.approx(0.01, abs=1e-12)
    t = -2 * math.sqrt(3)
    assert r.t_stat == pytest.approx(t, rel=1e-9)
    # df=2: two-sided p = 1 - |t| / sqrt(2 + t^2); the 97.5% quantile solves q / sqrt(2 + q^2) = 0.95.
    assert r.p_ttest == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-9)  # 0.07418
    q = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.302653
    half = q * 0.01 / math.sqrt(3)
    assert r.ci_low == pytest.approx(-0.02 - half, rel=1e-9)
    assert r.ci_high == pytest.approx(-0.02 + half, rel=1e-9)
    # Sign flips of (1, 2, 3): |sum| in {6, 4, 2, 0, 0, 2, 4, 6}; |sum| >= 6 twice out of 8.
    assert r.p_permutation == pytest.approx(0.25, abs=1e-12) and r.permutation_exact
    assert (r.wins, r.losses, r.ties) == (3, 0, 0)
    assert not r.clears_threshold  # the CI contains 0
    assert r.verdict == "no clear difference"
    assert r.p_wilcoxon is None  # n < 6
    assert any("n=3" in n for n in r.notes)


def test_four_seeds_clear_win_hand_computed():
    d = [-0.02, -0.03, -0.025, -0.035]
    base = {k: 1.5 for k in range(4)}
    arm = {k: 1.5 + d[k] for k in range(4)}
    r = compare_paired("arm", "base", arm, base, threshold=0.005)
    sd = math.sqrt(1.25e-4 / 3)  # squared deviations from -0.0275 sum to 1.25e-4
    t = -0.0275 / (sd / 2)
    assert r.mean_diff == pytest.approx(-0.0275, abs=1e-12)
    assert r.std_diff == pytest.approx(sd, rel=1e-9)
    assert r.t_stat == pytest.approx(t, rel=1e-9)
    # df=3: two-sided p = 1 - (2/pi) (x / (1 + x^2) + atan x), x = |t| / sqrt(3).
    x = abs(t) / math.sqrt(3)
    assert r.p_ttest == pytest.approx(1 - (2 / math.pi) * (x / (1 + x * x) + math.atan(x)), rel=1e-7)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} from the table
    assert r.ci_low == pytest.approx(-0.0275 - half, rel=1e-7)
    assert r.ci_high == pytest.approx(-0.0275 + half, rel=1e-7)
    assert r.p_permutation == pytest.approx(2 / 16, abs=1e-12)  # only "all +" and "all -" reach |sum| = 0.11
    assert r.clears_threshold and r.verdict == "better"
    assert r.wins == 4
    # The same differences do not clear a threshold larger than |mean|.
    strict = compare_paired("arm", "base", arm, base, threshold=0.03)
    assert not strict.clears_threshold and strict.verdict == "no clear difference"
    # And reversed they are a clear loss.
    worse = compare_paired("arm", "base", base, arm, threshold=0.005)
    assert worse.verdict == "worse" and worse.losses == 4 and worse.wins == 0


def test_single_seed_has_no_interval_or_p():
    r = compare_paired("arm", "base", {0: 1.0}, {0: 1.1})
    assert r.n == 1 and r.mean_diff == pytest.approx(-0.1)
    assert r.ci_low is None and r.ci_high is None and r.p_ttest is None and r.p_permutation is None
    assert not r.clears_threshold and r.verdict == "not enough seeds"
    assert any("n=1" in n for n in r.notes)


def test_missing_seeds_pair_only_common_ones():
    arm = {0: 1.00, 1: 1.10}  # seed 2 crashed
    base = {0: 1.05, 1: 1.10, 2: 1.20}
    r = compare_paired("arm", "base", arm, base)
    assert r.seeds == [0, 1] and r.n == 2
    assert r.differences == pytest.approx([-0.05, 0.0], abs=1e-12)
    assert (r.wins, r.losses, r.ties) == (1, 0, 1)
    assert any("arm has no result for seed(s) 2" in n and "paired only seed(s) 0, 1" in n for n in r.notes)
    none = compare_paired("arm", "base", {}, base)
    assert none.n == 0 and none.mean_diff is None and none.verdict == "not enough seeds"


def test_identical_differences_t_test_undefined_but_permutation_defined():
    r = compare_paired("arm", "base", {0: 1.0, 1: 1.0}, {0: 1.1, 1: 1.1})
    assert r.std_diff == pytest.approx(0.0, abs=1e-15)
    assert r.p_ttest is None and any("identical" in n for n in r.notes)
    assert r.p_permutation == pytest.approx(0.5)  # 2 of 4 sign patterns reach |sum| = 0.2


def test_wilcoxon_exact_for_six_seeds():
    base = {k: 2.0 for k in range(6)}
    arm = {k: 2.0 - 0.01 * (k + 1) for k in range(6)}
    r = compare_paired("arm", "base", arm, base)
    assert r.p_wilcoxon == pytest.approx(2 / 64, abs=1e-12)  # all ranks negative: exact two-sided 2 / 2^6
    assert r.p_permutation == pytest.approx(2 / 64, abs=1e-12)


def test_sign_flip_counts_ties_as_extreme():
    p, exact = sign_flip_p_value(np.array([1.0, -1.0]))
    assert exact and p == 1.0  # observed |sum| = 0: every pattern is at least as extreme
    p, _ = sign_flip_p_value(np.array([0.1, 0.2]))
    assert p == pytest.approx(0.5)  # |sums| = 0.3, 0.1, 0.1, 0.3

"""Paired statistics for a comparison: one arm against the baseline over the seeds both finished.

Seed k gives every arm the same initialisation seed and the same batches, so the per-seed
difference d_k = BPB(arm, k) - BPB(baseline, k) cancels the "lucky data order" part of the noise
(docs/compare.md, "Statistics"). Δ < 0 favours the arm.

Reported: mean Δ with a 95% Student-t interval, the paired t-test, the exact sign-flip
permutation test (no normality assumed, which matters at 2-5 seeds), the exact Wilcoxon
signed-rank test from 6 seeds on, and "k of n seeds favour the arm".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Enumerate all 2^n sign patterns up to this n (65,536 patterns); Monte Carlo beyond.
EXACT_SIGN_FLIP_MAX_N = 16
MONTE_CARLO_SAMPLES = 200_000
MONTE_CARLO_SEED = 0
# Sums within this relative distance of the observed |sum| count as equally extreme: the same
# differences added in another order can differ in the last bits.
SUM_RTOL = 1e-9
# Differences this small relative to their size are "identical" (the t statistic would be noise / ~0).
IDENTICAL_RTOL = 1e-12
WILCOXON_MIN_N = 6
CONFIDENCE = 0.95

VERDICTS = ("better", "worse", "no clear difference", "not enough seeds")


def is_number(x: Any) -> bool:
    """A finite int or float (not a bool, not None, not NaN/inf)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def as_number(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (JSON null stands for NaN/inf in metrics)."""
    return float(x) if is_number(x) else None


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


@dataclass
class Summary:
    """Final validation BPB of one arm over its seeds."""

    n: int
    mean: float | None
    std: float | None  # sample std (ddof=1); None with fewer than 2 values
    min: float | None
    max: float | None
    values: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``values`` keyed by str(seed) (JSON object keys are strings)."""
        d = asdict(self)
        d["values"] = {str(k): v for k, v in self.values.items()}
        return d


def summarize(values: dict[int, float]) -> Summary:
    """n, mean, sample std (ddof=1), min and max of ``values`` (seed -> BPB); non-finite values are dropped."""
    vals = {int(k): float(v) for k, v in sorted(values.items()) if is_number(v)}
    if not vals:
        return Summary(0, None, None, None, None, {})
    arr = np.array(list(vals.values()), dtype=np.float64)
    std = float(np.std(arr, ddof=1)) if len(arr) >= 2 else None
    return Summary(len(arr), float(arr.mean()), std, float(arr.min()), float(arr.max()), vals)


def sign_flip_p_value(d: np.ndarray) -> tuple[float, bool]:
    """Two-sided sign-flip permutation p-value of mean(d) = 0, and whether it is exact.

    Under the null each d_k is as likely to be +|d_k| as -|d_k|; p is the share of sign patterns
    whose |sum| is at least the observed |sum| (ties count as extreme, so p >= 2^(1-n)). Exact
    enumeration up to EXACT_SIGN_FLIP_MAX_N values, else a fixed-seed Monte Carlo estimate.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    n = len(d)
    if n == 0:
        return 1.0, True
    observed = abs(float(d.sum()))
    tol = SUM_RTOL * max(float(np.abs(d).sum()), 1e-300)
    if n <= EXACT_SIGN_FLIP_MAX_N:
        patterns = np.arange(2 ** n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((patterns >> np.arange(n)) & 1)  # row p: bit k set -> flip d_k
        sums = np.abs(signs @ d)
        return float(np.count_nonzero(sums >= observed - tol)) / 2 ** n, True
    rng = np.random.default_rng(MONTE_CARLO_SEED)
    extreme, done, chunk = 0, 0, 20_000
    while done < MONTE_CARLO_SAMPLES:
        m = min(chunk, MONTE_CARLO_SAMPLES - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, n))
        extreme += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
        done += m
    # (k + 1) / (N + 1): the observed pattern is one of the draws, so a Monte Carlo p is never 0.
    return (extreme + 1) / (MONTE_CARLO_SAMPLES + 1), False


@dataclass
class PairedComparison:
    """One arm against the baseline over the seeds both have a final BPB for."""

    label: str
    baseline: str
    threshold: float
    seeds: list[int]
    n: int
    differences: list[float]  # arm - baseline, per paired seed (Δ < 0 favours the arm)
    mean_diff: float | None
    std_diff: float | None
    t_stat: float | None
    df: int | None
    p_ttest: float | None
    ci_low: float | None
    ci_high: float | None
    p_permutation: float | None
    permutation_exact: bool | None
    p_wilcoxon: float | None
    wins: int
    losses: int
    ties: int
    clears_threshold: bool
    verdict: str
    missing_arm: list[int] = field(default_factory=list)  # seeds the baseline has but the arm lacks
    missing_baseline: list[int] = field(default_factory=list)  # seeds the arm has but the baseline lacks
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_paired(label: str, baseline_label: str, arm_values: dict[int, float],
                   baseline_values: dict[int, float], threshold: float = 0.005) -> PairedComparison:
    """Paired comparison of ``arm_values`` against ``baseline_values`` (seed -> final BPB).

    Only seeds both have (finite) are paired; the others are named in ``notes``. ✓
    (``clears_threshold``) needs n >= 2, a defined 95% CI that excludes 0 and |mean Δ| >= threshold.
    """
    from scipy import stats as sps

    arm = {int(k): float(v) for k, v in arm_values.items() if is_number(v)}
    base = {int(k): float(v) for k, v in baseline_values.items() if is_number(v)}
    seeds = sorted(set(arm) & set(base))
    missing_arm = sorted(set(base) - set(arm))
    missing_base = sorted(set(arm) - set(base))
    notes: list[str] = []
    if missing_arm:
        notes.append(f"{label} has no result for seed(s) {_seed_list(missing_arm)}; "
                     f"paired only seed(s) {_seed_list(seeds) or 'none'}")
    if missing_base:
        notes.append(f"the baseline {baseline_label} has no result for seed(s) {_seed_list(missing_base)}; "
                     f"paired only seed(s) {_seed_list(seeds) or 'none'}")

    d = np.array([arm[k] - base[k] for k in seeds], dtype=np.float64)
    n = len(d)
    # A difference this close to 0 is float noise from subtracting equal BPBs: count it as a tie.
    tie_tol = 1e-12
    wins = int(np.count_nonzero(d < -tie_tol))
    losses = int(np.count_nonzero(d > tie_tol))
    ties = n - wins - losses

    mean = float(d.mean()) if n else None
    std = float(np.std(d, ddof=1)) if n >= 2 else None
    t_stat = p_t = ci_low = ci_high = None
    df = n - 1 if n >= 2 else None
    p_perm: float | None = None
    perm_exact: bool | None = None
    p_wil: float | None = None

    if n == 0:
        notes.append("no paired seeds: nothing to compare yet")
    elif n == 1:
        notes.append("n=1 paired seed: Δ is shown without a CI or p-value (one seed gives no estimate of spread)")
    else:
        assert mean is not None and std is not None and df is not None
        if std <= IDENTICAL_RTOL * max(abs(mean), 1e-300):
            notes.append(f"all {n} paired differences are identical (Δ = {mean:+.4f}): the t-test and its CI "
                         "are undefined (zero spread); see the sign-flip p-value")
        else:
            se = std / math.sqrt(n)
            t_stat = mean / se
            p_t = float(2.0 * sps.t.sf(abs(t_stat), df))
            half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
            ci_low, ci_high = mean - half, mean + half
        p_perm, perm_exact = sign_flip_p_value(d)
        if n < WILCOXON_MIN_N:
            notes.append(f"n={n} paired seeds: the smallest possible sign-flip p is {2.0 ** (1 - n):.3g}, and "
                         "the t interval assumes roughly normal differences; more seeds tighten both")
        else:
            p_wil = _wilcoxon_exact(d)

    clears = bool(n >= 2 and ci_low is not None and ci_high is not None and mean is not None
                  and (ci_high < 0 or ci_low > 0) and abs(mean) >= threshold)
    if n < 2:
        verdict = "not enough seeds"
    elif clears:
        verdict = "better" if mean < 0 else "worse"  # type: ignore[operator]
    else:
        verdict = "no clear difference"

    return PairedComparison(
        label=label, baseline=baseline_label, threshold=float(threshold), seeds=seeds, n=n,
        differences=[float(x) for x in d], mean_diff=mean, std_diff=std, t_stat=t_stat, df=df, p_ttest=p_t,
        ci_low=ci_low, ci_high=ci_high, p_permutation=p_perm, permutation_exact=perm_exact, p_wilcoxon=p_wil,
        wins=wins, losses=losses, ties=ties, clears_threshold=clears, verdict=verdict,
        missing_arm=missing_arm, missing_baseline=missing_base, notes=notes)


def _wilcoxon_exact(d: np.ndarray) -> float | None:
    """Exact two-sided Wilcoxon signed-rank p; None when it is undefined (every difference is 0)."""
    from scipy import stats as sps

    if not np.any(d != 0):
        return None
    with warnings.catch_warnings():
        # With zeros or tied ranks scipy falls back to the normal approximation and warns; the value is still
        # the best available, and the notes already say how many seeds there are.
        warnings.simplefilter("ignore")
        try:
            res = sps.wilcoxon(d, method="exact")
        except (ValueError, TypeError):
            res = sps.wilcoxon(d)
    p = float(res.pvalue)
    return p if math.isfinite(p) else None

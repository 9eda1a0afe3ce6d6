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
from typing import Any, TypeGuard

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


def is_number(x: Any) -> TypeGuard[int | float]:
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
        patterns = np.arange(2**n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((patterns >> np.arange(n)) & 1)  # row p: bit k set -> flip d_k
        sums = np.abs(signs @ d)
        return float(np.count_nonzero(sums >= observed - tol)) / 2**n, True
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
    # Anytime-valid 95% interval (lumi.compare.sequential): valid however many times the seeds were looked at.
    cs_low: float | None = None
    cs_high: float | None = None
    # Power (see seeds_needed): seeds at which the observed mean Δ and spread would resolve the threshold,
    # with the fixed-n t interval and with the anytime-valid one (`seeds: auto`).
    seeds_needed: int | None = None
    seeds_needed_anytime: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SEEDS_NEEDED_CAP = 10_000


def seeds_needed(
    mean: float | None, std: float | None, threshold: float, anytime: bool = False
) -> int | None:
    """Power: the smallest n at which, with the observed mean Δ and seed-to-seed spread sd(Δ), the verdict
    rule would resolve the threshold — the interval's half-width h(n) falls below the margin:
    |mean| when |mean| >= threshold (the interval then excludes 0: better / worse), else
    threshold - |mean| (the interval then lies inside ±threshold: equivalent). h(n) is the 95% t
    half-width t_{0.975,n-1} sd/sqrt(n), or with ``anytime`` the confidence sequence's (lumi.compare.sequential).

    None when it cannot be said (fewer than 2 seeds: no spread; threshold 0); SEEDS_NEEDED_CAP + 1 when more
    than SEEDS_NEEDED_CAP seeds would be needed (e.g. |mean| right at the threshold).
    """
    if mean is None or std is None or not is_number(mean) or not is_number(std) or threshold <= 0:
        return None
    margin = abs(mean) if abs(mean) >= threshold else threshold - abs(mean)
    if std == 0:  # identical differences: decided as soon as the interval is bounded at all
        return (3 if anytime else 2) if margin > 0 else SEEDS_NEEDED_CAP + 1
    ok = np.flatnonzero(_half_width_factors(anytime) * std < margin)
    return int(ok[0]) + 2 if len(ok) else SEEDS_NEEDED_CAP + 1


_FACTORS: dict[bool, np.ndarray] = {}


def _half_width_factors(anytime: bool) -> np.ndarray:
    """h(n) / sd for n = 2 .. SEEDS_NEEDED_CAP (index n - 2), computed once."""
    if anytime not in _FACTORS:
        from scipy import stats as sps

        from lumi.compare.sequential import cs_half_width

        n = np.arange(2, SEEDS_NEEDED_CAP + 1)
        if anytime:
            _FACTORS[anytime] = np.array([cs_half_width(int(k), 1.0) for k in n])
        else:
            _FACTORS[anytime] = sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1) / np.sqrt(n)
    return _FACTORS[anytime]


def compare_paired(
    label: str,
    baseline_label: str,
    arm_values: dict[int, float],
    baseline_values: dict[int, float],
    threshold: float = 0.005,
) -> PairedComparison:
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
        notes.append(
            f"{label} has no result for seed(s) {_seed_list(missing_arm)}; "
            f"paired only seed(s) {_seed_list(seeds) or 'none'}"
        )
    if missing_base:
        notes.append(
            f"the baseline {baseline_label} has no result for seed(s) {_seed_list(missing_base)}; "
            f"paired only seed(s) {_seed_list(seeds) or 'none'}"
        )

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
        notes.append(
            "n=1 paired seed: Δ is shown without a CI or p-value (one seed gives no estimate of spread)"
        )
    else:
        assert mean is not None and std is not None and df is not None
        if std <= IDENTICAL_RTOL * max(abs(mean), 1e-300):
            notes.append(
                f"all {n} paired differences are identical (Δ = {mean:+.4f}): the t-test and its CI "
                "are undefined (zero spread); see the sign-flip p-value"
            )
        else:
            se = std / math.sqrt(n)
            t_stat = mean / se
            p_t = float(2.0 * sps.t.sf(abs(t_stat), df))
            half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
            ci_low, ci_high = mean - half, mean + half
        p_perm, perm_exact = sign_flip_p_value(d)
        if n < WILCOXON_MIN_N:
            notes.append(
                f"n={n} paired seeds: the smallest possible sign-flip p is {2.0 ** (1 - n):.3g}, and "
                "the t interval assumes roughly normal differences; more seeds tighten both"
            )
        else:
            p_wil = _wilcoxon_exact(d)

    cs: tuple[float | None, float | None] = (None, None)
    if n >= 2:
        from lumi.compare.sequential import confidence_sequence

        low, high = confidence_sequence(d)
        cs = (low if math.isfinite(low) else None, high if math.isfinite(high) else None)
    clears = bool(
        n >= 2
        and ci_low is not None
        and ci_high is not None
        and mean is not None
        and (ci_high < 0 or ci_low > 0)
        and abs(mean) >= threshold
    )
    if n < 2:
        verdict = "not enough seeds"
    elif clears:
        verdict = "better" if mean < 0 else "worse"  # type: ignore[operator]
    else:
        verdict = "no clear difference"

    return PairedComparison(
        label=label,
        baseline=baseline_label,
        threshold=float(threshold),
        seeds=seeds,
        n=n,
        differences=[float(x) for x in d],
        mean_diff=mean,
        std_diff=std,
        t_stat=t_stat,
        df=df,
        p_ttest=p_t,
        ci_low=ci_low,
        ci_high=ci_high,
        p_permutation=p_perm,
        permutation_exact=perm_exact,
        p_wilcoxon=p_wil,
        wins=wins,
        losses=losses,
        ties=ties,
        clears_threshold=clears,
        verdict=verdict,
        missing_arm=missing_arm,
        missing_baseline=missing_base,
        notes=notes,
        cs_low=cs[0],
        cs_high=cs[1],
        seeds_needed=seeds_needed(mean, std, threshold),
        seeds_needed_anytime=seeds_needed(mean, std, threshold, anytime=True),
    )


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

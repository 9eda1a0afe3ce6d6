"""The domain-gain and preservation gates of `lumi adapt`, over seeds, with Lumi's paired statistics.

Per seed k the adapter is trained from the same frozen core; the core's BPB (before) is one number per
text, the adapted model's (after) one per seed, so d_k = after_k - before is a paired difference
(lumi.compare.stats.compare_paired: mean, 95% Student-t interval, sign-flip p, k of n seeds).

Rules (thresholds in BPB; "the interval" is the 95% t interval of the mean difference). A gate passes on
evidence only, so each criterion passes when the interval supports it and fails otherwise:
- domain gain passes when the whole interval of the domain difference lies at or below -min_gain (the gain
  is at least min_gain even at the interval's pessimistic end);
- preservation passes when the whole interval of the general difference lies at or below max_forget.
- The gate passes when both pass. Why a criterion failed is recorded as its ``evidence``: "refuted" (the
  whole interval lies on the wrong side), "inconclusive" (the interval straddles the threshold: more seeds
  may decide it), "no interval" (one seed), "diverged" (a seed's adapted BPB is not finite). Identical
  differences (zero spread) make the interval the point itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lumi.compare.stats import compare_paired

DEFAULT_MIN_GAIN = 0.02  # BPB the domain must improve by
DEFAULT_MAX_FORGET = 0.02  # BPB the general text may worsen by at most
PASS, FAIL = "pass", "fail"


@dataclass
class Criterion:
    name: str  # "domain gain" or "preservation"
    rule: str
    threshold: float
    before: float
    after: dict[int, float]  # seed -> BPB of the adapted model (NaN for a diverged seed)
    differences: dict[int, float]  # seed -> after - before
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    p_permutation: float | None
    verdict: str  # pass | fail
    evidence: str  # shown | refuted | inconclusive | no interval | diverged
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Gate:
    domain: Criterion
    preservation: Criterion
    verdict: str  # pass | fail

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "domain": self.domain.to_dict(),
            "preservation": self.preservation.to_dict(),
        }


def criterion(name: str, before: float, after: dict[int, float], bound: float, rule: str) -> Criterion:
    """Pass when the interval of (after - before) lies at or below ``bound``; fail otherwise (see ``evidence``)."""
    stats = compare_paired("adapted", "core", after, {k: before for k in after})
    diffs = {k: after[k] - before for k in sorted(after)}
    notes: list[str] = []  # compare_paired's notes speak of arms and baselines; these say what matters here
    low, high = stats.ci_low, stats.ci_high
    if low is None and stats.n >= 2:
        low = high = stats.mean_diff  # identical differences (zero spread): the interval is the point
    diverged = [k for k, v in after.items() if not math.isfinite(v)]
    if diverged:
        evidence = "diverged"
        notes.append(f"seed(s) {', '.join(map(str, diverged))} diverged (non-finite BPB after adapting)")
    elif low is None or high is None:
        evidence = "no interval"
        notes.append("one seed gives no interval: run --seeds 2 or more for a gate that can pass")
    elif high <= bound:
        evidence = "shown"
    elif low > bound:
        evidence = "refuted"
    else:
        evidence = "inconclusive"
        notes.append(
            f"the 95% interval [{low:+.4f}, {high:+.4f}] straddles {bound:+.4f}: more seeds may decide"
        )
    verdict = PASS if evidence == "shown" else FAIL
    return Criterion(
        name, rule, bound, before, dict(after), diffs, stats.mean_diff, low, high, stats.p_permutation, verdict,
        evidence, notes,
    )  # fmt: skip


def evaluate_gate(
    domain_before: float,
    domain_after: dict[int, float],
    general_before: float,
    general_after: dict[int, float],
    min_gain: float = DEFAULT_MIN_GAIN,
    max_forget: float = DEFAULT_MAX_FORGET,
) -> Gate:
    domain = criterion(
        "domain gain",
        domain_before,
        domain_after,
        -min_gain,
        f"domain BPB improves by >= {min_gain} over the whole 95% interval",
    )
    keep = criterion(
        "preservation",
        general_before,
        general_after,
        max_forget,
        f"general BPB worsens by <= {max_forget} over the whole 95% interval",
    )
    return Gate(domain, keep, PASS if domain.verdict == keep.verdict == PASS else FAIL)

"""What `lumi check` produces: one result per contract check, gathered in a report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class CheckResult:
    """One row of the check table.

    ``detail`` says what was measured and, on failure, which check failed and at which
    position. ``value`` is the headline number (max leak, loss, relative FLOPs error ...).
    ``skipped`` marks a row that does not apply to this model ("n/a: ..."); it counts as passed.
    """

    name: str
    passed: bool
    detail: str
    value: float | None = None
    skipped: bool = False

    @property
    def status(self) -> str:
        if self.skipped:
            return "n/a"
        return "pass" if self.passed else "FAIL"


@dataclass
class CheckReport:
    """All check results for one model instance (``model`` is the label, e.g. "llama:nano")."""

    model: str
    preset: str | None
    results: list[CheckResult] = field(default_factory=list)
    seconds: float | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(
            f"no check named {name!r} in this report (have: {', '.join(r.name for r in self.results)})"
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "preset": self.preset,
            "passed": self.passed,
            "seconds": self.seconds,
            "results": [dict(asdict(r), value=_json_number(r.value), status=r.status) for r in self.results],
        }

    def summary(self) -> str:
        """One line: 'llama:nano: 10/10 checks passed' or the failing checks' messages."""
        n = len(self.results)
        if self.passed:
            return f"{self.model}: {n}/{n} checks passed"
        fails = "; ".join(f"{r.name}: {r.detail}" for r in self.failures)
        return f"{self.model}: {len(self.failures)} of {n} checks FAILED — {fails}"


def _json_number(v: float | None) -> float | None:
    """JSON has no NaN/inf: a non-finite measurement is written as null (the detail says what happened)."""
    return None if v is None or not math.isfinite(v) else v

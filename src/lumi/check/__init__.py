"""`lumi check`: prove a model obeys the contract — above all, that it cannot see the future.

    from lumi.check import run_checks
    report = run_checks("llama", preset="nano")
    assert report.passed, report.summary()

Checks (one table row each): output shape, causality by perturbation and by gradient, initial
loss near ln V, overfitting one batch, finite gradients, determinism, safetensors save/load,
parameter counts, and analytic vs measured FLOPs/token.
"""

from lumi.check.report import CheckReport, CheckResult
from lumi.check.runner import CHECKS, check_model, run_checks, select_checks

__all__ = ["CHECKS", "CheckReport", "CheckResult", "check_model", "run_checks", "select_checks"]

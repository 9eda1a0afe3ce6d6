"""Every registered model passes `lumi check` on each of its CPU-sized presets.

Parametrised over the live registry, so an architecture added to the zoo is checked
automatically: causality (perturbation and gradient), initial loss, overfitting one batch,
finite gradients, determinism, safetensors round trip, parameter counts and FLOPs.
"""

from __future__ import annotations

import pytest

from lumi.check import CHECKS, run_checks
from lumi.models import list_models

CASES = [(spec.name, preset) for spec in list_models() for preset in spec.cpu_presets]


def test_every_registered_model_has_a_cpu_preset():
    missing = [spec.name for spec in list_models() if not spec.cpu_presets and spec.source == "lumi"]
    assert not missing, f"models without cpu_presets cannot be checked by the suite: {missing}"
    for spec in list_models():
        unknown = [p for p in spec.cpu_presets if p not in spec.presets]
        assert not unknown, f"{spec.name}: cpu_presets {unknown} are not presets"


@pytest.mark.parametrize(("name", "preset"), CASES, ids=[f"{n}:{p}" for n, p in CASES])
def test_registered_model_passes_lumi_check(name, preset):
    report = run_checks(name, preset)
    assert [r.name for r in report.results] == list(CHECKS)  # every check ran, none was dropped
    assert report.passed, report.summary()


def test_builtin_module_list_names_every_model_file():
    """A model file that registers an architecture but is missing from BUILTIN_MODULES would silently
    vanish from the zoo (and from this suite's checks)."""
    import re
    from pathlib import Path

    from lumi.models.registry import BUILTIN_MODULES

    root = Path(__file__).resolve().parents[1] / "src" / "lumi" / "models"
    registering = {f"lumi.models.{p.stem}" for p in root.glob("*.py")
                   if p.stem != "registry" and re.search(r"^@register\(", p.read_text(), re.M)}
    assert registering == set(BUILTIN_MODULES)

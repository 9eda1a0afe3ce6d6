"""Equal tuning effort: a learning-rate sweep per arm, scored on a tuning split carved from training documents.

Every arm gets the same rules: the same log grid (``auto``: 5 points x/÷ 2 apart around the arm's own
current lr, or one explicit grid for all), the same budget (a fraction of its matched budget), seed 0,
and the same score: final BPB on the tuning split (``lumi.data.tuning``), never on validation. A grid
point that diverges or crashes is recorded as such and skipped. With ``optim.name: muon`` the grid is
over ``muon_lr`` and the Adam ``lr`` moves with it (one multiplier, their ratio kept).

Runs live in <dir>/tune/<arm>/lr-<value>/ as ordinary `lumi train` runs, so a re-run reuses them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from lumi.compare.plan import MIN_STEPS, ArmPlan
from lumi.compare.runner import RunJob
from lumi.errors import LumiError

TUNE_PARAMS = ("lr",)
AUTO_POINTS = 5
AUTO_FACTOR = 2.0
DEFAULT_FRACTION = 0.5  # tuning runs get this fraction of the arm's matched budget (bounds the cost)
TUNE_SEED = 0


def parse_grid(value: Any, flag: str = "--grid") -> str | list[float]:
    """'auto' -> 'auto'; '1e-3,3e-3,1e-2' or a list -> sorted distinct positive floats (at least 2)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        grid = sorted({float(str(x).strip()) for x in items if str(x).strip()})
    except (TypeError, ValueError):
        raise LumiError(
            f"{flag} {value!r} does not parse: give learning rates separated by commas, e.g. {_example(flag)}"
        ) from None
    if len(grid) < 2 or not all(math.isfinite(v) and v > 0 for v in grid):
        raise LumiError(
            f"{flag} {value!r} needs at least 2 distinct positive learning rates, e.g. {_example(flag)}"
        )
    return grid


def _example(flag: str) -> str:
    flag = flag if flag.startswith("--") else "grid:"
    return f"{flag} 1e-3,3e-3,1e-2 or {flag} auto"


def tune_section(value: Any, where: str) -> dict[str, Any] | None:
    """A spec's ``tune:`` (``lr``, or {param: lr, grid: auto | [..], fraction: 0.5}) normalised; None when off."""
    if value in (None, False, "", "none"):
        return None
    raw = {"param": value} if isinstance(value, str) else value
    if not isinstance(raw, dict):
        raise LumiError(
            f"{where}: tune must be lr or a mapping {{param: lr, grid: auto, fraction: 0.5}}, got {value!r}"
        )
    unknown = set(raw) - {"param", "grid", "fraction"}
    if unknown:
        raise LumiError(
            f"{where}: unknown tune key(s) {', '.join(sorted(unknown))}; keys: param, grid, fraction"
        )
    param = str(raw.get("param") or "lr")
    if param not in TUNE_PARAMS:
        raise LumiError(f"{where}: --tune {param!r} is not supported; tunable: {', '.join(TUNE_PARAMS)}")
    try:
        fraction = float(raw.get("fraction", DEFAULT_FRACTION))
    except (TypeError, ValueError):
        raise LumiError(f"{where}: tune.fraction must be a number in (0, 1], e.g. 0.5") from None
    if not 0 < fraction <= 1:
        raise LumiError(f"{where}: tune.fraction must be in (0, 1], got {fraction}")
    grid = parse_grid(raw.get("grid"), "--tune-grid" if where == "command line" else f"{where}: tune.grid")
    return {"param": param, "grid": grid, "fraction": fraction}


def current_lr(optim: dict[str, Any]) -> float:
    """The lr the grid is about: optim.lr (AdamW) or optim.muon_lr (Muon), defaults filled in."""
    from lumi.train.config import OptimSection

    o = {**OptimSection().__dict__, **optim}
    return float(o["muon_lr"] if o["name"] == "muon" else o["lr"])


def with_lr(optim: dict[str, Any], value: float) -> dict[str, Any]:
    """``optim`` with the tuned lr: AdamW sets lr; Muon sets muon_lr and scales lr by the same factor."""
    from lumi.train.config import OptimSection

    o = {**OptimSection().__dict__, **optim}
    if o["name"] == "muon":
        return {**optim, "muon_lr": value, "lr": float(o["lr"]) * value / float(o["muon_lr"])}
    return {**optim, "lr": value}


def grid_values(grid: str | list[float], base: float) -> list[float]:
    """The arm's grid points: an explicit grid as given, ``auto`` = base x 2^k for k = -2..2."""
    if grid != "auto":
        return list(cast("list[float]", grid))  # parse_grid gives "auto" or a list
    half = AUTO_POINTS // 2
    return [float(f"{base * AUTO_FACTOR**k:.6g}") for k in range(-half, AUTO_POINTS - half)]


def point_name(value: float) -> str:
    return f"lr-{value:.4g}"


def tune_budget(plan: ArmPlan, fraction: float) -> str:
    """The tuning runs' budget: ``fraction`` of the arm's matched steps (>= MIN_STEPS) or seconds."""
    if plan.steps is None:
        seconds = float(plan.budget.rstrip("s"))
        return f"{max(10.0, seconds * fraction):g}s"
    return f"{max(MIN_STEPS, round(plan.steps * fraction))}steps"


def run_tuning(
    spec,
    comp_dir: Path,
    data_dirs: dict[str, Any],
    plans: dict[str, ArmPlan],
    threads: int,
    jobs: int,
    retry_failed: bool,
    progress: bool,
    log: Callable[[str], None],
    tune_root: Path | None = None,
) -> dict[str, Any]:
    """Sweep every arm of ``spec`` per ``spec.tune``; returns the tuning record (points, choice, cost per arm).

    Raises LumiError when every point of an arm diverged or failed (nothing to choose).
    """
    from lumi.compare.comparison import execute_jobs, needs_training, new_counts, run_config
    from lumi.data.tuning import TUNE_FRACTION, carve_tuning_split

    settings = spec.tune
    root = Path(tune_root) if tune_root is not None else Path(comp_dir) / "tune"
    split = {tok: carve_tuning_split(d) for tok, d in data_dirs.items()}
    todo: list[RunJob] = []
    points: dict[str, list[tuple[float, RunJob]]] = {}
    counts = new_counts()
    for arm in spec.arms:
        base_optim = {**spec.optim, **arm.optim}
        plan = plans[arm.label]
        budget = tune_budget(plan, settings["fraction"])
        arm_points = []
        for value in grid_values(settings["grid"], current_lr(base_optim)):
            tuned = copy.deepcopy(arm)
            tuned.optim = with_lr(base_optim, value)
            tuned_spec = copy.copy(spec)
            tuned_spec.optim = {}
            tune_plan = ArmPlan(arm.label, budget, None, None, None)
            cfg = run_config(
                tuned_spec,
                tuned,
                TUNE_SEED,
                tune_plan,
                Path(split[spec.tokenizer_of(arm)].directory).resolve(),
                threads,
            )
            cfg["name"] = f"{spec.name}/tune/{arm.dirname}/{point_name(value)}"
            job = RunJob(
                f"{arm.label} {point_name(value)}",
                TUNE_SEED,
                root / arm.dirname / point_name(value),
                root / "configs" / arm.dirname / f"{point_name(value)}.yaml",
                root / "logs" / arm.dirname / f"{point_name(value)}.log",
            )
            if needs_training(job, cfg, retry_failed, counts, log):
                todo.append(job)
            arm_points.append((value, job))
        points[arm.label] = arm_points
    log(
        f"tuning {settings['param']} ({'auto grid' if settings['grid'] == 'auto' else 'grid'}, "
        f"{settings['fraction']:g} x each arm's budget, scored on the tuning split): "
        + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what in ("reused", "to train"))
    )
    if todo:
        total: dict[str, int | None] = {job.label: None for job in todo}
        if execute_jobs(todo, jobs, total, sum(len(p) for p in points.values()) - len(todo), progress, log):
            raise KeyboardInterrupt
    record = {
        "param": settings["param"],
        "grid": settings["grid"],
        "fraction": settings["fraction"],
        "seed": TUNE_SEED,
        "split": {
            tok: d.manifest["tuning_split"] | {"directory": str(d.directory)} for tok, d in split.items()
        },
        "split_fraction": TUNE_FRACTION,
        "arms": {},
    }
    for arm in spec.arms:
        record["arms"][arm.label] = _arm_record(arm.label, points[arm.label], {**spec.optim, **arm.optim})
    return record


def _arm_record(label: str, points: list[tuple[float, RunJob]], base_optim: dict[str, Any]) -> dict[str, Any]:
    from lumi.compare.stats import as_number
    from lumi.run import Run

    rows: list[dict[str, Any]] = []
    for value, job in points:
        s = Run(job.run_dir).summary() or {}
        status = str(s.get("status") or "missing")
        bpb = as_number(s.get("final_val_bpb")) if status == "completed" else None
        rows.append(
            {
                "value": value,
                "status": status,
                "tune_bpb": bpb,
                "steps": s.get("steps"),
                "tokens": s.get("tokens"),
                "wall_s": s.get("wall_s"),
                "run_dir": str(job.run_dir),
            }
        )
    scored = [r for r in rows if r["tune_bpb"] is not None]
    if not scored:
        raise LumiError(
            f"tuning {label!r}: no grid point finished with a tuning-split BPB ("
            + ", ".join(f"{r['value']:g}: {r['status']}" for r in rows)
            + "); try a lower grid, e.g. --tune-grid 1e-4,3e-4,1e-3"
        )
    best = min(scored, key=lambda r: (r["tune_bpb"], r["value"]))
    values = [r["value"] for r in rows]
    notes = []
    if best["value"] in (min(values), max(values)):
        notes.append(
            f"the chosen value {best['value']:g} is at the edge of the grid: the best lr may lie outside it"
        )
    return {
        "points": rows,
        "chosen": best["value"],
        "chosen_tune_bpb": best["tune_bpb"],
        "optim": with_lr(base_optim, best["value"]),
        "cost": {
            "runs": len(rows),
            "tokens": sum(r["tokens"] or 0 for r in rows),
            "seconds": sum(r["wall_s"] or 0.0 for r in rows),
        },
        "notes": notes,
    }

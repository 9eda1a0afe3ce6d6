"""Gather a comparison's run directories into one JSON-serialisable results dict (results.json).

Every run of every arm is listed, whatever its state (completed, failed, diverged, interrupted,
missing); statistics use only the usable ones (completed with a final BPB), paired by seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lumi.compare.diagnose import TAIL_FRACTION, diagnose_run, split_rows
from lumi.compare.evals import Metric, metric_values, metrics_of
from lumi.compare.stats import as_number, compare_paired, summarize
from lumi.io import json_safe
from lumi.run import Run

# Summary fields copied into each run's entry.
RUN_FIELDS = ("steps", "tokens", "flops", "wall_s", "train_s", "tok_per_s", "final_val_bpb", "error")
FACT_FIELDS = ("params", "non_embedding_params", "active_params", "flops_per_token")
CURVE_FIELDS = ("step", "tokens", "flops", "elapsed_s")
# Statuses in the order an arm's status text lists them; anything else follows.
STATUS_ORDER = ("completed", "LEAK", "diverged", "failed", "interrupted", "running", "missing")
NOTE_STATUSES = ("failed", "diverged", "interrupted")
LEAK = "LEAK"  # a completed run whose pre-training probe or post-training audit found a leak


def first_failed_check(check: dict[str, Any] | None) -> str | None:
    """'name: detail' of the first failing check result, or None."""
    if not check:
        return None
    for r in check.get("results") or []:
        if not r.get("passed", True):
            return f"{r.get('name', '?')}: {r.get('detail', '')}".rstrip(": ")
    return None


def status_text(statuses: list[str]) -> str:
    """'2 completed, 1 failed' (in STATUS_ORDER, then any other status alphabetically)."""
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    order = [s for s in STATUS_ORDER if s in counts] + sorted(s for s in counts if s not in STATUS_ORDER)
    return ", ".join(f"{counts[s]} {s}" for s in order) or "no runs"


def _curve(evals: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The periodic validation curve: parallel lists, one entry per eval with a finite val BPB."""
    pts = [r for r in evals if as_number(r.get("val_bpb")) is not None]
    curve: dict[str, list[Any]] = {k: [r.get(k) for r in pts] for k in CURVE_FIELDS}
    curve["val_bpb"] = [float(r["val_bpb"]) for r in pts]
    return curve


def _descending_note(label: str, runs: list[dict[str, Any]]) -> str | None:
    """One note per arm for the runs whose curve was still falling at the end (the ranking may change)."""
    falls: list[tuple[int, str]] = []
    for r in runs:
        for d in r["diagnoses"]:
            if d["label"] == "descending":
                falls.append((r["seed"], d.get("brief") or d["detail"]))
    if not falls:
        return None
    seeds = ", ".join(str(s) for s, _ in falls)
    what = "; ".join(f"seed {s}: {f}" for s, f in falls) if len(falls) > 1 else falls[0][1]
    return (
        f"{label} seed{'s' if len(falls) > 1 else ''} {seeds}: still descending over the last "
        f"{round(100 * TAIL_FRACTION)}% of tokens ({what}): a longer budget may change the ranking"
    )


def untrustworthy(arm: dict[str, Any]) -> tuple[str, str] | None:
    """('LEAK' | 'suspicious', why) when the arm's numbers cannot support a verdict, else None.

    LEAK: a causality check failed, or a run's pre-training probe or post-training audit found a leak.
    suspicious: any other failed check, or a run diagnosed suspicious (e.g. BPB below the sanity floor).
    """
    check = arm.get("check") or {}
    for r in check.get("results") or []:
        if not r.get("passed", True) and str(r.get("name", "")).startswith("causality"):
            return LEAK, f"lumi check {r['name']}: {r.get('detail', '')}"
    for r in arm.get("runs", []):
        if r.get("leak"):
            return LEAK, f"seed {r['seed']}: {r['leak']}"
    failed = first_failed_check(check) if arm.get("check_passed") is False else None
    if failed:
        return "suspicious", f"failed lumi check: {failed}"
    for r in arm.get("runs", []):
        for d in r.get("diagnoses", []):
            if d.get("label") == "suspicious":
                return "suspicious", f"seed {r['seed']}: {d.get('detail', '')}"
    return None


def withhold_verdict(vs: dict[str, Any], arm: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """A leaking or suspicious arm (or baseline) never gets a verdict, however good its numbers look."""
    for who, side in ((arm, "the arm"), (baseline, "the baseline")):
        bad = untrustworthy(who)
        if bad is not None:
            kind, why = bad
            return {
                **vs,
                "verdict": f"no verdict ({kind})",
                "clears_threshold": False,
                "withheld": f"{side} {who['label']} is {kind}: {why}",
            }
    return vs


def collect_run(
    run_dir: Path, seed: int, check_passed: bool | None = None, check_detail: str | None = None
) -> dict[str, Any]:
    """One run's entry: status, numbers, diagnoses and validation curve (status 'missing' without a summary)."""
    run_files = Run(run_dir)
    summary = run_files.summary()
    rows = run_files.metrics()
    status = str(summary.get("status") or "unknown") if summary else "missing"
    s = summary or {}
    final = as_number(s.get("final_val_bpb"))
    leak = s.get("leak") or None
    if leak and status == "completed":
        status = LEAK  # trained to the end, but its BPB cannot be trusted: never paired, never a verdict
    _, evals = split_rows(rows)
    run: dict[str, Any] = {
        "seed": seed,
        "status": status,
        "usable": status == "completed" and final is not None,
        "run_dir": str(run_dir),
        "leak": leak,
        "causality_audit": s.get("causality_audit"),
    }
    for key in RUN_FIELDS:
        run[key] = s.get(key)
    run["final_val_bpb"] = final
    # A run with neither summary nor metrics has no curve to diagnose (it never started).
    diags = diagnose_run(rows, summary, check_passed, check_detail) if (summary or rows) else []
    run["diagnoses"] = [d.to_dict() for d in diags]
    run["curve"] = _curve(evals)
    run["_summary"] = summary  # dropped before returning the results; facts and eval protocol come from it
    run["evals"] = {}
    return run


def collect_results(
    spec: Any,
    comp_dir: str | Path,
    checks: dict[str, Any] | None = None,
    plans: dict[str, Any] | None = None,
    env: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Everything the report needs, from comp_dir/runs/<arm.dirname>/seed-<k>/ of every arm and seed.

    ``checks``: label -> CheckReport.to_dict(); ``plans``: label -> the arm's plan (steps, tokens,
    flops, budget, maybe params / flops_per_token); ``env``: the environment; ``notes``: notes of
    the caller, listed first.
    """
    comp_dir = Path(comp_dir)
    checks = checks or {}
    plans = plans or {}
    metrics = metrics_of(spec.eval) if getattr(spec, "eval", None) else []
    all_notes: list[str] = list(notes or [])
    arms: list[dict[str, Any]] = []
    protocol: dict[str, Any] | None = None

    for arm in spec.arms:
        label = arm.label
        check = checks.get(label)
        check_passed = bool(check.get("passed")) if check is not None and "passed" in check else None
        failed_check = first_failed_check(check) if check_passed is False else None
        plan = plans.get(label)
        runs = [
            collect_run(comp_dir / "runs" / arm.dirname / f"seed-{seed}", seed, check_passed, failed_check)
            for seed in spec.seeds
        ]
        for r in runs:
            if metrics and r["usable"]:
                r["evals"] = metric_values(Run(r["run_dir"]).eval_results(), metrics)

        facts: dict[str, Any] = {k: None for k in FACT_FIELDS}
        src = next(
            (r["_summary"] for r in runs if r["_summary"] and r["_summary"].get("params") is not None), None
        )
        if src is not None:
            facts = {k: src.get(k) for k in FACT_FIELDS}
        elif plan:
            facts = {k: plan.get(k) for k in FACT_FIELDS}
        for r in runs:
            if protocol is None and r["_summary"] and r["_summary"].get("final_val_protocol"):
                protocol = r["_summary"]["final_val_protocol"]

        # Notes: what went wrong with each run, then the check, then the statistics.
        for r in runs:
            if r["status"] in NOTE_STATUSES:
                all_notes.append(
                    f"{label} seed {r['seed']}: {r['status']}" + (f": {r['error']}" if r["error"] else "")
                )
        descending = _descending_note(label, runs)
        if descending:
            all_notes.append(descending)
        missing = [r["seed"] for r in runs if r["status"] == "missing"]
        if missing:
            all_notes.append(f"{label}: no run yet for seed(s) {', '.join(map(str, missing))}")
        if failed_check is not None:
            all_notes.append(f"{label}: failed lumi check: {failed_check}")
        for r in runs:
            if r["leak"]:
                all_notes.append(f"{label} seed {r['seed']}: LEAK, excluded from every verdict: {r['leak']}")

        arms.append(
            {
                "label": label,
                "model": arm.name,
                "preset": arm.preset,
                "overrides": dict(arm.overrides),
                "files": list(arm.files),
                "tokenizer": spec.tokenizer_of(arm),
                "is_baseline": label == spec.baseline,
                **facts,
                "plan": plan,
                "check": check,
                "check_passed": check_passed,
                "bpb": summarize({r["seed"]: r["final_val_bpb"] for r in runs if r["usable"]}).to_dict(),
                "vs_baseline": None,
                "status": status_text([r["status"] for r in runs]),
                "runs": runs,
            }
        )

    # Paired statistics need every arm's values, so they come once all arms are read.
    base = next(a for a in arms if a["is_baseline"])
    base_values = {r["seed"]: r["final_val_bpb"] for r in base["runs"] if r["usable"]}
    for a in arms:
        if a["is_baseline"]:
            continue
        values = {r["seed"]: r["final_val_bpb"] for r in a["runs"] if r["usable"]}
        vs = compare_paired(a["label"], base["label"], values, base_values, threshold=spec.threshold)
        a["vs_baseline"] = withhold_verdict(vs.to_dict(), a, base)
        # The paired notes mostly start with the arm's label already; do not say it twice.
        all_notes += [n if n.startswith(f"{a['label']} ") else f"{a['label']}: {n}" for n in vs.notes]
    for a in arms:
        a["evals"] = {m.name: eval_entry(m, a, base, spec.threshold) for m in metrics}

    for a in arms:
        for r in a["runs"]:
            del r["_summary"]
    return json_safe(
        {
            "name": spec.name,
            "spec": spec.to_dict(),
            "matched": spec.match,
            "budget": spec.budget.text,
            "seeds": list(spec.seeds),
            "baseline": spec.baseline,
            "threshold": spec.threshold,
            "data": dict(spec.data),
            "eval_protocol": protocol,
            "env": env,
            "notes": all_notes,
            "arms": arms,
        }
    )


def eval_entry(metric: Metric, arm: dict[str, Any], base: dict[str, Any], threshold: float) -> dict[str, Any]:
    """One extra metric of one arm: the per-seed summary and, for a non-baseline arm, the paired difference
    to the baseline (Δ = arm - baseline in the metric's own units; the verdict follows its direction)."""
    values = {r["seed"]: r["evals"].get(metric.name) for r in arm["runs"] if r["usable"]}
    entry: dict[str, Any] = {
        "summary": summarize({k: v for k, v in values.items() if v is not None}).to_dict(),
        "lower_is_better": metric.lower_is_better,
        "chance": metric.chance,
        "vs_baseline": None,
    }
    if arm["is_baseline"] or arm.get("leak") or any(r["leak"] for r in arm["runs"]):
        return entry
    base_values = {r["seed"]: r["evals"].get(metric.name) for r in base["runs"] if r["usable"]}
    sign = 1.0 if metric.lower_is_better else -1.0  # compare_paired treats a negative Δ as the arm's win
    vs = compare_paired(
        arm["label"],
        base["label"],
        {k: sign * v for k, v in values.items() if v is not None},
        {k: sign * v for k, v in base_values.items() if v is not None},
        threshold=threshold if metric.lower_is_better else 0.0,
    ).to_dict()
    for key in ("mean_diff", "ci_low", "ci_high"):
        if vs[key] is not None:
            vs[key] = sign * vs[key]
    if sign < 0:
        vs["ci_low"], vs["ci_high"] = vs["ci_high"], vs["ci_low"]
    entry["vs_baseline"] = {k: vs[k] for k in ("n", "mean_diff", "ci_low", "ci_high", "p_ttest", "verdict")}
    return entry

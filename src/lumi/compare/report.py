"""What a researcher reads: report.md, results.json, the plots, and the terminal table.

Everything here renders ``results`` (from lumi.compare.results.collect_results); no numbers are
computed that are not already in it, so the report and results.json always agree.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from lumi.compare.bench import BENCH_HEADER, bench_caption, bench_rows
from lumi.compare.stats import is_number

DASH = "–"  # a missing value
MATCH_MEANING = {
    "tokens": "every arm trains on the same number of tokens",
    "flops": "every arm gets the same training FLOPs",
    "time": "every arm trains for the same wall-clock seconds",
}
MAX_TERMINAL_NOTES = 12


# -- number formats ---------------------------------------------------------------------------------


def fmt_count(x: Any) -> str:
    """3 significant digits with k/M/G/T: 500, 1k, 6.4k, 19.2M, 3.1T; '–' when missing."""
    from lumi.progress import format_count

    return format_count(x) if is_number(x) else DASH


def fmt_wall(seconds: Any) -> str:
    """13s, 4.2s, 4m05s, 1h02m; '–' when missing."""
    if not is_number(seconds):
        return DASH
    from lumi.progress import format_duration

    s = float(seconds)
    return f"{s:.1f}s" if s < 9.95 else format_duration(s)


def fmt_bpb(summary: dict[str, Any] | None) -> str:
    """'2.0500 ± 0.0500' (mean ± sample std); the mean alone for one seed; '–' for none."""
    if not summary or not is_number(summary.get("mean")):
        return DASH
    if is_number(summary.get("std")):
        return f"{summary['mean']:.4f} ± {summary['std']:.4f}"
    return f"{summary['mean']:.4f}"


def fmt_delta(vs: dict[str, Any] | None, mark: bool = True) -> str:
    """'-0.0250 [-0.0885, 0.0385] ✓' (mean Δ, 95% CI, ✓ when it clears the threshold)."""
    if not vs or not is_number(vs.get("mean_diff")):
        return DASH
    text = f"{vs['mean_diff']:+.4f}"
    if is_number(vs.get("ci_low")) and is_number(vs.get("ci_high")):
        text += f" [{vs['ci_low']:.4f}, {vs['ci_high']:.4f}]"
    elif vs.get("n", 0) < 2:
        text += " (1 seed: no CI)"
    else:
        text += " (no CI)"
    if mark and vs.get("clears_threshold"):
        text += " ✓"
    return text


def fmt_p(p: Any, exact: bool | None = True) -> str:
    if not is_number(p):
        return DASH
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text if exact is not False else f"≈{text}"


def fmt_ps(vs: dict[str, Any] | None) -> str:
    """'0.126 / 0.500': paired t-test / sign-flip permutation test."""
    if not vs or (vs.get("p_ttest") is None and vs.get("p_permutation") is None):
        return DASH
    return f"{fmt_p(vs.get('p_ttest'))} / {fmt_p(vs.get('p_permutation'), vs.get('permutation_exact'))}"


def fmt_wins(vs: dict[str, Any] | None) -> str:
    return f"{vs['wins']}/{vs['n']}" if vs and vs.get("n") else DASH


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if is_number(v)]
    return sum(vals) / len(vals) if vals else None


def arm_mean(arm: dict[str, Any], key: str) -> float | None:
    """Mean of a run field over the arm's usable runs (all runs that have it, when none is usable)."""
    usable = [r.get(key) for r in arm.get("runs", []) if r.get("usable")]
    return _mean(usable) if _mean(usable) is not None else _mean([r.get(key) for r in arm.get("runs", [])])


def diagnosis_counts(arm: dict[str, Any]) -> str:
    """'descending ×2, unstable' over the arm's runs."""
    counts: dict[str, int] = {}
    for r in arm.get("runs", []):
        for d in r.get("diagnoses", []):
            counts[d["label"]] = counts.get(d["label"], 0) + 1
    return ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in counts.items())


def arm_status(arm: dict[str, Any]) -> str:
    diags = diagnosis_counts(arm)
    return arm.get("status", "") + (f"; {diags}" if diags else "")


def fmt_power(vs: dict[str, Any], anytime: bool = False) -> str | None:
    """'resolving ±0.005 needs ~7 seeds at the observed spread (sd 0.0041)'; None without a spread."""
    needed = vs.get("seeds_needed_anytime" if anytime else "seeds_needed")
    sd, thr = vs.get("std_diff"), vs.get("threshold")
    if not is_number(needed) or not is_number(sd) or not is_number(thr):
        return None
    from lumi.compare.stats import SEEDS_NEEDED_CAP

    count = f"> {SEEDS_NEEDED_CAP:,}" if needed > SEEDS_NEEDED_CAP else f"~{needed}"
    how = " with the anytime-valid interval" if anytime else ""
    return f"resolving ±{thr:g} needs {count} seeds{how} at the observed spread (sd {sd:.4f})"


def sequential_verdict(decision: str | None, threshold: Any, default: str) -> str:
    """The verdict word of a `seeds: auto` decision (lumi.compare.sequential.decide)."""
    if decision == "equivalent":
        return f"equivalent (within ±{threshold:g})" if is_number(threshold) else "equivalent"
    return {"better": "better", "worse": "worse", "undecided": "no clear difference"}.get(
        decision or "", default
    )


def fmt_sequential(seq: dict[str, Any], vs: dict[str, Any]) -> str:
    """'seeds auto: better after 4 seeds (anytime-valid 95% interval [-0.09, -0.02])'."""
    lo, hi = vs.get("cs_low"), vs.get("cs_high")
    interval = f"[{lo:.4f}, {hi:.4f}]" if is_number(lo) and is_number(hi) else "unbounded"
    return (
        f"seeds auto: {seq.get('decision', 'undecided')} after {seq.get('seeds', '?')} seeds "
        f"(anytime-valid 95% interval {interval}; {seq.get('reason', '')})"
    ).replace("; )", ")")


def verdict_line(arm: dict[str, Any], baseline: str) -> str:
    """'idea vs base: no clear difference — Δ -0.0250 [...] BPB over 2 paired seeds, 2 of 2 seeds favour ...'."""
    vs = arm.get("vs_baseline") or {}
    n = vs.get("n", 0)
    verdict = vs.get("verdict", "not enough seeds")
    seq = arm.get("sequential")
    if seq and not vs.get(
        "withheld"
    ):  # seeds auto: the anytime-valid decision is the verdict (docs/compare.md)
        verdict = sequential_verdict(seq.get("decision"), vs.get("threshold"), verdict)
    head = f"{arm['label']} vs {baseline}: {verdict}"
    if not n:
        if vs.get("withheld"):
            return f"{head} — WITHHELD: {vs['withheld']}"
        return f"{head} — no seed has a final BPB for both arms yet"
    parts = [
        f"Δ {fmt_delta(vs, mark=False)} BPB over {n} paired seed{'s' if n != 1 else ''}",
        f"{vs['wins']} of {n} seeds favour the arm",
    ]
    if n >= 2:
        parts.append(
            f"p = {fmt_p(vs.get('p_ttest'))} (t) / "
            f"{fmt_p(vs.get('p_permutation'), vs.get('permutation_exact'))} (sign-flip)"
        )
        if is_number(vs.get("p_wilcoxon")):
            parts.append(f"Wilcoxon p = {fmt_p(vs['p_wilcoxon'])}")
    power = fmt_power(vs, anytime=bool(seq))
    if power:
        parts.append(power)
    if seq:
        parts.append(fmt_sequential(seq, vs))
    # What the verdict does not see must be said next to it, not only in the notes.
    excluded = [
        f"seed {r['seed']} {r['status']}"
        for r in arm.get("runs", [])
        if r.get("status") in ("failed", "diverged", "interrupted", "running", "LEAK")
    ]
    if excluded:
        parts.append("EXCLUDED from the pairing: " + ", ".join(excluded))
    if vs.get("withheld"):
        parts.append(f"WITHHELD: {vs['withheld']}")
    elif arm.get("check_passed") is False:
        parts.append("SUSPICIOUS: the model failed lumi check, so this BPB is not trustworthy")
    return f"{head} — " + ", ".join(parts)


def _eval_protocol(p: dict[str, Any] | None) -> str:
    if not p:
        return "no final evaluation yet"
    bits = [
        f"{p['split']} split" if p.get("split") else None,
        p.get("subset"),
        f"seq_len {p['seq_len']}" if p.get("seq_len") is not None else None,
        f"stride {p['stride']}" if p.get("stride") is not None else None,
        f"{fmt_count(p['windows'])} windows" if is_number(p.get("windows")) else None,
        f"{fmt_count(p['bytes'])} bytes" if is_number(p.get("bytes")) else None,
    ]
    return ", ".join(b for b in bits if b)


# -- report.md --------------------------------------------------------------------------------------


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


RESULTS_HEADER = [
    "arm",
    "params",
    "non-emb params",
    "FLOPs/token",
    "tokens",
    "FLOPs",
    "wall",
    "tok/s",
    "val BPB",
    "Δ vs baseline [95% CI]",
    "p (t / sign-flip)",
    "wins",
    "status",
]


def results_rows(arms: list[dict[str, Any]]) -> list[list[str]]:
    """The main table (the same cells as report.md's)."""
    rows = []
    for a in arms:
        vs, base = a.get("vs_baseline"), a.get("is_baseline")
        rows.append(
            [
                a["label"],
                fmt_count(a.get("params")),
                fmt_count(a.get("non_embedding_params")),
                fmt_count(a.get("flops_per_token")),
                fmt_count(arm_mean(a, "tokens")),
                fmt_count(arm_mean(a, "flops")),
                fmt_wall(arm_mean(a, "wall_s")),
                fmt_count(arm_mean(a, "tok_per_s")),
                fmt_bpb(a.get("bpb")),
                "baseline" if base else fmt_delta(vs),
                DASH if base else fmt_ps(vs),
                DASH if base else fmt_wins(vs),
                arm_status(a),
            ]
        )
    return rows


def check_summary(arm: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """('label: passed (11/11 checks)' | 'label: FAILED 2 of 11 checks' | 'label: not run', the failed rows)."""
    check = arm.get("check")
    if not check:
        return f"{arm['label']}: not run", []
    res = check.get("results") or []
    failed = [r for r in res if not r.get("passed", True)]
    if failed:
        return f"{arm['label']}: FAILED {len(failed)} of {len(res)} checks", failed
    return f"{arm['label']}: passed ({len(res)}/{len(res)} checks)", []


def audit_text(run: dict[str, Any]) -> str:
    """passed | LEAK | – : the causality audit of one run's trained weights."""
    audit = run.get("causality_audit")
    if isinstance(audit, dict) and "passed" in audit:
        return "passed" if audit["passed"] else "LEAK"
    return "LEAK" if run.get("leak") else DASH


def seed_rows(arms: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, each row's status) of the every-seed table: each arm's every run, whatever its status."""
    metric_names = [n for a in arms[:1] for n in (a.get("evals") or {})]
    header = ["arm", "seed", "status", "val BPB", "Δ", *metric_names, "steps", "tokens", "wall", "audit"]
    header.append("diagnoses")
    base_arm = next((a for a in arms if a.get("is_baseline")), None)
    base_bpb = {
        r["seed"]: r.get("final_val_bpb") for r in (base_arm or {}).get("runs", []) if r.get("usable")
    }
    rows: list[list[str]] = []
    statuses: list[str] = []
    for a in arms:
        for r in a.get("runs", []):
            bpb = r.get("final_val_bpb") if r.get("usable") else None
            delta = DASH
            if not a.get("is_baseline") and is_number(bpb) and is_number(base_bpb.get(r["seed"])):
                delta = f"{bpb - base_bpb[r['seed']]:+.4f}"
            evals = r.get("evals") or {}
            rows.append(
                [
                    a["label"],
                    str(r.get("seed")),
                    str(r.get("status", DASH)),
                    f"{bpb:.4f}" if is_number(bpb) else DASH,
                    delta,
                    *(f"{evals[n]:.4f}" if is_number(evals.get(n)) else DASH for n in metric_names),
                    str(r["steps"]) if is_number(r.get("steps")) else DASH,
                    fmt_count(r.get("tokens")),
                    fmt_wall(r.get("wall_s")),
                    audit_text(r),
                    ", ".join(d["label"] for d in r.get("diagnoses", [])),
                ]
            )
            statuses.append(str(r.get("status")))
    return header, rows, statuses


def render_markdown(
    results: dict[str, Any], plots: dict[str, Any] | None = None, plot_error: str | None = None
) -> str:
    """report.md as text (``plots``: the PNG names written next to it)."""
    arms = results.get("arms", [])
    baseline = str(results.get("baseline"))  # only shown in text
    match = results.get("matched", "tokens")
    data = results.get("data") or {}
    threshold = results.get("threshold", 0.005)
    out: list[str] = [f"# lumi compare: {results.get('name', '')}", ""]

    out.append(
        f"- Matched: **{match}** ({MATCH_MEANING.get(match, match)}; everything else is shown next to "
        "the BPB)"
    )
    plans = [(a["label"], a["plan"]) for a in arms if a.get("plan")]
    budget = f"- Budget: {results.get('budget')}"
    if plans:
        budget += " — per arm: " + ", ".join(
            f"{label} {p.get('budget', '?')}"
            + (f" ({fmt_count(p['tokens'])} tokens)" if is_number(p.get("tokens")) else "")
            for label, p in plans
        )
    out.append(budget)
    mixed = len({a.get("tokenizer") for a in arms if a.get("tokenizer")}) > 1
    out.append(
        f"- Seeds: {', '.join(str(s) for s in results.get('seeds', []))} (seed k gives every arm the same "
        + (
            "initialisation seed; arms with different tokenizers do not see the same text per step, so the "
            "pairing by seed removes less noise)"
            if mixed
            else "initialisation seed and the same batches: differences are paired by seed)"
        )
    )
    out.append(f"- Baseline: **{baseline}**")
    data_text = f"corpus `{data.get('corpus', '?')}`, tokenizer `{data.get('tokenizer', '?')}`"
    tokenizers = {a.get("tokenizer") for a in arms if a.get("tokenizer")}
    if len(tokenizers) > 1:
        data_text += " (per arm: " + ", ".join(f"{a['label']} `{a['tokenizer']}`" for a in arms) + ")"
    if data.get("dir"):
        data_text += f", prepared in `{data['dir']}`"
    out.append(f"- Data: {data_text}")
    out.append(f"- Eval protocol (final val BPB): {_eval_protocol(results.get('eval_protocol'))}")
    out.append(
        "- Verdict rule: Δ = BPB(arm) − BPB(baseline) per seed, Δ < 0 favours the arm; ✓ (better / worse) "
        f"when |mean Δ| ≥ {threshold:g} BPB **and** the 95% t confidence interval excludes 0, else "
        "no clear difference; p = paired t-test / exact sign-flip permutation test"
    )
    env = results.get("env")
    if isinstance(env, dict) and env:
        scalars = [f"{k} {v}" for k, v in env.items() if isinstance(v, (str, int, float, bool)) and v != ""]
        if scalars:
            out.append(f"- Environment: {', '.join(scalars[:10])}")
    out.append("")

    out += ["## Results", "", _row(RESULTS_HEADER), "|" + "---|" * len(RESULTS_HEADER)]
    out += [_row(row) for row in results_rows(arms)]
    out.append("")
    out.append(
        "val BPB: mean ± std (ddof 1) over the arm's completed seeds; Δ, p and wins over the seeds both the "
        "arm and the baseline completed; wall and tok/s: mean over runs."
    )
    out.append("")

    others = [a for a in arms if not a.get("is_baseline")]
    if others:
        out += ["## Verdict", ""]
        out += [f"- {verdict_line(a, baseline)}" for a in others]
        out.append("")
    out += seeds_rule_lines(results.get("seeds_rule"))
    out += tuning_lines(results.get("tuning"))
    out += eval_lines(arms, baseline)
    out += bench_lines(results.get("bench"))

    header, rows, _ = seed_rows(arms)
    out += ["## Every seed", "", _row(header), "|" + "---|" * len(header), *(_row(r) for r in rows), ""]

    out += ["## Checks (`lumi check`)", ""]
    for a in arms:
        summary, failed = check_summary(a)
        details = "; ".join(f"{r.get('name')}: {r.get('detail')}" for r in failed)
        out.append(f"- {summary.replace('FAILED', '**FAILED**')}" + (f" — {details}" if failed else ""))
    out.append("")

    out += ["## Diagnoses", ""]
    diag_lines = [
        f"- {a['label']} seed {r['seed']}: **{d['label']}** — {d['detail']}"
        for a in arms
        for r in a.get("runs", [])
        for d in r.get("diagnoses", [])
    ]
    out += diag_lines or ["- none"]
    out.append("")

    out += ["## Notes", ""]
    out += [f"- {n}" for n in results.get("notes", [])] or ["- none"]
    out.append("")

    if plots or plot_error:
        out += ["## Plots", "", "Validation BPB of the periodic evals: mean over seeds, min–max band.", ""]
        for name in plots or {}:
            out += [f"![{Path(name).stem}]({name})", ""]
        if plot_error:
            out += [f"(plots not written: {plot_error})", ""]
    return "\n".join(out).rstrip() + "\n"


EVAL_HEADER = ["metric", "arm", "mean over seeds", "Δ vs baseline [95% CI]", "p (t)", "verdict", "chance"]


def eval_rows(arms: list[dict[str, Any]]) -> list[list[str]]:
    """Each extra metric (other corpora, zero-shot tasks) per arm: mean over seeds, and the paired difference
    to the baseline over the seeds both have, with its direction and chance level."""
    rows = []
    for name in [n for a in arms[:1] for n in (a.get("evals") or {})]:
        for a in arms:
            e = (a.get("evals") or {}).get(name) or {}
            vs = e.get("vs_baseline")
            delta = DASH
            if vs and is_number(vs.get("mean_diff")):
                ci = (
                    f" [{vs['ci_low']:+.4f}, {vs['ci_high']:+.4f}]"
                    if is_number(vs.get("ci_low")) and is_number(vs.get("ci_high"))
                    else ""
                )
                delta = f"{vs['mean_diff']:+.4f}{ci}"
            rows.append(
                [
                    f"{name} ({'lower' if e.get('lower_is_better') else 'higher'} is better)",
                    a["label"],
                    fmt_bpb(e.get("summary")),
                    "baseline" if a.get("is_baseline") else delta,
                    fmt_p(vs.get("p_ttest")) if vs else DASH,
                    str(vs.get("verdict", DASH)) if vs else DASH,
                    f"{e['chance']:.2f}" if is_number(e.get("chance")) else DASH,
                ]
            )
    return rows


def eval_lines(arms: list[dict[str, Any]], baseline: str) -> list[str]:
    """'## Evaluations' (see eval_rows)."""
    rows = eval_rows(arms)
    if not rows:
        return []
    header = [c.replace("baseline", baseline) for c in EVAL_HEADER]
    return ["## Evaluations", "", _row(header), "|" + "---|" * len(header), *(_row(r) for r in rows), ""]


def bench_lines(bench: dict[str, Any] | None) -> list[str]:
    """'## Inference speed' (lumi compare --bench; see compare/bench.py)."""
    rows = bench_rows(bench)
    if not bench or not rows:
        return []
    return [
        "## Inference speed",
        "",
        bench_caption(bench),
        "",
        _row(BENCH_HEADER),
        "|" + "---|" * len(BENCH_HEADER),
        *(_row(r) for r in rows),
        "",
    ]


def seeds_rule_lines(rule: dict[str, Any] | None) -> list[str]:
    """'## Adaptive seeds': the stop rule, each round's decisions and why it stopped (seeds: auto)."""
    if not rule:
        return []
    out = [
        "## Adaptive seeds",
        "",
        f"- Rule: seeds auto:{rule.get('max_seeds')} — from {rule.get('min_seeds')} seeds, one more seed per arm "
        f"until every arm is decided: better / worse (the anytime-valid {100 * (1 - rule.get('alpha', 0.05)):g}% "
        "interval excludes 0 and |mean Δ| ≥ the threshold) or equivalent (the interval lies inside ± the "
        "threshold)",
        f"- Method: {rule.get('method')} (τ² = {rule.get('tau2'):g}): valid however often the seeds are looked at",
        f"- Stopped after {rule.get('stopped_after')} seeds: {rule.get('stop_reason')}",
        "",
    ]
    rounds = rule.get("rounds") or []
    if rounds:
        labels = list(rounds[0].get("decisions", {}))
        out += [_row(["seeds", *labels]), "|" + "---|" * (1 + len(labels))]
        out += [_row([r["seeds"], *[r["decisions"].get(label, DASH) for label in labels]]) for r in rounds]
        out.append("")
    return out


def tuning_lines(tuning: dict[str, Any] | None) -> list[str]:
    """'## Tuning': every grid point's tuning-split BPB, the chosen value and the cost, per arm."""
    if not tuning:
        return []
    grid = tuning.get("grid")
    grid_text = (
        "auto (5 points ×/÷ 2 apart around each arm's own lr)"
        if grid == "auto"
        else ", ".join(f"{v:g}" for v in grid or [])
    )
    splits = tuning.get("split") or {}
    split_text = "; ".join(
        f"{tok}: training tokens {sp.get('cut_token'):,}–{sp.get('parent_train_tokens'):,}, the "
        f"last ~{100 * sp.get('fraction', 0):g}% cut at a document boundary"
        for tok, sp in splits.items()
    )
    out = [
        "## Tuning",
        "",
        f"- Tuned: {tuning.get('param')} over grid {grid_text}; every arm gets the same rules: seed "
        f"{tuning.get('seed')}, {tuning.get('fraction'):g} × its matched budget",
        f"- Scored on the tuning split, never on validation ({split_text}); tuning runs train on the rest",
        "",
        _row(["arm", "value", "tuning-split BPB", "status", "steps", "tokens", "wall", "chosen"]),
        "|" + "---|" * 8,
    ]
    total = {"runs": 0, "tokens": 0, "seconds": 0.0}
    for label, arm in (tuning.get("arms") or {}).items():
        for p in arm.get("points", []):
            bpb = f"{p['tune_bpb']:.4f}" if is_number(p.get("tune_bpb")) else p.get("status", DASH)
            out.append(
                _row(
                    [
                        label,
                        f"{p['value']:g}",
                        bpb,
                        p.get("status", DASH),
                        p["steps"] if is_number(p.get("steps")) else DASH,
                        fmt_count(p.get("tokens")),
                        fmt_wall(p.get("wall_s")),
                        "✓" if p["value"] == arm.get("chosen") else "",
                    ]
                )
            )
        for k in total:
            total[k] += (arm.get("cost") or {}).get(k) or 0
    out.append("")
    for label, arm in (tuning.get("arms") or {}).items():
        cost = arm.get("cost") or {}
        out.append(
            f"- {label}: chosen {tuning.get('param')} = {arm.get('chosen'):g} (tuning-split BPB "
            f"{arm.get('chosen_tune_bpb'):.4f}); cost {cost.get('runs')} runs, {fmt_count(cost.get('tokens'))} "
            f"tokens, {fmt_wall(cost.get('seconds'))}" + "".join(f"; {n}" for n in arm.get("notes", []))
        )
    out += [
        f"- Tuning cost in all: {total['runs']} runs, {fmt_count(total['tokens'])} tokens, "
        f"{fmt_wall(total['seconds'])} of training",
        "",
    ]
    return out


def write_report(results: dict[str, Any], comp_dir: str | Path, make_plots: bool = True) -> dict[str, Path]:
    """Write results.json (atomically), the plots, report.md and report.html into ``comp_dir``.

    Returns {"results": path, "report": path, "report.html": path, "<plot>.png": path ...}; no PNG keys
    when no run has a curve, no "report.html" when it could not be rendered (a warning says why).
    """
    from lumi.io import write_json, write_text_atomic

    comp_dir = Path(comp_dir)
    comp_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"results": comp_dir / "results.json", "report": comp_dir / "report.md"}
    write_json(files["results"], results)  # first: the numbers survive whatever happens to the plots
    plots: dict[str, Path] = {}
    plot_error = None
    if make_plots:
        from lumi.compare.plots import make_plots as draw

        try:
            plots = draw(results, comp_dir)
        except Exception as e:  # a plotting problem (fonts, backend) must not cost the report
            plot_error = f"{type(e).__name__}: {e}"
            print(f"warning: plots not written: {plot_error}", file=sys.stderr)
    write_text_atomic(files["report"], render_markdown(results, plots, plot_error))
    files.update(plots)
    from lumi.compare.html import render_html

    try:  # after report.md: a rendering problem must not cost the comparison or the markdown report
        page = render_html(results, comp_dir)
    except Exception as e:
        print(f"warning: report.html not written: {type(e).__name__}: {e}", file=sys.stderr)
    else:
        files["report.html"] = comp_dir / "report.html"
        write_text_atomic(files["report.html"], page)
    return files


# -- terminal ---------------------------------------------------------------------------------------


def print_table(results: dict[str, Any], file: TextIO | None = None) -> None:
    """The comparison as a plain-text table with one verdict line per arm (for the terminal)."""
    f = file if file is not None else sys.stdout
    arms = results.get("arms", [])
    baseline = str(results.get("baseline"))  # only shown in text
    seeds = ", ".join(str(s) for s in results.get("seeds", []))
    print(
        f"lumi compare: {results.get('name', '')} — matched {results.get('matched')}, budget "
        f"{results.get('budget')}, seeds {seeds}, baseline {baseline}",
        file=f,
    )
    # The report's table without the columns a terminal has no room for.
    keep = [i for i, h in enumerate(RESULTS_HEADER) if h not in ("non-emb params", "FLOPs")]
    header = [RESULTS_HEADER[i].replace("baseline", baseline) for i in keep]
    rows = [header] + [[row[i] for i in keep] for row in results_rows(arms)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    left = {0, len(header) - 1}  # text columns left-aligned, numbers right-aligned
    for i, r in enumerate(rows):
        cells = [
            c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=f)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=f)
    others = [a for a in arms if not a.get("is_baseline")]
    if others:
        print(file=f)
        for a in others:
            print(verdict_line(a, baseline), file=f)
    print(
        f"✓ = |Δ| ≥ {results.get('threshold', 0.005):g} BPB and the 95% CI excludes 0; Δ < 0 favours the arm",
        file=f,
    )
    evals = eval_rows(arms)
    if evals:
        table = [[c.replace("baseline", baseline) for c in EVAL_HEADER], *evals]
        widths = [max(len(r[i]) for r in table) for i in range(len(EVAL_HEADER))]
        print("\nevaluations (per seed, paired with the baseline):", file=f)
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=f)
    bench = bench_rows(results.get("bench"))
    if bench:
        table = [BENCH_HEADER, *bench]
        widths = [max(len(r[i]) for r in table) for i in range(len(BENCH_HEADER))]
        print(f"\ninference speed ({bench_caption(results['bench'])}):", file=f)
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=f)
    rule = results.get("seeds_rule")
    if rule:
        print(
            f"seeds auto:{rule.get('max_seeds')}: stopped after {rule.get('stopped_after')} seeds "
            f"({rule.get('stop_reason')}); verdicts from an anytime-valid 95% interval",
            file=f,
        )
    tuning = results.get("tuning")
    if tuning:
        arms_t = tuning.get("arms") or {}
        cost = {
            k: sum((a.get("cost") or {}).get(k) or 0 for a in arms_t.values())
            for k in ("runs", "tokens", "seconds")
        }
        print(
            f"tuned {tuning.get('param')} (on the tuning split, not validation): "
            + ", ".join(f"{label} {a.get('chosen'):g}" for label, a in arms_t.items())
            + f"; tuning cost {cost['runs']} runs, {fmt_count(cost['tokens'])} tokens, {fmt_wall(cost['seconds'])}",
            file=f,
        )
    notes = results.get("notes") or []
    if notes:
        print("\nnotes:", file=f)
        for n in notes[:MAX_TERMINAL_NOTES]:
            print(f"  - {n}", file=f)
        if len(notes) > MAX_TERMINAL_NOTES:
            print(f"  ... {len(notes) - MAX_TERMINAL_NOTES} more in report.md", file=f)

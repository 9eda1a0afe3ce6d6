"""report.html: the whole comparison on one self-contained page that opens from disk, offline.

It renders the same ``results`` as report.md (lumi.compare.report) — verdict lines, the table, every
seed, the adaptive-seeds rounds, the tuning grids, extra evaluations, checks, the causality audit of
every run, diagnoses and notes — plus interactive plotly curves (validation BPB and training loss
against tokens, FLOPs or wall time, every seed and the mean over seeds, values on hover) and the exact
spec, plans, training configs and environment in collapsible sections.

plotly.js is embedded once, inline (no network, no CDN): it is most of the file's size. Without
plotly installed the page is still written, with the static PNG plots embedded when they exist and a
line saying which extra installs the interactive ones. All text is escaped; the only JavaScript on the
page is plotly.js and the calls plotly itself emits.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from lumi.compare.bench import BENCH_HEADER, bench_caption, bench_rows
from lumi.compare.plots import PALETTE, PLOTS, arm_band
from lumi.compare.report import (
    DASH,
    EVAL_HEADER,
    MATCH_MEANING,
    RESULTS_HEADER,
    _eval_protocol,
    audit_text,
    check_summary,
    eval_rows,
    fmt_count,
    fmt_wall,
    results_rows,
    seed_rows,
    sequential_verdict,
    verdict_line,
)
from lumi.compare.stats import is_number

REPORT_EXTRA = "pip install 'lumi-lab[report]'"
COLORS = PALETTE  # the PNG plots' colours, so an arm looks the same in both
# (curve key, button label, axis title, hover format) — the x axes of the curve figures
X_AXES = (
    ("tokens", "tokens", "training tokens", ",.4s"),
    ("flops", "FLOPs", "training FLOPs", ".3s"),
    ("elapsed_s", "wall time", "training wall-clock (s)", ",.1f"),
)
MAX_TRAIN_POINTS = 400  # per run: longer logs are thinned evenly (the last point kept)
STATUS_CLASS = {"completed": "ok", "LEAK": "bad", "failed": "bad", "diverged": "bad", "interrupted": "warn"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f6f7f9;
margin:0;padding:16px}
main{max-width:1240px;margin:0 auto;background:#fff;padding:20px 28px;border-radius:8px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:1.5em;margin:.2em 0 .6em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #e3e6eb;
padding-bottom:.2em}h3{font-size:1em;margin:1.1em 0 .4em}
ul.facts{padding-left:1.2em;margin:.4em 0}ul.facts li{margin:.15em 0}
.verdict{border-left:5px solid #8a94a6;background:#f3f5f8;padding:.55em .9em;margin:.5em 0;border-radius:4px}
.verdict.good{border-color:#2e9e4f;background:#eef8f1}.verdict.bad{border-color:#d0453a;background:#fcefee}
.verdict.warn{border-color:#e0a100;background:#fff8e6}.verdict b{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #dde1e7;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
.ok{color:#227a3d}.bad{color:#c0392b}.warn{color:#a86b00}p.warn{font-weight:600}
.note{color:#5b6473;font-size:.9em}.fig{margin:.4em 0 1em;min-height:460px}
img.plot{max-width:100%;border:1px solid #e3e6eb;margin:.3em 0}
details{margin:.4em 0;border:1px solid #e3e6eb;border-radius:4px;padding:.3em .7em}
summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto;font-size:.85em;line-height:1.35}
code{background:#f0f2f5;padding:0 .25em;border-radius:3px}
"""


# -- small HTML helpers -------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return escape(str(x))


def _table(
    header: list[str],
    rows: list[list[Any]],
    classes: list[str | None] | None = None,
    num: tuple[int, ...] = (),
) -> str:
    """An escaped <table>; ``classes``: a CSS class per row (or None); ``num``: right-aligned columns."""
    out = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header)]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        css = classes[i] if classes else None
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if j in num else f"<td>{_e(c)}</td>" for j, c in enumerate(row)
        )
        out.append((f'<tr class="{css}">' if css else "<tr>") + cells + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _ul(items: list[str], cls: str = "facts") -> str:
    """A list of already-escaped HTML items."""
    return f'<ul class="{cls}">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _details(summary: str, body_html: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>{body_html}</details>"


def _pre(obj: Any) -> str:
    """An object as YAML (insertion order kept) in an escaped <pre>; plain text as is."""
    if isinstance(obj, str):
        return f"<pre>{_e(obj)}</pre>"
    import yaml

    try:
        text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except yaml.YAMLError:
        text = json.dumps(obj, indent=2, default=str)
    return f"<pre>{_e(text)}</pre>"


# -- sections -----------------------------------------------------------------------------------------


def _header(results: dict[str, Any]) -> str:
    arms = results.get("arms", [])
    match = results.get("matched", "tokens")
    data = results.get("data") or {}
    items = [
        f"Matched: <b>{_e(match)}</b> ({_e(MATCH_MEANING.get(match, match))}; everything else is shown next "
        "to the BPB)"
    ]
    budget = f"Budget: {_e(results.get('budget'))}"
    plans = [(a["label"], a["plan"]) for a in arms if a.get("plan")]
    if plans:
        budget += " — per arm: " + ", ".join(
            _e(
                f"{label} {p.get('budget', '?')}"
                + (f" ({fmt_count(p['tokens'])} tokens)" if is_number(p.get("tokens")) else "")
            )
            for label, p in plans
        )
    items.append(budget)
    seeds = ", ".join(str(s) for s in results.get("seeds", []))
    mixed = len({a.get("tokenizer") for a in arms if a.get("tokenizer")}) > 1
    items.append(
        f"Seeds: {_e(seeds)} ("
        + (
            "seed k gives every arm the same initialisation seed; arms with different tokenizers do not see the "
            "same text per step, so the pairing removes less noise)"
            if mixed
            else "seed k gives every arm the same initialisation and the same batches: differences are paired "
            "by seed)"
        )
    )
    items.append(f"Baseline: <b>{_e(results.get('baseline'))}</b>")
    data_text = f"corpus <code>{_e(data.get('corpus', '?'))}</code>, tokenizer <code>{_e(data.get('tokenizer', '?'))}</code>"
    if mixed:
        data_text += " (per arm: " + ", ".join(_e(f"{a['label']} {a.get('tokenizer')}") for a in arms) + ")"
    items.append(f"Data: {data_text}")
    items.append(f"Eval protocol (final val BPB): {_e(_eval_protocol(results.get('eval_protocol')))}")
    threshold = results.get("threshold", 0.005)
    env = results.get("env")
    if isinstance(env, dict):
        scalars = [f"{k} {v}" for k, v in env.items() if isinstance(v, (str, int, float, bool)) and v != ""]
        if scalars:
            items.append(
                _e(f"Environment: {', '.join(scalars[:10])} (all of it under Configs and environment)")
            )
    items.append(
        _e(
            "Verdict rule: Δ = BPB(arm) − BPB(baseline) per seed, Δ < 0 favours the arm; ✓ (better / worse) "
            f"when |mean Δ| ≥ {threshold:g} BPB and the 95% t confidence interval excludes 0, else no clear "
            "difference; p = paired t-test / exact sign-flip permutation test"
        )
    )
    return _ul(items)


def _verdict_class(arm: dict[str, Any]) -> str:
    vs = arm.get("vs_baseline") or {}
    if vs.get("withheld") or arm.get("check_passed") is False:
        return "warn"
    verdict = str(vs.get("verdict", ""))
    seq = arm.get("sequential")
    if seq:
        verdict = sequential_verdict(seq.get("decision"), vs.get("threshold"), verdict)
    if verdict.startswith("better"):
        return "good"
    if verdict.startswith("worse"):
        return "bad"
    return ""


def _verdicts(results: dict[str, Any]) -> str:
    baseline = str(results.get("baseline"))
    out = []
    for a in results.get("arms", []):
        if a.get("is_baseline"):
            continue
        line = verdict_line(a, baseline)
        head, sep, rest = line.partition(" — ")
        out.append(f'<p class="verdict {_verdict_class(a)}"><b>{_e(head)}</b>{_e(sep + rest)}</p>')
    return "\n".join(out) or '<p class="note">Only the baseline: nothing to compare.</p>'


def _seeds_rule(rule: dict[str, Any] | None) -> str:
    if not rule:
        return ""
    alpha = rule.get("alpha", 0.05)
    tau2 = rule.get("tau2")
    items = [
        _e(
            f"Rule: seeds auto:{rule.get('max_seeds')} — from {rule.get('min_seeds')} seeds, one more seed per "
            f"arm until every arm is decided: better / worse (the anytime-valid {100 * (1 - alpha):g}% interval "
            "excludes 0 and |mean Δ| ≥ the threshold) or equivalent (the interval lies inside ± the threshold)"
        ),
        _e(
            f"Method: {rule.get('method')}"
            + (f" (τ² = {tau2:g})" if is_number(tau2) else "")
            + ": valid however often the seeds are looked at"
        ),
        _e(f"Stopped after {rule.get('stopped_after')} seeds: {rule.get('stop_reason')}"),
    ]
    out = ["<h2>Adaptive seeds</h2>", _ul(items)]
    rounds = rule.get("rounds") or []
    if rounds:
        labels = list(rounds[0].get("decisions", {}))
        rows = [[str(r.get("seeds")), *[str(r["decisions"].get(lb, DASH)) for lb in labels]] for r in rounds]
        out.append(_table(["seeds", *labels], rows, num=(0,)))
    return "\n".join(out)


def _tuning(tuning: dict[str, Any] | None) -> str:
    if not tuning:
        return ""
    grid = tuning.get("grid")
    grid_text = (
        "auto (5 points ×/÷ 2 apart around each arm's own lr)"
        if grid == "auto"
        else ", ".join(f"{v:g}" for v in grid or [] if is_number(v))
    )
    splits = tuning.get("split") or {}
    split_text = "; ".join(
        f"{tok}: training tokens {sp.get('cut_token'):,}–{sp.get('parent_train_tokens'):,}, the last "
        f"~{100 * (sp.get('fraction') or 0):g}% cut at a document boundary"
        if is_number(sp.get("cut_token")) and is_number(sp.get("parent_train_tokens"))
        else str(tok)
        for tok, sp in splits.items()
    )
    fraction = tuning.get("fraction")
    items = [
        _e(
            f"Tuned: {tuning.get('param')} over grid {grid_text}; every arm gets the same rules: seed "
            f"{tuning.get('seed')}, {fraction:g} × its matched budget"
            if is_number(fraction)
            else f"Tuned: {tuning.get('param')} over grid {grid_text}"
        ),
        _e(f"Scored on the tuning split, never on validation ({split_text}); tuning runs train on the rest"),
    ]
    rows, classes = [], []
    for label, arm in (tuning.get("arms") or {}).items():
        for p in arm.get("points", []):
            value = p.get("value")
            rows.append(
                [
                    label,
                    f"{value:g}" if is_number(value) else str(value),
                    f"{p['tune_bpb']:.4f}" if is_number(p.get("tune_bpb")) else str(p.get("status", DASH)),
                    str(p.get("status", DASH)),
                    str(p["steps"]) if is_number(p.get("steps")) else DASH,
                    fmt_count(p.get("tokens")),
                    fmt_wall(p.get("wall_s")),
                    "✓" if value == arm.get("chosen") else "",
                ]
            )
            classes.append("ok" if value == arm.get("chosen") else None)
    chosen = []
    for label, arm in (tuning.get("arms") or {}).items():
        cost = arm.get("cost") or {}
        best = arm.get("chosen_tune_bpb")
        chosen.append(
            _e(
                f"{label}: chosen {tuning.get('param')} = {arm.get('chosen')}"
                + (f" (tuning-split BPB {best:.4f})" if is_number(best) else "")
                + f"; cost {cost.get('runs')} runs, {fmt_count(cost.get('tokens'))} tokens, "
                f"{fmt_wall(cost.get('seconds'))}" + "".join(f"; {n}" for n in arm.get("notes", []))
            )
        )
    header = ["arm", "value", "tuning-split BPB", "status", "steps", "tokens", "wall", "chosen"]
    return "\n".join(
        ["<h2>Tuning</h2>", _ul(items), _table(header, rows, classes, num=(1, 2, 4, 5, 6)), _ul(chosen)]
    )


def _evaluations(arms: list[dict[str, Any]], baseline: str) -> str:
    rows = eval_rows(arms)
    if not rows:
        return ""
    header = [c.replace("baseline", baseline) for c in EVAL_HEADER]
    return "<h2>Evaluations</h2>\n" + _table(header, [list(r) for r in rows], num=(2, 3, 4, 6))


def _bench(bench: dict[str, Any] | None) -> str:
    rows = bench_rows(bench)
    if not bench or not rows:
        return ""
    return f"<h2>Inference speed</h2>\n<p>{_e(bench_caption(bench))}</p>\n" + _table(
        BENCH_HEADER, [list(r) for r in rows], num=(1, 2, 3, 4, 5)
    )


def _checks(arms: list[dict[str, Any]]) -> str:
    out = ["<h2>Checks (<code>lumi check</code>)</h2>"]
    for a in arms:
        summary, failed = check_summary(a)
        if not a.get("check"):
            out.append(f"<p>{_e(summary)}</p>")
            continue
        res = a["check"].get("results") or []
        rows = [
            [
                str(r.get("name")),
                "n/a" if r.get("skipped") else ("pass" if r.get("passed", True) else "FAIL"),
                f"{r['value']:.4g}" if is_number(r.get("value")) else DASH,
                str(r.get("detail", "")),
            ]
            for r in res
        ]
        classes: list[str | None] = [None if r.get("passed", True) else "bad" for r in res]
        body = _table(["check", "result", "value", "detail"], rows, classes, num=(2,))
        out.append(_details(summary, body, open_=bool(failed)))
    return "\n".join(out)


def _audits(arms: list[dict[str, Any]]) -> str:
    rows, classes = [], []
    for a in arms:
        for r in a.get("runs", []):
            audit = r.get("causality_audit") if isinstance(r.get("causality_audit"), dict) else {}
            result = audit_text(r)
            lengths = audit.get("lengths")
            rows.append(
                [
                    a["label"],
                    str(r.get("seed")),
                    result if result != DASH else "not run",
                    ", ".join(str(x) for x in lengths) if isinstance(lengths, list) else DASH,
                    str(audit["probes"]) if is_number(audit.get("probes")) else DASH,
                    fmt_wall(audit.get("seconds")),
                    str(audit.get("detail") or r.get("leak") or ""),
                ]
            )
            classes.append("bad" if result == "LEAK" else None)
    head = (
        "<h2>Causality audit of the trained weights</h2>\n<p class='note'>Every run probes its final weights "
        "at its training length (perturbation, exact-zero gradients, batch independence; "
        "<code>lumi.check.audit</code>). A run that fails is LEAK: never paired, no verdict.</p>"
    )
    return (
        head
        + "\n"
        + _table(
            ["arm", "seed", "audit", "lengths", "probes", "time", "detail"], rows, classes, num=(1, 4, 5)
        )
    )


def _diagnoses(arms: list[dict[str, Any]]) -> str:
    items = [
        f"{_e(a['label'])} seed {_e(r.get('seed'))}: <b>{_e(d.get('label'))}</b> — {_e(d.get('detail', ''))}"
        for a in arms
        for r in a.get("runs", [])
        for d in r.get("diagnoses", [])
    ]
    return "<h2>Diagnoses</h2>\n" + _ul(items or ["none"])


def _notes(notes: list[Any]) -> str:
    return "<h2>Notes</h2>\n" + _ul([_e(n) for n in notes] or ["none"])


def _configs(results: dict[str, Any], comp_dir: Path) -> str:
    """The exact spec, plans, training configs and environment, each collapsed."""
    parts = ["<h2>Configs and environment</h2>"]
    if results.get("spec") is not None:
        parts.append(_details("Spec (as requested: results.json spec)", _pre(results["spec"])))
    compare_yaml = comp_dir / "compare.yaml"
    if compare_yaml.is_file():
        parts.append(
            _details(
                "compare.yaml (the spec with its resolved budgets)",
                _pre(compare_yaml.read_text(encoding="utf-8", errors="replace")),
            )
        )
    plans = {a["label"]: a["plan"] for a in results.get("arms", []) if a.get("plan")}
    if plans:
        parts.append(_details("Per-arm plans (matched budgets)", _pre(plans)))
    arms_info = {
        a["label"]: {
            k: a.get(k) for k in ("model", "preset", "overrides", "files", "tokenizer", "is_baseline")
        }
        for a in results.get("arms", [])
    }
    parts.append(_details("Arms", _pre(arms_info)))
    configs_dir = comp_dir / "configs"
    if configs_dir.is_dir():
        for path in sorted(configs_dir.rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
                text = path.read_text(encoding="utf-8", errors="replace")
                parts.append(_details(f"configs/{path.relative_to(configs_dir).as_posix()}", _pre(text)))
    protocol = {"data": results.get("data"), "eval_protocol": results.get("eval_protocol")}
    parts.append(_details("Data and evaluation protocol", _pre(protocol)))
    env = results.get("env")
    parts.append(_details("Environment", _pre(env) if env else "<p>not recorded</p>"))
    return "\n".join(parts)


# -- curves -------------------------------------------------------------------------------------------


def _run_dir(run: dict[str, Any], comp_dir: Path) -> Path | None:
    """The run's directory under ``comp_dir`` (results.json may have been written from another cwd)."""
    if not run.get("run_dir"):
        return None
    recorded = Path(run["run_dir"])
    local = comp_dir / "runs" / recorded.parent.name / recorded.name
    return local if local.is_dir() else (recorded if recorded.is_dir() else None)


def _train_curve(run: dict[str, Any], comp_dir: Path) -> dict[str, list[Any]] | None:
    """{tokens, flops, elapsed_s, val_bpb: train loss} from the run's metrics.jsonl, thinned; None without one.

    The training loss lives only in the run directory (results.json keeps the validation curve); the
    value sits under "val_bpb" so lumi.compare.plots.arm_band can average it like a validation curve.
    """
    from lumi.run import Run

    run_dir = _run_dir(run, comp_dir)
    if run_dir is None:
        return None
    rows = [r for r in Run(run_dir).metrics() if r.get("kind") == "train" and is_number(r.get("loss"))]
    if not rows:
        return None
    if len(rows) > MAX_TRAIN_POINTS:  # evenly thinned, the first and the last row kept
        last = len(rows) - 1
        rows = [
            rows[i]
            for i in sorted({round(k * last / (MAX_TRAIN_POINTS - 1)) for k in range(MAX_TRAIN_POINTS)})
        ]
    curve: dict[str, list[Any]] = {k: [r.get(k) for r in rows] for k, _, _, _ in X_AXES}
    curve["val_bpb"] = [float(r["loss"]) for r in rows]
    return curve


def _xy(curve: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    pts = sorted(
        (float(x), float(y))
        for x, y in zip(curve.get(key) or [], curve.get("val_bpb") or [], strict=False)
        if is_number(x) and is_number(y)
    )
    return [p[0] for p in pts], [p[1] for p in pts]


def _curve_figure(
    arms: list[dict[str, Any]], curves: list[list[tuple[int, dict[str, Any], bool]]], ylabel: str
) -> Any | None:
    """One plotly figure: per arm every seed (thin) and the mean over seeds (thick), with buttons that
    switch the x axis between tokens, FLOPs and wall time. ``curves[i]``: (seed, curve, usable) of arm i."""
    import plotly.graph_objects as go

    traces: list[dict[str, Any]] = []  # name, legend group, colour, seed (or mean), {x key: (x, y)}
    for i, (arm, runs) in enumerate(zip(arms, curves, strict=True)):
        color = COLORS[i % len(COLORS)]
        label = str(arm["label"]) + (" (baseline)" if arm.get("is_baseline") else "")
        for seed, curve, _ in runs:
            xy = {key: _xy(curve, key) for key, _, _, _ in X_AXES}
            if any(xy[key][0] for key, _, _, _ in X_AXES):
                traces.append(
                    {"name": f"{label} seed {seed}", "group": label, "color": color, "seed": True, "xy": xy}
                )
        fake_runs = [{"curve": c, "usable": u} for _, c, u in runs]
        mean_xy: dict[str, tuple[list[float], list[float]]] = {}
        n_mean = 0
        for key, _, _, _ in X_AXES:
            band = arm_band(fake_runs, key)
            if band is None:
                mean_xy[key] = ([], [])
                continue
            grid, mean, _lo, _hi, n_mean = band
            mean_xy[key] = ([float(x) for x in grid], [float(y) for y in mean])
        if n_mean > 1:
            traces.append(
                {
                    "name": f"{label} mean of {n_mean} seeds",
                    "group": label,
                    "color": color,
                    "seed": False,
                    "xy": mean_xy,
                }
            )
    if not traces:
        return None
    axes = [a for a in X_AXES if any(t["xy"][a[0]][0] for t in traces)]
    first = axes[0]
    fig = go.Figure()
    for t in traces:
        x, y = t["xy"][first[0]]
        many = max((len(t["xy"][a[0]][0]) for a in axes), default=0) > 30
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=_e(t["name"]),
                legendgroup=_e(t["group"]),
                mode="lines" if many else "lines+markers",
                line={"color": t["color"], "width": 1.1 if t["seed"] else 3},
                marker={"size": 3 if t["seed"] else 6},
                opacity=0.45 if t["seed"] else 1.0,
                hovertemplate=f"<b>{_e(t['name'])}</b><br>{_e(first[2])}: %{{x:{first[3]}}}<br>"
                f"{_e(ylabel)}: %{{y:.4f}}<extra></extra>",
            )
        )
    buttons = [
        {
            "label": button,
            "method": "update",
            "args": [
                {
                    "x": [t["xy"][key][0] for t in traces],
                    "y": [t["xy"][key][1] for t in traces],
                    "hovertemplate": [
                        f"<b>{_e(t['name'])}</b><br>{_e(axis)}: %{{x:{fmt}}}<br>{_e(ylabel)}: %{{y:.4f}}"
                        "<extra></extra>"
                        for t in traces
                    ],
                },
                {"xaxis.title.text": axis},
            ],
        }
        for key, button, axis, fmt in axes
    ]
    fig.update_layout(
        xaxis_title=first[2],
        yaxis_title=_e(ylabel),
        template="plotly_white",
        height=460,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        hovermode="closest",
        legend={"font": {"size": 11}, "groupclick": "toggleitem"},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "buttons": buttons,
                "x": 0,
                "xanchor": "left",
                "y": 1.12,
                "yanchor": "top",
                "pad": {"r": 4, "t": 0},
                "showactive": True,
            }
        ]
        if len(axes) > 1
        else [],
    )
    return fig


def _tuning_figure(tuning: dict[str, Any] | None, arms: list[dict[str, Any]]) -> Any | None:
    """Tuning-split BPB against the tuned value (log axis), one line per arm, the chosen point starred."""
    if not tuning:
        return None
    import plotly.graph_objects as go

    colors = {a["label"]: COLORS[i % len(COLORS)] for i, a in enumerate(arms)}
    fig = go.Figure()
    param = str(tuning.get("param", "value"))
    for i, (label, arm) in enumerate((tuning.get("arms") or {}).items()):
        pts = sorted(
            (float(p["value"]), float(p["tune_bpb"]))
            for p in arm.get("points", [])
            if is_number(p.get("value")) and p["value"] > 0 and is_number(p.get("tune_bpb"))
        )
        if not pts:
            continue
        color = colors.get(label, COLORS[i % len(COLORS)])
        hover = (
            f"<b>{_e(label)}</b><br>{_e(param)}: %{{x:.3g}}<br>tuning-split BPB: %{{y:.4f}}<extra></extra>"
        )
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                name=_e(label),
                legendgroup=_e(label),
                mode="lines+markers",
                line={"color": color},
                hovertemplate=hover,
            )
        )
        chosen = arm.get("chosen")
        best = [p for p in pts if is_number(chosen) and math.isclose(p[0], float(chosen))]
        if best:
            fig.add_trace(
                go.Scatter(
                    x=[best[0][0]],
                    y=[best[0][1]],
                    name=_e(f"{label} chosen"),
                    legendgroup=_e(label),
                    mode="markers",
                    marker={
                        "symbol": "star",
                        "size": 15,
                        "color": color,
                        "line": {"width": 1, "color": "#333"},
                    },
                    hovertemplate=hover,
                )
            )
    if not fig.data:
        return None
    fig.update_layout(
        xaxis={"type": "log", "title": {"text": _e(param)}},
        yaxis_title="tuning-split BPB",
        template="plotly_white",
        height=400,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
    )
    return fig


def _figures(results: dict[str, Any], comp_dir: Path) -> list[tuple[str, str, Any]]:
    """(div id, heading, plotly figure) of every interactive plot that has data."""
    arms = results.get("arms", [])
    val = [
        [(r.get("seed"), r.get("curve") or {}, bool(r.get("usable"))) for r in a.get("runs", [])]
        for a in arms
    ]
    train = [
        [
            (r.get("seed"), c, bool(r.get("usable")))
            for r in a.get("runs", [])
            if (c := _train_curve(r, comp_dir))
        ]
        for a in arms
    ]
    tuned = str((results.get("tuning") or {}).get("param", "lr"))
    figs = [
        (
            "curve-val",
            "Validation BPB (periodic evals on a fixed validation prefix)",
            _curve_figure(arms, val, "validation BPB"),
        ),
        (
            "curve-train",
            "Training loss (as logged: nats per token, on the training batches)",
            _curve_figure(arms, train, "training loss (nats/token)"),
        ),
        (
            "curve-tuning",
            f"Tuning: tuning-split BPB against {tuned} (the chosen value starred)",
            _tuning_figure(results.get("tuning"), arms),
        ),
    ]
    return [(fid, head, fig) for fid, head, fig in figs if fig is not None]


def _plots(results: dict[str, Any], comp_dir: Path) -> tuple[str, str]:
    """(the <script> with plotly.js, the plots section); without plotly: no script, the PNGs embedded."""
    out = ["<h2>Curves</h2>"]
    try:
        import plotly.offline
    except ImportError:
        out.append(
            f'<p class="warn">Interactive plots need plotly, which is not installed: <code>{_e(REPORT_EXTRA)}'
            "</code>, then <code>lumi report DIR</code> rebuilds this page.</p>"
        )
        for fname, _, _ in PLOTS:
            png = comp_dir / fname
            if png.is_file():
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                out.append(f'<img class="plot" alt="{_e(png.stem)}" src="data:image/png;base64,{data}">')
        return "", "\n".join(out)

    figs = _figures(results, comp_dir)
    if not figs:
        out.append('<p class="note">No run has logged a curve yet.</p>')
        return "", "\n".join(out)
    out.append(
        '<p class="note">Hover for values; click a legend entry to hide it (double-click: show only it); '
        "the buttons switch the x axis; drag to zoom, double-click to reset. Thin lines: each seed; thick: the "
        "mean over the arm's completed seeds, interpolated where they all have data.</p>"
    )
    config = {"displaylogo": False, "responsive": True}
    for fid, head, fig in figs:
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=fid, config=config)
        out.append(f'<h3>{_e(head)}</h3>\n<div class="fig">{div}</div>')
    # plotly.js once, inline: the page must open from disk with no network.
    script = f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
    return script, "\n".join(out)


# -- the page -----------------------------------------------------------------------------------------


def render_html(results: dict[str, Any], comp_dir: Path) -> str:
    """report.html as text: one self-contained page (inline CSS, plotly.js embedded once, no network)."""
    comp_dir = Path(comp_dir)
    arms = results.get("arms", [])
    baseline = str(results.get("baseline"))
    name = str(results.get("name", ""))
    script, plots = _plots(results, comp_dir)
    header, rows, statuses = seed_rows(arms)
    classes = [None if st == "completed" else STATUS_CLASS.get(st, "warn") for st in statuses]
    body = [
        f"<h1>lumi compare: {_e(name)}</h1>",
        _header(results),
        "<h2>Verdict</h2>",
        _verdicts(results),
        "<h2>Results</h2>",
        _table(RESULTS_HEADER, results_rows(arms), num=tuple(range(1, 12))),
        '<p class="note">val BPB: mean ± std (ddof 1) over the arm\'s completed seeds; Δ, p and wins over the '
        "seeds both the arm and the baseline completed; wall and tok/s: mean over runs. ✓ = |Δ| ≥ the "
        "threshold and the 95% CI excludes 0; Δ &lt; 0 favours the arm.</p>",
        plots,
        _seeds_rule(results.get("seeds_rule")),
        _tuning(results.get("tuning")),
        _evaluations(arms, baseline),
        _bench(results.get("bench")),
        "<h2>Every seed</h2>",
        _table(header, rows, classes, num=tuple(i for i in range(1, len(header) - 2) if i != 2)),
        _checks(arms),
        _audits(arms),
        _diagnoses(arms),
        _notes(results.get("notes") or []),
        _configs(results, comp_dir),
        '<p class="note">Written by Lumi from results.json; <code>lumi report DIR</code> rebuilds it.</p>',
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>lumi compare: {_e(name)}</title>",
            f"<style>{CSS}</style>",
            script,
            "</head><body><main>",
            *(part for part in body if part),
            "</main></body></html>",
            "",
        ]
    )

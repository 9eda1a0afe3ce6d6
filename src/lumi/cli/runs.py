"""`lumi runs [DIR]`: the runs and comparisons under a directory; `--compare RUN ...` overlays their curves."""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path
from typing import Any

from lumi.cli.common import add_json_flag, add_verb, print_json
from lumi.compare.plots import overlay_html, overlay_png
from lumi.errors import LumiError

HELP = "list runs and comparisons; overlay the validation curves of several runs"

DESCRIPTION = """\
List every run (a directory with config.yaml, written by `lumi train`) and every comparison (a
directory with compare.yaml, written by `lumi compare`) found under DIR, recursively (default: ./runs
and ./compare when present, else the current directory). Columns:
  name       the directory, as the other verbs take it (lumi eval NAME, lumi runs --compare NAME ...)
  kind       run | comparison
  model      MODEL:PRESET of a run; the arms of a comparison
  status     a run's recorded status (running, completed, interrupted, diverged, failed); for a
             comparison, its runs' statuses from results.json
  steps      optimizer steps done (a comparison: the steps each arm is given)
  val BPB    a run's final validation BPB, or (in parentheses) its latest periodic evaluation while it
             has no final one; a comparison: each arm's mean over seeds
  when       when it last recorded something (summary.json / results.json)

--compare RUN [RUN ...] draws the validation curves (val BPB of the periodic evaluations against
tokens trained, from each run's metrics.jsonl; a star marks the final evaluation on the whole split)
into one PNG (--out, default runs-compare.png) and, when plotly is installed, an interactive HTML
next to it. A comparison directory given there stands for all of its runs.
"""

EPILOG = """\
examples:
  lumi runs
  lumi runs compare/default --json
  lumi runs --compare runs/llama-micro-20250101-120000 runs/multiscale-micro-20250101-130000
  lumi runs --compare compare/default --out default-curves.png
"""

MAX_DEPTH = 8  # compare/<name>/tune/<arm>/<point> is 5 levels below the current directory


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "runs", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "dir", nargs="?", metavar="DIR", help="where to look (default: ./runs and ./compare, else .)"
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        help="overlay the validation curves of these runs (or comparison directories) in one plot",
    )
    p.add_argument(
        "--out", metavar="FILE.png", help="the --compare plot (default runs-compare.png; .html beside it)"
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        if args.dir:
            raise LumiError(
                f"give either DIR (to list what is under it) or --compare RUN ... (to plot runs), not both; "
                f"got DIR {args.dir!r}"
            )
        return _compare(args)
    if args.out:
        raise LumiError("--out names the --compare plot; add --compare RUN RUN ...")
    roots = _roots(args.dir)
    entries = list_entries(roots)
    if not entries:
        where = " and ".join(repr(str(r)) for r in roots)
        raise LumiError(
            f"there are no runs under {where}: no directory with config.yaml (`lumi train`) or "
            f"compare.yaml (`lumi compare`)"
        )
    if args.json:
        print_json({"roots": [str(r) for r in roots], "entries": entries})
        return 0
    _print_table(entries)
    return 0


# -- finding -------------------------------------------------------------------------------------


def _roots(given: str | None) -> list[Path]:
    if given is not None:
        root = Path(given)
        if not root.exists():
            raise LumiError(f"{given!r} does not exist; give a directory holding runs or comparisons")
        if not root.is_dir():
            raise LumiError(
                f"{given!r} is not a directory; give a directory holding runs (a run is a directory with "
                f"config.yaml, written by `lumi train`)"
            )
        return [root]
    defaults = [Path(d) for d in ("runs", "compare") if Path(d).is_dir()]
    return defaults or [Path(".")]


def find(roots: list[Path]) -> list[tuple[str, Path]]:
    """(kind, directory) of every run and comparison at or below ``roots``, in path order. A run's own
    directories are not searched (nor hidden ones, nor symlinks); a comparison's are (its runs)."""
    from lumi.run import Run

    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()

    def walk(folder: Path, depth: int) -> None:
        key = folder.resolve()
        if key in seen:
            return
        seen.add(key)
        if Run.is_run(folder):
            found.append(("run", folder))
            return
        if (folder / "compare.yaml").is_file():
            found.append(("comparison", folder))
        if depth >= MAX_DEPTH:
            return
        try:
            children = sorted(e for e in folder.iterdir() if e.is_dir() and not e.is_symlink())
        except OSError:
            return
        for child in children:
            if not child.name.startswith("."):
                walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return found


def list_entries(roots: list[Path]) -> list[dict[str, Any]]:
    return [run_entry(p) if kind == "run" else comparison_entry(p) for kind, p in find(roots)]


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (what the other verbs take)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def run_entry(path: Path) -> dict[str, Any]:
    """One run's row, read through lumi.run.Run (a config.yaml that no longer loads is reported, not fatal)."""
    from lumi.run import Run

    r = Run(path)
    summary = r.summary() or {}
    problem = None
    try:
        cfg = r.config
        name, model = cfg.name or path.name, f"{cfg.model.name}:{cfg.model.preset or 'custom'}"
    except LumiError as e:
        problem = str(e)
        name = str(summary.get("name") or path.name)
        model = f"{summary.get('model', '?')}:{summary.get('preset') or 'custom'}"
    latest = r.latest_metrics()
    steps = summary.get("steps") if summary.get("steps") is not None else latest.get("step")
    return {
        "kind": "run",
        "path": _shown(path),
        "name": name,
        "model": model,
        "status": r.status(),
        "steps": steps,
        "final_val_bpb": _number(summary.get("final_val_bpb")),
        "latest_val_bpb": _number(latest.get("val_bpb")),
        "when": _when(r.modified_time()),
        "error": summary.get("error") or problem,
    }


def comparison_entry(path: Path) -> dict[str, Any]:
    """One comparison's row: its spec and plans (compare.yaml) and, once written, results.json."""
    from lumi.compare.results import status_text
    from lumi.io import read_yaml

    problem = None
    try:
        state = read_yaml(path / "compare.yaml", "comparison state")
    except LumiError as e:
        state, problem = None, str(e)
    state = state if isinstance(state, dict) else {}
    spec: dict[str, Any] = state["spec"] if isinstance(state.get("spec"), dict) else {}
    arms = [a.get("label") or a.get("model") for a in spec.get("arms") or [] if isinstance(a, dict)]
    plans: dict[str, Any] = state["plans"] if isinstance(state.get("plans"), dict) else {}
    steps = {
        str(label): p.get("steps") if p.get("steps") is not None else p.get("budget")
        for label, p in plans.items()
        if isinstance(p, dict)
    }
    results_path = path / "results.json"
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        results = None
    results = results if isinstance(results, dict) else None
    bpb: dict[str, float | None] = {}
    status = "no results yet"
    when_path = path / "compare.yaml"
    if results is not None:
        statuses = []
        for arm in results.get("arms") or []:
            statuses += [str(r.get("status")) for r in arm.get("runs") or []]
            bpb[str(arm.get("label"))] = _number((arm.get("bpb") or {}).get("mean"))
        status = status_text(statuses)
        when_path = results_path
    try:
        when = _when(when_path.stat().st_mtime)
    except OSError:
        when = None
    return {
        "kind": "comparison",
        "path": _shown(path),
        "name": str(spec.get("name") or path.name),
        "model": " vs ".join(str(a) for a in arms) or "?",
        "status": status,
        "steps": steps,
        "final_val_bpb": bpb,
        "latest_val_bpb": None,
        "when": when,
        "error": problem,
    }


# -- the table -----------------------------------------------------------------------------------


def _cells(e: dict[str, Any]) -> list[str]:
    if e["kind"] == "run":
        steps = "-" if e["steps"] is None else f"{e['steps']:,}"
        if e["final_val_bpb"] is not None:
            bpb = f"{e['final_val_bpb']:.4f}"
        elif e["latest_val_bpb"] is not None:
            bpb = f"({e['latest_val_bpb']:.4f})"
        else:
            bpb = "-"
    else:
        values = list(e["steps"].values())
        if not values:
            steps = "-"
        elif len(set(map(str, values))) == 1:
            steps = f"{values[0]:,}" if isinstance(values[0], int) else str(values[0])
        else:
            steps = "/".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values)
        bpb = (
            " / ".join(
                f"{label} {'-' if v is None else f'{v:.4f}'}" for label, v in e["final_val_bpb"].items()
            )
            or "-"
        )
    when = (e["when"] or "-").replace("T", " ")[:16]
    return [e["path"], e["kind"], e["model"], str(e["status"]), steps, bpb, when]


def _print_table(entries: list[dict[str, Any]]) -> None:
    header = ["name", "kind", "model", "status", "steps", "val BPB", "when"]
    rows = [_cells(e) for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {4}  # steps
    for r in [header, *rows]:
        print(
            "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    n_runs = sum(e["kind"] == "run" for e in entries)
    n_comp = len(entries) - n_runs
    print(f"{n_runs} run{'s' if n_runs != 1 else ''}, {n_comp} comparison{'s' if n_comp != 1 else ''}")


# -- --compare -----------------------------------------------------------------------------------


def curve(path: Path) -> dict[str, Any]:
    """A run's validation curve from metrics.jsonl: periodic evals (tokens, val BPB) and the final one."""
    from lumi.run import Run

    r = Run.open(path)
    periodic: list[tuple[int, float]] = []
    final = None
    for row in r.metrics():
        bpb, tokens = _number(row.get("val_bpb")), row.get("tokens")
        if row.get("kind") != "eval" or bpb is None or not isinstance(tokens, int):
            continue
        if row.get("final"):
            final = (tokens, bpb)
        else:
            periodic.append((tokens, bpb))
    if not periodic and final is None:
        raise LumiError(
            f"run {str(path)!r} has no validation evaluations in its metrics.jsonl yet (no eval rows with a "
            f"val_bpb); wait for its first evaluation, or train it with train.eval_every_steps set"
        )
    try:
        tokenizer = r.config.data.tokenizer
    except LumiError:
        tokenizer = str((r.summary() or {}).get("tokenizer") or "?")
    return {
        "path": _shown(path),
        "status": r.status(),
        "tokenizer": tokenizer,
        "tokens": [t for t, _ in periodic],
        "val_bpb": [b for _, b in periodic],
        "final": None if final is None else {"tokens": final[0], "val_bpb": final[1]},
    }


def _compare_targets(paths: list[str]) -> list[Path]:
    """The runs to plot: each given run, and every run of each given comparison directory."""
    from lumi.run import Run

    out: list[Path] = []
    for given in paths:
        p = Path(given)
        if Run.is_run(p):
            out.append(p)
        elif p.is_dir() and (p / "compare.yaml").is_file():
            runs = [q for kind, q in find([p / "runs"]) if kind == "run"]
            if not runs:
                raise LumiError(f"comparison {given!r} has no runs yet (nothing under {p / 'runs'})")
            out += runs
        else:
            Run.open(p)  # raises: says whether it does not exist or has no config.yaml
    unique: dict[Path, Path] = {}
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _compare(args: argparse.Namespace) -> int:
    out = Path(args.out or "runs-compare.png")
    if out.suffix.lower() != ".png":
        raise LumiError(f"--out {str(out)!r} must be a .png file (an .html goes beside it)")
    if out.is_dir():
        raise LumiError(f"--out {str(out)!r} is a directory; give a file name ending in .png")
    curves = [curve(p) for p in _compare_targets(args.compare)]
    tokenizers = sorted({c["tokenizer"] for c in curves})
    note = (
        f"runs use different tokenizers ({', '.join(tokenizers)}): a token is not the same amount of text "
        f"for each, so compare the curves by their BPB, not their token positions"
        if len(tokenizers) > 1
        else None
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LumiError(f"cannot create the directory of --out {str(out)!r}: {e.strerror or e}") from None
    png = overlay_png(curves, out, note)
    html = overlay_html(curves, out.with_suffix(".html"), note)
    if args.json:
        print_json({"png": str(png), "html": str(html) if html else None, "note": note, "runs": curves})
        return 0
    width = max(len(c["path"]) for c in curves)
    print(f"{'run':<{width}}  {'evals':>5}  {'last val BPB':>12}  {'final val BPB':>13}  status")
    for c in curves:
        last = f"{c['val_bpb'][-1]:.4f}" if c["val_bpb"] else "-"
        final = f"{c['final']['val_bpb']:.4f}" if c["final"] else "-"
        print(f"{c['path']:<{width}}  {len(c['val_bpb']):>5}  {last:>12}  {final:>13}  {c['status']}")
    if note:
        print(f"note: {note}")
    print(f"plot: {png}")
    print(f"interactive: {html}" if html else "interactive: (install plotly for an HTML version)")
    return 0

"""`lumi report DIR`: rebuild a comparison's report.md, report.html and plots from its results.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lumi.cli.common import add_json_flag, add_verb, print_json
from lumi.errors import LumiError

HELP = "rebuild a comparison's report.md and report.html from its results.json (trains nothing)"

DESCRIPTION = """\
Read DIR/results.json, written by `lumi compare`, and write DIR/report.md, DIR/report.html and the
PNG plots again — e.g. after upgrading Lumi, or after installing plotly for the interactive curves
(pip install 'lumi-lab[report]'). Nothing is trained, checked or re-evaluated: every number comes from
results.json, and the training-loss curves from the runs' metrics.jsonl under DIR/runs/ when present.

report.html is one self-contained page that opens from disk with no network (plotly.js is embedded:
about 5 MB); see docs/compare.md, "The HTML report".
"""

EPILOG = """\
examples:
  lumi report compare/default
  lumi report compare/relu2-vs-swiglu --no-plots --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "report", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "dir", metavar="DIR", help="a comparison directory (compare/<name>/, holding results.json)"
    )
    p.add_argument(
        "--no-plots", action="store_true", help="do not rewrite the PNG plots (report.md skips them)"
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def load_comparison(comp_dir: Path) -> dict[str, Any]:
    """DIR/results.json of a comparison; anything else is a one-line LumiError."""
    from lumi.io import read_json

    if not comp_dir.exists():
        raise LumiError(f"{comp_dir} does not exist")
    if not comp_dir.is_dir():
        raise LumiError(f"{comp_dir} is not a directory: give a comparison directory (compare/<name>/)")
    path = comp_dir / "results.json"
    if not path.is_file():
        raise LumiError(
            f"{comp_dir} has no results.json: not a comparison directory (`lumi compare` writes one)"
        )
    results = read_json(path, "results file")
    arms = results.get("arms") if isinstance(results, dict) else None
    if not (
        isinstance(arms, list)
        and arms
        and all(
            isinstance(a, dict)
            and isinstance(a.get("label"), str)
            and isinstance(a.get("runs"), list)
            and all(isinstance(r, dict) and "seed" in r for r in a["runs"])
            for a in arms
        )
        and "baseline" in results
    ):
        raise LumiError(
            f"{path} is not a comparison's results.json (it needs a baseline and arms with runs, as "
            "`lumi compare` writes them)"
        )
    return results


def run(args: argparse.Namespace) -> int:
    from lumi.compare.report import write_report

    comp_dir = Path(args.dir)
    results = load_comparison(comp_dir)
    files = write_report(results, comp_dir, make_plots=not args.no_plots)
    if args.json:
        print_json({"dir": str(comp_dir), "files": {k: str(p) for k, p in files.items()}})
        return 0
    print(f"report:  {files['report']}")
    html = files.get("report.html")
    if html is not None:
        print(f"html:    {html} ({html.stat().st_size / 1e6:.1f} MB, opens offline)")
    else:
        print("html:    not written (see the warning above)")
    plots = [str(p) for k, p in files.items() if k.endswith(".png")]
    if plots:
        print("plots:   " + "  ".join(plots))
    return 0

"""report.html: content, offline self-containment and size, `lumi report DIR`, and a real headless browser.

The comparison is synthetic (run directories written here, no training: ~3 s) but complete: checks,
the causality audit of every run, a crashed seed, adaptive-seed rounds, a tuning grid, an extra
evaluation, the spec, env, plans and configs. The browser tests open the page in headless Chromium
and skip, saying why, when no Chromium is installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lumi.cli import main
from lumi.compare.html import REPORT_EXTRA, RESULTS_HEADER, render_html
from lumi.compare.report import verdict_line, write_report
from lumi.compare.results import collect_results
from lumi.compare.spec import spec_from_dict

FINAL = {"base": {0: 2.00, 1: 2.10, 2: 2.05}, "idea": {0: 1.97, 1: 2.08, 2: None}}  # None: crashed
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'  # must come out as text, never as markup
ENV = {"python": "3.12.1", "torch": "2.13.0+cpu", "cpus": 2, "host": "ci-box"}


def write_run(run_dir: Path, seed: int, final: float | None, fpt: float) -> None:
    """A run directory as `lumi train` leaves it: metrics.jsonl (train rows, periodic evals, final eval),
    summary.json with the causality audit, and its config."""
    run_dir.mkdir(parents=True)
    rows = []
    for step in range(10, 101, 10):
        rows.append({"kind": "train", "step": step, "tokens": step * 64, "flops": step * 64 * fpt,
                     "elapsed_s": step / 10, "loss": 4.0 - step / 50 + seed * 0.01})
        if step % 20 == 0:
            val = (final or 2.5) + (100 - step) / 100
            rows.append({"kind": "eval", "step": step, "tokens": step * 64, "flops": step * 64 * fpt,
                         "elapsed_s": step / 10, "val_bpb": val, "val_loss": val * 0.7, "final": False})
    if final is not None:
        rows.append({"kind": "eval", "step": 100, "tokens": 6400, "val_bpb": final, "final": True})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    audit = {"passed": True, "detail": "no leak in 448 probes of the trained weights at T=32", "seconds": 0.4,
             "lengths": [32], "weights": ["trained"], "probes": 448}
    summary = {"model": "llama", "preset": "nano", "params": 1000, "non_embedding_params": 500,
               "active_params": 1000, "flops_per_token": fpt, "seq_len": 32, "steps": 100, "tokens": 6400,
               "flops": 6400 * fpt, "wall_s": 12.0 + seed, "train_s": 10.0, "tok_per_s": 640.0,
               "final_val_bpb": final, "status": "completed" if final is not None else "failed",
               "final_val_protocol": {"split": "val", "subset": "full split", "seq_len": 32, "stride": 32},
               "causality_audit": audit if final is not None else None,
               "error": None if final is not None else "RuntimeError: boom at step 60"}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def build_comparison(comp_dir: Path) -> dict[str, Any]:
    spec = spec_from_dict({"name": "synthetic", "arms": [{"model": "llama:nano", "label": "base"},
                                                         {"model": "llama:nano+mlp=relu2", "label": "idea"}],
                           "seeds": 3, "budget": "100steps",
                           "data": {"corpus": "files:x.txt", "tokenizer": "bytes"}}, "synthetic")
    for arm in spec.arms:
        for seed, final in FINAL[arm.label].items():
            write_run(comp_dir / "runs" / arm.dirname / f"seed-{seed}", seed, final,
                      fpt=3000.0 if arm.label == "base" else 2400.0)
    (comp_dir / "configs").mkdir()
    (comp_dir / "configs" / "idea.yaml").write_text("model: {name: llama, mlp: relu2}\ntrain: {seq_len: 32}\n")
    (comp_dir / "compare.yaml").write_text("name: synthetic\nbudget: 100steps\n")
    checks = {label: {"passed": True, "results": [
        {"name": "causality_perturbation", "passed": True, "detail": "max |Δ logits| 0 at T=32", "value": 0.0},
        {"name": "flops", "passed": True, "detail": f"estimate within 1% {HOSTILE}", "value": 0.004}]}
        for label in FINAL}
    plans = {"base": {"budget": "100steps", "steps": 100, "tokens": 6400},
             "idea": {"budget": "100steps", "steps": 100, "tokens": 6400}}
    results = collect_results(spec, comp_dir, checks=checks, plans=plans, env=ENV, notes=[HOSTILE])
    results["spec"] = spec.to_dict()
    # What `lumi compare --tune lr --seeds auto --eval ...` adds (see docs/compare.md).
    results["seeds_rule"] = {"max_seeds": 6, "min_seeds": 3, "alpha": 0.05, "method": "t-mixture", "tau2": 25.0,
                             "stopped_after": 3, "stop_reason": "every arm decided",
                             "rounds": [{"seeds": 3, "decisions": {"idea": "undecided"}}]}
    results["tuning"] = {"param": "lr", "grid": [1e-3, 3e-3, 1e-2], "seed": 0, "fraction": 0.5,
                         "split": {"bytes": {"cut_token": 9000, "parent_train_tokens": 10000, "fraction": 0.1}},
                         "arms": {label: {"chosen": 3e-3, "chosen_tune_bpb": 2.2, "notes": [],
                                          "cost": {"runs": 3, "tokens": 9600, "seconds": 4.5},
                                          "points": [{"value": v, "tune_bpb": b, "status": "completed", "steps": 50,
                                                      "tokens": 3200, "wall_s": 1.5}
                                                     for v, b in ((1e-3, 2.3), (3e-3, 2.2), (1e-2, 2.4))]}
                                  for label in FINAL}}
    for arm in results["arms"]:
        vs = None if arm["is_baseline"] else {"n": 2, "mean_diff": -0.01, "ci_low": -0.05, "ci_high": 0.03,
                                               "p_ttest": 0.3, "verdict": "no clear difference"}
        arm["evals"] = {"milton": {"summary": {"mean": 2.4, "std": 0.01, "n": 2}, "lower_is_better": True,
                                   "chance": None, "vs_baseline": vs}}
        for r in arm["runs"]:
            r["evals"] = {"milton": 2.4 if r["usable"] else None}
    return results


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables_of(page: str) -> dict[str, list[list[str]]]:
    """header row joined with '|' -> the table's rows (header excluded)."""
    parser = Tables()
    parser.feed(page)
    return {"|".join(t[0]): t[1:] for t in parser.tables if t}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict[str, Any], dict[str, Path]]:
    comp_dir = tmp_path_factory.mktemp("cmp")
    results = build_comparison(comp_dir)
    return comp_dir, results, write_report(results, comp_dir)


def test_report_html_content(report):
    comp_dir, results, files = report
    assert files["report.html"] == comp_dir / "report.html"
    page = files["report.html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # The verdict line, exactly as report.md and the terminal say it.
    idea = results["arms"][1]
    head, _, rest = verdict_line(idea, "base").partition(" — ")
    assert f"<b>{escape(head)}</b>" in page and escape(rest) in page
    assert "EXCLUDED from the pairing: seed 2 failed" in page
    tables = tables_of(page)
    main_rows = tables["|".join(RESULTS_HEADER)]
    assert [r[0] for r in main_rows] == ["base", "idea"]
    assert main_rows[0][8] == "2.0500 ± 0.0500" and main_rows[0][9] == "baseline"
    assert main_rows[1][9].startswith("-0.0250 [") and main_rows[1][11] == "2/2"
    # Every seed of every arm, the crashed one too, with its audit result.
    seeds = next(rows for header, rows in tables.items() if header.startswith("arm|seed|status|val BPB|Δ|milton"))
    assert [(r[0], r[1], r[2]) for r in seeds] == [
        ("base", "0", "completed"), ("base", "1", "completed"), ("base", "2", "completed"),
        ("idea", "0", "completed"), ("idea", "1", "completed"), ("idea", "2", "failed")]
    assert seeds[3][3:5] == ["1.9700", "-0.0300"] and seeds[0][-2] == "passed" and seeds[5][-2] == "–"
    audit = tables["arm|seed|audit|lengths|probes|time|detail"]
    assert audit[0][:5] == ["base", "0", "passed", "32", "448"] and audit[5][2] == "not run"
    assert ["seeds", "idea"] in [list(h.split("|")) for h in tables]  # adaptive-seed rounds
    tuning = tables["arm|value|tuning-split BPB|status|steps|tokens|wall|chosen"]
    assert len(tuning) == 6 and tuning[1][:3] == ["base", "0.003", "2.2000"] and tuning[1][-1] == "✓"
    evals = next(rows for header, rows in tables.items() if header.startswith("metric|arm|mean over seeds"))
    assert evals[0][:3] == ["milton (lower is better)", "base", "2.4000 ± 0.0100"]
    checks = tables["check|result|value|detail"]
    assert checks[0][:2] == ["causality_perturbation", "pass"]
    # Collapsible exact configs and environment.
    summaries = re.findall(r"<summary>(.*?)</summary>", page)
    for needed in ("Spec (as requested", "compare.yaml", "Per-arm plans", "configs/idea.yaml", "Environment"):
        assert any(s.startswith(escape(needed)) for s in summaries), (needed, summaries)
    spec_block = page.split("<summary>Spec (as requested", 1)[1].split("</details>", 1)[0]
    assert "name: synthetic" in spec_block and "budget: 100steps" in spec_block
    env_block = page.split("<summary>Environment</summary>", 1)[1].split("</details>", 1)[0]
    assert "torch: 2.13.0+cpu" in env_block and "host: ci-box" in env_block
    # Escaped text everywhere: the hostile note and check detail are shown, never executed.
    assert HOSTILE not in page and escape(HOSTILE) in page
    # Interactive curves: validation, training loss, tuning.
    for div in ("curve-val", "curve-train", "curve-tuning"):
        assert f'id="{div}"' in page
    assert page.count("Plotly.newPlot(") == 3


def test_report_html_is_offline_and_small(report):
    import plotly.offline

    _, _, files = report
    page = files["report.html"].read_text(encoding="utf-8")
    # No external resources: no <script src>, no stylesheet links, no remote images.
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b[^>]*\bhref\s*=", page, re.I)
    assert not re.search(r"<img\b[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, re.I)
    assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", page.split("<script", 1)[0], re.I)
    # plotly.js exactly once (the figures only call it), and everything else is small: the
    # bound is the bundle (~4.8 MB with plotly 7) plus 300 kB for this comparison's tables and curves.
    plotly_js = plotly.offline.get_plotlyjs()
    assert page.count(plotly_js[:200]) == 1
    size = files["report.html"].stat().st_size
    assert size < len(plotly_js.encode()) + 300_000, size
    assert size < 6_000_000, size


def test_report_html_without_plotly(report, monkeypatch):
    comp_dir, results, _ = report
    for name in ("plotly", "plotly.offline", "plotly.graph_objects"):
        monkeypatch.setitem(sys.modules, name, None)  # `import plotly` now raises ImportError
    page = render_html(results, comp_dir)
    assert escape(REPORT_EXTRA) in page and "Plotly.newPlot" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 3  # the static PNGs, embedded
    assert len(page) < 500_000
    assert "idea vs base: no clear difference" in page


def test_write_report_survives_a_broken_html_renderer(tmp_path, monkeypatch, capsys):
    import lumi.compare.html

    results = build_comparison(tmp_path)

    def broken(*_: Any) -> str:
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(lumi.compare.html, "render_html", broken)
    files = write_report(results, tmp_path, make_plots=False)
    assert "report.html" not in files and not (tmp_path / "report.html").exists()
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.json").is_file()
    assert "report.html not written: RuntimeError: renderer exploded" in capsys.readouterr().err


def test_lumi_report_rebuilds_the_same_pages(report, capsys):
    comp_dir, _, _ = report
    before = {name: (comp_dir / name).read_text(encoding="utf-8") for name in ("report.md", "report.html")}
    for name in before:
        (comp_dir / name).unlink()
    assert main(["report", str(comp_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"]["report.html"] == str(comp_dir / "report.html")
    assert out["files"]["report"] == str(comp_dir / "report.md") and "bpb_vs_tokens.png" in out["files"]
    for name, text in before.items():
        assert (comp_dir / name).read_text(encoding="utf-8") == text, name  # deterministic, from results.json
    assert main(["report", str(comp_dir), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert f"html:    {comp_dir / 'report.html'} (" in printed and "MB, opens offline)" in printed


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("empty", "has no results.json: not a comparison directory"),
        ("bad-json", "is not valid JSON (line 1"),
        ("run-eval", "is not a comparison's results.json"),
    ],
)
def test_lumi_report_bad_input(tmp_path, capsys, setup, message):
    target = tmp_path / "target"
    if setup == "file":
        target.write_text("x")
    elif setup != "missing":
        target.mkdir()
    if setup == "bad-json":
        (target / "results.json").write_text('{"arms": [')
    elif setup == "run-eval":  # `lumi eval` writes RUN/eval/results.json: not a comparison
        (target / "results.json").write_text(json.dumps({"run": "runs/x", "val_bpb": 2.1, "corpora": []}))
    assert main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("lumi report: error: ") and message in err and "\n" not in err, err
    assert not (target / "report.html").exists() if target.is_dir() else True


# -- a real browser -----------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless Chromium installed ({', '.join(BROWSERS)} not on PATH); .ci/run installs it "
                "with `apt-get install -y chromium`")


def run_browser(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
           "--window-size=1280,2400", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
           *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def console_errors(stderr: str) -> list[str]:
    """Console messages of the page (Chromium logs them as ':CONSOLE' lines) that are errors."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and re.search(r"Uncaught|[Ee]rror", line)]


def test_browser_renders_the_page_without_errors(report, tmp_path):
    import numpy as np
    from PIL import Image

    _, _, files = report
    shot = tmp_path / "shot.png"
    proc = run_browser(files["report.html"], tmp_path / "profile", f"--screenshot={shot}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 2400)
        colors = rgb.getcolors(maxcolors=1 << 20) or []
        # A blank or unstyled page has a handful of colours; text, tables and two plotly charts with
        # anti-aliased lines in several arm colours have hundreds.
        assert len(colors) > 200, len(colors)
        # The curves are drawn: the arms' line colours (tab10 blue, orange) cover a real area.
        pixels = np.asarray(rgb)
        for color in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
            assert int((pixels == color).all(axis=-1).sum()) > 200, color


def test_browser_dom_has_the_table_and_rendered_plots(report, tmp_path):
    _, results, files = report
    proc = run_browser(files["report.html"], tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    dom = proc.stdout
    # plotly ran: each figure div became a plot with its SVG, one legend entry per trace.
    for div in ("curve-val", "curve-train", "curve-tuning"):
        tag = re.search(rf'<div[^>]*\bid="{div}"[^>]*>', dom)
        assert tag and "js-plotly-plot" in tag.group(0), div
        block = dom[tag.end():].split('id="curve-', 1)[0]
        assert 'class="main-svg"' in block, div
    legend = re.findall(r'class="legendtext"[^>]*>([^<]*)<', dom)
    assert "base (baseline) mean of 3 seeds" in legend and "idea seed 2" in legend, legend
    tables = tables_of(dom)
    assert [r[0] for r in tables["|".join(RESULTS_HEADER)]] == [a["label"] for a in results["arms"]]

"""Extra evaluations in a comparison (`--eval corpus:milton,tasks:piqa`): per seed, paired like the BPB.

Every completed run is scored by `lumi eval` (lumi.cli.eval.evaluate_run) after training; its
RUN/eval/results.json is reused while the request is the same. Each requested number becomes a metric
with a direction (BPB: lower is better; task accuracy: higher is better) and, for tasks, a chance level.
The report shows per-arm means and the paired difference to the baseline over the seeds both have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumi.errors import LumiError

EVAL_FORMS = "corpus:SPEC and tasks:TASK[+TASK...], comma-separated (e.g. corpus:milton,tasks:piqa+arc_easy)"


@dataclass(frozen=True)
class Metric:
    name: str  # "milton BPB", "piqa acc_norm"
    key: tuple[str, ...]  # where it lives in RUN/eval/results.json
    lower_is_better: bool
    chance: float | None = None


def eval_section(value: Any, where: str) -> dict[str, Any] | None:
    """A spec's ``eval:`` ({corpora: [...], tasks: [...], tasks_dir, limit}) or the --eval string, normalised."""
    if value in (None, "", False):
        return None
    if isinstance(value, str):
        value = parse_eval_items(value)
    if not isinstance(value, dict):
        raise LumiError(f"{where}: eval must be a mapping {{corpora: [...], tasks: [...]}} or {EVAL_FORMS}")
    unknown = set(value) - {"corpora", "tasks", "tasks_dir", "limit"}
    if unknown:
        raise LumiError(
            f"{where}: unknown eval key(s) {', '.join(sorted(unknown))}; keys: corpora, tasks, tasks_dir, limit"
        )
    corpora = [str(c) for c in value.get("corpora") or []]
    tasks = [str(t) for t in value.get("tasks") or []]
    if not corpora and not tasks:
        return None
    limit = value.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise LumiError(f"{where}: eval.limit must be a whole number >= 1, got {limit!r}")
    tasks_dir = value.get("tasks_dir")
    if tasks:
        from lumi.evals.tasks import TASKS

        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise LumiError(f"{where}: unknown task(s) {', '.join(bad)}; tasks: {', '.join(TASKS)}")
    return {
        "corpora": corpora,
        "tasks": tasks,
        "tasks_dir": str(Path(tasks_dir).expanduser().resolve()) if tasks_dir else None,
        "limit": limit,
    }


def parse_eval_items(text: str) -> dict[str, Any]:
    out: dict[str, list[str]] = {"corpora": [], "tasks": []}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        kind, colon, value = item.partition(":")
        if not colon or not value:
            raise LumiError(f"--eval item {item!r}: expected {EVAL_FORMS}")
        if kind == "corpus":
            out["corpora"].append(value)
        elif kind in ("task", "tasks"):
            out["tasks"] += [t for t in value.split("+") if t]
        else:
            raise LumiError(f"--eval item {item!r}: unknown kind {kind!r}; expected {EVAL_FORMS}")
    return out


def metrics_of(section: dict[str, Any]) -> list[Metric]:
    from lumi.evals.tasks import TASKS

    out = [Metric(f"{c} BPB", ("corpora", c, "bpb"), True) for c in section["corpora"]]
    for t in section["tasks"]:
        info = TASKS[t]
        for m in info.metrics:
            out.append(Metric(f"{t} {m}", ("tasks", "results", t, f"{m},none"), False, info.chance))
    return out


def metric_values(results: dict[str, Any] | None, metrics: list[Metric]) -> dict[str, float | None]:
    """Each metric's value in one run's eval results (None where absent)."""
    out: dict[str, float | None] = {}
    for m in metrics:
        node: Any = results or {}
        for part in m.key:
            if part == m.key[1] and m.key[0] == "corpora" and isinstance(node, list):
                node = next((c for c in node if c.get("corpus") == part), None)
            elif isinstance(node, dict):
                node = node.get(part)
            else:
                node = None
            if node is None:
                break
        out[m.name] = float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None
    return out


def run_evals(
    section: dict[str, Any], jobs: list[tuple[Path, list[str]]], log: Callable[[str], None]
) -> None:
    """Score every completed run (run dir, its plugin files) that lacks results for this request."""
    from lumi.cli.eval import EvalOptions, evaluate_run
    from lumi.run import Run

    request = request_of(section)
    todo = []
    for run_dir, files in jobs:
        run = Run(run_dir)
        if run.status() != "completed":
            continue
        previous = run.eval_results()
        if previous is not None and previous.get("request") == request:
            continue
        todo.append((run_dir, files))
    if todo:
        log(f"evaluating {len(todo)} run(s): {', '.join(request['corpora'] + request['tasks'])} ...")
    for run_dir, files in todo:
        tasks_dir = Path(section["tasks_dir"]) if section["tasks_dir"] else None
        options = EvalOptions(
            corpora=section["corpora"], tasks=section["tasks"], tasks_dir=tasks_dir, limit=section["limit"]
        )
        evaluate_run(run_dir, options, files, request)


def request_of(section: dict[str, Any]) -> dict[str, Any]:
    return {k: section[k] for k in ("corpora", "tasks", "tasks_dir", "limit")}

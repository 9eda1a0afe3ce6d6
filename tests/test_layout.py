"""The code's layout keeps its promises: one owner of the run-directory format, no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lumi"

RUN_FILES = {"config.yaml", "summary.json", "metrics.jsonl", "env.json", "checkpoints", "state.json",
             "model_config.json", "model.safetensors", "optimizer.pt"}
# lumi/run.py owns the run directory; train/checkpoint.py the files inside a checkpoint. bltpatch reads
# a patcher's weights from any checkpoint or export directory (not a run's records) and sits below both.
OWNERS = {"run.py", "train/checkpoint.py", "models/bltpatch.py"}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_only_the_run_module_names_run_directory_files():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in OWNERS:
            continue
        offenders += [f"{rel}:{line} {value!r}" for line, value in _string_constants(path) if value in RUN_FILES]
    assert not offenders, "read run directories through lumi.run.Run:\n" + "\n".join(offenders)


def test_models_never_import_the_layers_above_them():
    above = ("lumi.train", "lumi.compare", "lumi.cli", "lumi.run", "lumi.check", "lumi.export", "lumi.evals")
    offenders = []
    for path in sorted((SRC / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(above)]
    assert not offenders, offenders

"""The zero-shot task suite: lm-eval's own task definitions, scored with ``LumiLM``.

    result = run_tasks(model, tokenizer, ["piqa", "hellaswag"], tasks_dir=Path("tasks/"))
    result["results"]["piqa"]["acc,none"], result["chance"]["piqa"]

Each task is built by lm-eval's TaskManager from the YAML that ships with lm-eval (prompt, choices,
target, metrics unchanged). Without ``tasks_dir`` the data comes from the Hugging Face hub, as lm-eval
fetches it; with ``tasks_dir`` only the data source changes: ``<tasks_dir>/<task>.jsonl`` holds the
split lm-eval evaluates, one item per line in the dataset's own schema (``TASKS[name].schema``), and every
line is checked before lm-eval sees it. The formats, chance levels and protocol: docs/eval.md.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lumi.data.tokenizers import Tokenizer
from lumi.errors import LumiError, closest
from lumi.io import json_safe, read_jsonl


@dataclass(frozen=True)
class TaskSpec:
    """What Lumi needs to know about one lm-eval task beyond its YAML."""

    name: str
    lm_eval_dir: str  # the folder under lm_eval/tasks/ that holds its YAML
    chance: float  # the expected score of a model that guesses (on "acc")
    chance_note: str
    metrics: tuple[str, ...]  # the metrics to show, in lm-eval's names
    schema: str  # one line per item of the local file, as in the dataset


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "hellaswag",
            "hellaswag",
            0.25,
            "4 endings",
            ("acc", "acc_norm"),
            '{"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": [str, ...], '
            '"label": "0".."3" (index of the right ending)}',
        ),
        TaskSpec(
            "piqa",
            "piqa",
            0.5,
            "2 solutions",
            ("acc", "acc_norm"),
            '{"goal": str, "sol1": str, "sol2": str, "label": 0 or 1}',
        ),
        *(
            TaskSpec(
                name,
                "arc",
                0.25,
                "4 choices for most questions; a few have 3 or 5, so exact chance is the mean of 1/n",
                ("acc", "acc_norm"),
                '{"question": str, "choices": {"text": [str, ...], "label": [str, ...]}, '
                '"answerKey": one of choices.label}',
            )
            for name in ("arc_easy", "arc_challenge")
        ),
        TaskSpec(
            "winogrande",
            "winogrande",
            0.5,
            "2 options",
            ("acc",),
            '{"sentence": str with one "_" blank, "option1": str, "option2": str, "answer": "1" or "2"}',
        ),
        TaskSpec(
            "lambada_openai",
            "lambada",
            0.0,
            "acc: the exact last word must be the greedy continuation; perplexity has no chance level",
            ("acc", "perplexity"),
            '{"text": str (a passage; its last space-separated word is the target)}',
        ),
    )
}
SUPPORTED: tuple[str, ...] = tuple(TASKS)
MIN_LM_EVAL = "0.4.13"  # the release this module is written and tested against


# -- task names ------------------------------------------------------------------------------------
def parse_task_names(names: str | Sequence[str]) -> list[str]:
    """Task names from a list or a comma-separated string ("piqa,hellaswag"), duplicates dropped;
    LumiError for an empty list or an unknown name."""
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen: list[str] = []
    for raw in items:
        name = str(raw).strip()
        if not name:
            continue
        if name not in TASKS:
            raise LumiError(
                f"unknown task {name!r}{closest(name, SUPPORTED)}; supported: {', '.join(SUPPORTED)}"
            )
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise LumiError(f"no task given; supported: {', '.join(SUPPORTED)}")
    return chosen


# -- loading ---------------------------------------------------------------------------------------
def load_tasks(names: str | Sequence[str], tasks_dir: Path | str | None = None) -> dict[str, Any]:
    """{name: lm-eval Task} built from lm-eval's own task configs.

    With ``tasks_dir`` each task reads ``<tasks_dir>/<name>.jsonl`` (validated line by line first) instead
    of the Hugging Face hub; everything else in the task definition stays as lm-eval ships it."""
    chosen = parse_task_names(names)
    manager = task_manager()
    tasks: dict[str, Any] = {}
    for name in chosen:
        if tasks_dir is None:
            tasks[name] = _load_from_hub(manager, name)
        else:
            tasks[name] = _load_from_file(manager, name, Path(tasks_dir))
    return tasks


@functools.lru_cache(maxsize=1)
def task_manager() -> Any:
    """lm-eval's TaskManager over the folders of the supported tasks only (indexing all of lm-eval's thousands
    of tasks takes ~10 s; the whole index if lm-eval's layout differs). Pass it on to
    ``lm_eval.simple_evaluate(task_manager=...)`` when calling lm-eval directly."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    if not hasattr(TaskManager, "load"):  # the task API this module uses (TaskManager.load, task_index)
        raise LumiError(
            f"zero-shot tasks need lm-eval >= {MIN_LM_EVAL} (found {_lm_eval_version()}): "
            f"pip install -U 'lm-eval>={MIN_LM_EVAL}'"
        )

    root = Path(lm_eval.tasks.__file__).parent
    folders = sorted({root / spec.lm_eval_dir for spec in TASKS.values()})
    if all(folder.is_dir() for folder in folders):
        manager = TaskManager(include_defaults=False, include_path=[str(f) for f in folders])
        if all(name in manager.all_tasks for name in SUPPORTED):
            return manager
    return TaskManager()


def _load_from_hub(manager: Any, name: str) -> Any:
    try:
        return manager.load([name])["tasks"][name]
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise LumiError(
            f"could not load task {name!r} from the Hugging Face hub ({type(e).__name__}: {first}); "
            f"without internet access give --tasks-dir DIR with {name}.jsonl in it (docs/eval.md)"
        ) from None


def _load_from_file(manager: Any, name: str, tasks_dir: Path) -> Any:
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:
        raise LumiError(
            f"--tasks-dir needs lm-eval >= {MIN_LM_EVAL} (found {_lm_eval_version()}): "
            f"pip install -U 'lm-eval>={MIN_LM_EVAL}'"
        ) from None

    path = tasks_dir / f"{name}.jsonl"
    items = read_task_file(name, path)
    entry = manager.task_index[name]
    config = load_yaml(entry.yaml_path, resolve_func=True)  # the YAML with its includes and functions
    split = config.get("test_split") or config.get("validation_split")
    config.update(
        task=name,
        dataset_path=str(path),
        dataset_name=None,
        dataset_kwargs=None,
        custom_dataset=functools.partial(_dataset_dict, split, items),
        training_split=None,  # zero-shot: the evaluated split is all there is
        validation_split=split if split == config.get("validation_split") else None,
        test_split=split if split == config.get("test_split") else None,
    )
    task_logger = logging.getLogger("lm_eval.api.task")
    task_logger.addFilter(_no_metadata_hint)
    try:
        return manager.load([config])["tasks"][name]
    finally:
        task_logger.removeFilter(_no_metadata_hint)


def _no_metadata_hint(record: logging.LogRecord) -> bool:
    """Drop lm-eval's hint about passing ``--metadata`` to a ``custom_dataset`` (it needs none here)."""
    return "Custom kwargs can be passed" not in record.getMessage()


def _dataset_dict(split: str, items: list[dict[str, Any]], **_: Any) -> Any:
    """lm-eval's ``custom_dataset`` hook: the validated items as the task's evaluation split."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(items)})


# -- local files -----------------------------------------------------------------------------------
class _BadItem(Exception):
    """One problem with one item (the message names the field)."""


def read_task_file(name: str, path: Path) -> list[dict[str, Any]]:
    """The items of a local task file, each checked against the task's schema; LumiError naming the file,
    the line and the field otherwise. Blank lines are skipped. Items keep only the fields the task reads."""
    spec = TASKS[name]
    if not path.is_file():
        raise LumiError(
            f"task file {path} does not exist: --tasks-dir must hold {name}.jsonl, one item per line: "
            f"{spec.schema}"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LumiError(f"cannot read task file {path}: {e}") from None
    items = []
    for number, item in read_jsonl(path, "\n".join(lines), f"expected {spec.schema}"):
        try:
            if not isinstance(item, dict):
                raise _BadItem(f"expected a JSON object, got {_kind(item)}")
            items.append(_CHECKS[name](item))
        except _BadItem as e:
            raise LumiError(f"{path}, line {number}: {e}; a {name} item is {spec.schema}") from None
    if not items:
        raise LumiError(f"task file {path} has no items; expected one per line: {spec.schema}")
    return items


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    return "a list" if isinstance(value, list) else "an object"


def _field(item: dict[str, Any], field: str) -> Any:
    if field not in item:
        raise _BadItem(f"field {field!r} is missing")
    return item[field]


def _text(item: dict[str, Any], field: str, allow_empty: bool = False) -> str:
    value = _field(item, field)
    if not isinstance(value, str):
        raise _BadItem(f"field {field!r} must be a string, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise _BadItem(f"field {field!r} is empty")
    return value


def _texts(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _BadItem(f"field {field!r} must be a list of non-empty strings, got {_kind(value)}")
    if len(value) < 2:
        raise _BadItem(f"field {field!r} must have at least 2 entries, got {len(value)}")
    return list(value)


def _check_hellaswag(item: dict[str, Any]) -> dict[str, Any]:
    endings = _texts(_field(item, "endings"), "endings")
    label = _field(item, "label")
    index = label if isinstance(label, int) and not isinstance(label, bool) else None
    if isinstance(label, str) and label.strip().isdigit():
        index = int(label)
    if index is None or not 0 <= index < len(endings):
        raise _BadItem(
            f"field 'label' must be the index of the right ending, 0..{len(endings) - 1}, got {_kind(label)}"
        )
    return {
        "activity_label": _text(item, "activity_label"),
        "ctx_a": _text(item, "ctx_a"),
        "ctx_b": _text(item, "ctx_b", allow_empty=True),  # often empty in the dataset
        "endings": endings,
        "label": str(index),  # a string in the dataset; lm-eval reads int(label)
    }


def _check_piqa(item: dict[str, Any]) -> dict[str, Any]:
    label = _field(item, "label")
    if isinstance(label, bool) or label not in (0, 1):
        raise _BadItem(f"field 'label' must be 0 (sol1) or 1 (sol2), got {_kind(label)}")
    return {
        "goal": _text(item, "goal"),
        "sol1": _text(item, "sol1"),
        "sol2": _text(item, "sol2"),
        "label": label,
    }


def _check_arc(item: dict[str, Any]) -> dict[str, Any]:
    choices = _field(item, "choices")
    if not isinstance(choices, dict):
        raise _BadItem(
            f"field 'choices' must be an object with 'text' and 'label' lists, got {_kind(choices)}"
        )
    for key in ("text", "label"):
        if key not in choices:
            raise _BadItem(f"field 'choices.{key}' is missing")
    text = _texts(choices["text"], "choices.text")
    labels = _texts(choices["label"], "choices.label")
    if len(text) != len(labels):
        raise _BadItem(f"'choices.text' has {len(text)} entries but 'choices.label' has {len(labels)}")
    answer = _field(item, "answerKey")
    if answer not in labels:
        raise _BadItem(f"field 'answerKey' must be one of {labels}, got {_kind(answer)}")
    return {
        "question": _text(item, "question"),
        "choices": {"text": text, "label": labels},
        "answerKey": answer,
    }


def _check_winogrande(item: dict[str, Any]) -> dict[str, Any]:
    sentence = _text(item, "sentence")
    if "_" not in sentence:
        raise _BadItem("field 'sentence' has no '_' blank for the options")
    if not sentence[sentence.index("_") + 1 :].strip():
        raise _BadItem("field 'sentence' has nothing after its '_' blank (that text is what gets scored)")
    answer = _field(item, "answer")
    if answer not in ("1", "2"):
        raise _BadItem(f'field \'answer\' must be the string "1" or "2", got {_kind(answer)}')
    return {
        "sentence": sentence,
        "option1": _text(item, "option1"),
        "option2": _text(item, "option2"),
        "answer": answer,
    }


def _check_lambada(item: dict[str, Any]) -> dict[str, Any]:
    text = _text(item, "text")
    words = text.split(" ")
    if len(words) < 2 or not words[-1] or not " ".join(words[:-1]).strip():
        raise _BadItem(
            "field 'text' must be a passage of several words ending in its target word (no trailing space)"
        )
    return {"text": text}


_CHECKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hellaswag": _check_hellaswag,
    "piqa": _check_piqa,
    "arc_easy": _check_arc,
    "arc_challenge": _check_arc,
    "winogrande": _check_winogrande,
    "lambada_openai": _check_lambada,
}


# -- running ---------------------------------------------------------------------------------------
def run_tasks(
    model: nn.Module,
    tokenizer: Tokenizer,
    names: str | Sequence[str],
    tasks_dir: Path | str | None = None,
    limit: int | float | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int | None = None,
    bootstrap_iters: int = 1000,
) -> dict[str, Any]:
    """Zero-shot scores of ``model`` on the named tasks, through ``lm_eval.evaluator.evaluate``.

    Returns (JSON-serialisable) {"results": {task: {"acc,none", "acc_stderr,none", ...}}, "metrics":
    {task: metrics to show}, "chance": {task: level}, "chance_note", "n_samples": {task: items scored},
    "items", "seconds", "items_per_s", "protocol"}. ``limit``: the first N items of each task (a float
    below 1: that fraction). ``bootstrap_iters`` only affects lambada's perplexity_stderr (acc stderrs
    are closed-form)."""
    from lm_eval import evaluator

    from lumi.evals.harness import LumiLM

    if limit is not None and limit <= 0:
        raise LumiError(f"--limit must be > 0, got {limit}")
    chosen = parse_task_names(names)
    tasks = load_tasks(chosen, tasks_dir)
    lm = LumiLM(model, tokenizer, device=device, batch_size=batch_size, max_length=max_length)
    for task in tasks.values():  # what simple_evaluate does for a task without a num_fewshot of its own
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)
    start = time.perf_counter()
    out = evaluator.evaluate(
        lm=lm,
        task_dict={"tasks": tasks, "groups": {}, "group_map": {}},
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
    )
    seconds = time.perf_counter() - start
    n_samples = {name: int(out["n-samples"][name]["effective"]) for name in chosen}
    items = sum(n_samples.values())
    results = {  # lm-eval's "metric,filter" keys only (not alias, name, sample_len)
        name: {key: value for key, value in out["results"][name].items() if "," in key} for name in chosen
    }
    return json_safe(
        {
            "results": results,
            "metrics": {name: list(TASKS[name].metrics) for name in chosen},
            "chance": {name: TASKS[name].chance for name in chosen},
            "chance_note": {name: TASKS[name].chance_note for name in chosen},
            "n_samples": n_samples,
            "items": items,
            "seconds": seconds,
            "items_per_s": items / seconds if seconds > 0 else None,
            "protocol": {
                "shots": 0,
                "scoring": "log-likelihood of each choice given the context ([separator] + context); "
                "acc = argmax, acc_norm = argmax of log-likelihood / characters of the choice",
                "data": str(tasks_dir) if tasks_dir is not None else "Hugging Face hub",
                "max_length": lm.max_length,
                "batch_size": batch_size,
                "lm_eval": _lm_eval_version(),
            },
        }
    )


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover - installed under another distribution name
        return "unknown"

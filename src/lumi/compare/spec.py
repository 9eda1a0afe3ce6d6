"""What a comparison is: arms, seeds, a budget, what is matched, shared data and training settings.

A spec comes from a YAML file, the command line, or ``DEFAULT_COMPARISON`` (the main job), and is
validated here with messages that name the file and the field.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumi.compare.arms import Arm, arm_from_mapping, parse_arm
from lumi.compare.evals import eval_section
from lumi.compare.launchers import LauncherSettings, launcher_section
from lumi.errors import LumiError, closest
from lumi.train.config import Budget, parse_budget

MATCHES = ("tokens", "flops", "time")
DEFAULT_THRESHOLD = 0.005
SPEC_KEYS = (
    "name",
    "arms",
    "baseline",
    "seeds",
    "budget",
    "match",
    "threshold",
    "jobs",
    "data",
    "train",
    "optim",
    "allow_leaky",
    "tune",
    "eval",
    "launcher",
    "bench",
)
DATA_KEYS = ("corpus", "tokenizer", "dir")

FALLBACK_BUDGET = "160steps"  # a YAML spec without budget:

# The main job (`lumi compare` with no arguments): the LUMI-Arch claim at CPU size. multiscale:micro has
# exactly llama:micro's parameter count (2,098,304 at vocab 4096), so matching tokens also matches
# parameters; its FLOPs/token differ and are printed. Sized for about 5 minutes on 2 CPU cores: short runs
# and adaptive seeds (3, then one more per round up to 6, stopping once the anytime-valid interval decides),
# because 2 seeds of longer runs give an interval too wide to decide anything.
DEFAULT_COMPARISON: dict[str, Any] = {
    "name": "default",
    "arms": [
        {"model": "llama:micro", "label": "llama"},
        {"model": "multiscale:micro", "label": "multiscale"},
    ],
    "seeds": "auto:6",
    "budget": "100steps",
    "match": "tokens",
    "threshold": DEFAULT_THRESHOLD,
    "jobs": 2,
    "data": {"corpus": "shakespeare", "tokenizer": "bpe:4096"},
    "train": {
        "seq_len": 128,
        "batch_size": 16,
        "eval_every_steps": 25,
        "eval_every_s": None,
        "eval_tokens": 16384,
        "checkpoint_every_s": 30,
    },
    "optim": {},  # Lumi's default recipe (lumi.train.config.OptimSection), the same for both arms
}


@dataclass
class CompareSpec:
    name: str
    arms: list[Arm]
    baseline: str
    seeds: list[int]
    budget: Budget
    match: str = "tokens"
    threshold: float = DEFAULT_THRESHOLD
    jobs: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(
        default_factory=dict
    )  # shared by every arm (seq_len, batch_size, evals ...)
    optim: dict[str, Any] = field(default_factory=dict)  # shared; an arm's own optim goes on top
    allow_leaky: bool = False
    seeds_max: int | None = None  # seeds: auto[:MAX]: one seed at a time up to this (lumi.compare.sequential)
    eval: dict[str, Any] | None = None  # extra per-seed evaluations (lumi.compare.evals)
    bench: bool = False  # inference speed per arm after training (lumi.compare.bench)
    tune: dict[str, Any] | None = (
        None  # {param: lr, grid: auto | [..], fraction}: per-arm sweep (lumi.compare.tune)
    )

    # Where the runs execute (lumi.compare.launchers); not part of to_dict(): it changes no result, so a
    # comparison started locally can be finished on a cluster and the other way round.
    launcher: LauncherSettings = field(default_factory=LauncherSettings)

    def arm(self, label: str) -> Arm:
        for a in self.arms:
            if a.label == label:
                return a
        raise KeyError(label)

    def tokenizer_of(self, arm: Arm) -> str:
        return arm.tokenizer or self.data["tokenizer"]

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "arms": [a.to_dict() for a in self.arms],
            "baseline": self.baseline,
            "seeds": list(self.seeds) if self.seeds_max is None else f"auto:{self.seeds_max}",
            "budget": self.budget.text,
            "match": self.match,
            "threshold": self.threshold,
            "jobs": self.jobs,
            "data": dict(self.data),
            "train": dict(self.train),
            "optim": dict(self.optim),
            "allow_leaky": self.allow_leaky,
        }
        if self.eval:
            d["eval"] = dict(self.eval)
        if self.bench:
            d["bench"] = True
        if self.tune:  # only when set: specs saved before tuning existed stay equal
            d["tune"] = {
                **self.tune,
                "grid": self.tune["grid"] if self.tune["grid"] == "auto" else list(self.tune["grid"]),
            }
        return d


def default_spec_dict() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_COMPARISON)


def load_spec_file(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LumiError(
            f"comparison spec {str(p)!r} does not exist (expected a YAML file with arms:, seeds:, budget:)"
        )
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LumiError(f"comparison spec {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise LumiError(f"comparison spec {str(p)!r} must hold a mapping with arms:, seeds:, budget: ...")
    return raw


def parse_seeds(value: Any) -> list[int]:
    """3 -> [0, 1, 2]; '0,5,7' or [0, 5, 7] -> that list (distinct, >= 0)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            n = int(value)
            if n < 1:
                raise LumiError(f"seeds must be >= 1 (a count) or a list of seeds, got {value!r}")
            return list(range(n))
        items = value.split(",") if isinstance(value, str) else list(value)
        seeds = [int(str(s).strip()) for s in items]
    except (TypeError, ValueError):
        raise LumiError(
            f"seeds must be a count (3 -> 0,1,2), a list of integers (0,5,7) or auto[:MAX] (add seeds "
            f"until the verdict is decided), got {value!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds):
        raise LumiError(f"seeds must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise LumiError(f"seeds must be distinct, got {value!r}")
    return seeds


def auto_name(arms: list[Arm]) -> str:
    """A directory name from the arms: llama-nano-vs-mla-nano (hashed when long)."""
    name = "-vs-".join(a.dirname for a in arms)
    if len(name) > 80:
        name = name[:60] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def spec_from_dict(
    raw: dict[str, Any], where: str, default_name: str | None = None, base_dir: str | Path | None = None
) -> CompareSpec:
    """Validate a spec mapping (YAML / command line / default); LumiError naming ``where`` and the field.

    Plugin ``files`` are made absolute here, relative to ``base_dir`` (the YAML file's folder) or the
    current directory, so a re-run from the same place finds the same comparison.
    """
    raw = dict(raw)
    for key in raw:
        if key not in SPEC_KEYS:
            raise LumiError(
                f"{where}: unknown key {key!r}{closest(str(key), list(SPEC_KEYS))}; "
                f"keys: {', '.join(SPEC_KEYS)}"
            )
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise LumiError(
            f"{where}: arms must be a non-empty list (the first is the baseline), e.g. "
            f"[llama:micro, llama:micro+mlp=relu2]"
        )
    arms: list[Arm] = []
    for i, item in enumerate(arms_raw):
        if isinstance(item, Arm):
            arms.append(copy.deepcopy(item))
        elif isinstance(item, dict):
            arms.append(arm_from_mapping(item, f"{where}: arms[{i}]"))
        elif isinstance(item, str):
            try:
                arms.append(parse_arm(item))
            except LumiError as e:
                raise LumiError(f"{where}: arms[{i}]: {e}") from None
        else:
            raise LumiError(
                f"{where}: arms[{i}] must be a string like llama:micro or a mapping with model:, got {item!r}"
            )
    labels = [a.label for a in arms]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise LumiError(
            f"{where}: every arm needs a unique label; {', '.join(map(repr, dupes))} appears more than "
            f"once (give one a label: relu2=llama:micro+mlp=relu2, or label: in YAML)"
        )
    dirs: dict[str, str] = {}
    for a in arms:
        if a.label in (".", "..") or a.dirname.strip(".") == "":
            raise LumiError(f"{where}: arm label {a.label!r} is not a usable directory name")
        other = dirs.setdefault(a.dirname.lower(), a.label)
        if other != a.label:
            raise LumiError(
                f"{where}: arms {other!r} and {a.label!r} would share the run directory "
                f"runs/{a.dirname} (':' becomes '-'; case is ignored); give one another label"
            )
    for a in arms:
        a.files = [str((Path(base_dir or ".") / Path(f).expanduser()).resolve()) for f in a.files]
    baseline = raw.get("baseline") or labels[0]
    if baseline not in labels:
        raise LumiError(
            f"{where}: baseline {baseline!r} is not one of the arms{closest(str(baseline), labels)}; "
            f"arms: {', '.join(labels)}"
        )
    match = str(raw.get("match") or "tokens")
    if match not in MATCHES:
        raise LumiError(
            f"{where}: match {match!r} is not one of {', '.join(MATCHES)}{closest(match, list(MATCHES))}"
        )
    threshold = raw.get("threshold", DEFAULT_THRESHOLD)
    try:
        if isinstance(threshold, bool):
            raise ValueError
        threshold = float(DEFAULT_THRESHOLD if threshold is None else threshold)
    except (TypeError, ValueError):
        raise LumiError(
            f"{where}: threshold must be a number of BPB (e.g. 0.005), got {threshold!r}"
        ) from None
    if threshold < 0:
        raise LumiError(f"{where}: threshold must be >= 0, got {threshold}")
    jobs = raw.get("jobs", 1)
    try:
        if isinstance(jobs, bool) or float(1 if jobs is None else jobs) != int(
            float(1 if jobs is None else jobs)
        ):
            raise ValueError
        jobs = int(float(1 if jobs is None else jobs))
    except (TypeError, ValueError):
        raise LumiError(f"{where}: jobs must be a whole number >= 1, got {raw.get('jobs')!r}") from None
    if jobs < 1:
        raise LumiError(f"{where}: jobs must be >= 1, got {jobs}")
    try:
        budget = parse_budget(str(raw.get("budget") or FALLBACK_BUDGET))
    except LumiError as e:
        raise LumiError(f"{where}: {e}") from None
    data = _section(raw, "data", where)
    for key in data:
        if key not in DATA_KEYS:
            raise LumiError(
                f"{where}: unknown key data.{key}{closest(str(key), list(DATA_KEYS))}; "
                f"data keys: {', '.join(DATA_KEYS)}"
            )
    data.setdefault("corpus", "shakespeare")
    data.setdefault("tokenizer", "bpe:4096")
    if data.get("dir") is None:
        data.pop("dir", None)
    name = str(raw.get("name") or default_name or auto_name(arms))
    if "/" in name or name in (".", ".."):
        raise LumiError(f"{where}: name {name!r} must be a plain directory name (no '/')")
    from lumi.compare.sequential import AUTO_MIN_SEEDS, parse_auto_seeds
    from lumi.compare.tune import tune_section

    try:
        seeds_max = parse_auto_seeds(raw.get("seeds"))
    except LumiError as e:
        raise LumiError(f"{where}: {e}") from None
    seeds = list(range(AUTO_MIN_SEEDS)) if seeds_max is not None else parse_seeds(raw.get("seeds", 2))
    return CompareSpec(
        name=name,
        arms=arms,
        baseline=baseline,
        seeds=seeds,
        seeds_max=seeds_max,
        tune=tune_section(raw.get("tune"), where),
        eval=eval_section(raw.get("eval"), where),
        budget=budget,
        match=match,
        threshold=threshold,
        jobs=jobs,
        data=data,
        train=_section(raw, "train", where),
        optim=_section(raw, "optim", where),
        allow_leaky=_flag(raw.get("allow_leaky", False), "allow_leaky", where),
        bench=_flag(raw.get("bench", False), "bench", where),
        launcher=launcher_section(raw.get("launcher"), where),
    )


def _flag(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    raise LumiError(f"{where}: {key} must be true or false, got {value!r}")


def _section(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise LumiError(f"{where}: {key} must be a mapping (key: value), got {value!r}")
    return dict(value)

"""Training configuration: nested dataclasses, YAML round trip, dotted overrides, budgets.

A run is fully described by one ``TrainConfig``. It is read from YAML (``--config FILE``), patched by
dotted overrides (``--set optim.lr=1e-3 --set model.overrides.n_layers=4``), validated, printed,
and saved as the run's ``config.yaml``; loading that file again reproduces the run.

Budgets (``train.budget``) are strings with a unit: ``2000steps``, ``5M tokens``, ``5Mtok``,
``3e14flops``, ``90s``, ``10m``, ``1h``. Lower-case ``m`` means minutes; the multipliers
k / M / G (or B) / T scale counts (``5M tokens`` = 5,000,000 tokens).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumi.errors import LumiError, closest
from lumi.io import coerce, parse_assignment

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("wsd", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
FINAL_EVALS = ("full", "subset", "none")
LOGGERS = ("none", "tensorboard", "wandb")  # live logging of the metrics.jsonl rows (lumi.train.loggers)
PARALLEL = ("ddp", "fsdp")  # how torchrun processes share the model (lumi.train.fsdp for fsdp)


@dataclass
class ModelSection:
    name: str = "llama"
    preset: str | None = "micro"
    overrides: dict = field(default_factory=dict)  # model config fields, e.g. {n_layers: 4}
    files: list = field(default_factory=list)  # plugin files that @register architectures


@dataclass
class DataSection:
    # A corpus spec or a mixture "shakespeare:0.7,pystdlib:0.3"; YAML may also give a list of
    # {name, weight} mappings, stored as that spec (lumi.data.mixture).
    corpus: str = "shakespeare"
    tokenizer: str = "bpe:4096"
    dir: str | None = None  # a prepared-data directory; None = prepare/reuse corpus+tokenizer in $LUMI_HOME
    allow_lossy: bool = False  # accept a tokenizer that does not round-trip (BPB over the original bytes)


@dataclass
class OptimSection:
    # Defaults = the tuned recipe of docs/training.md "Default recipe" (benchmarks/recipe_sweep.py):
    # Muon beat the best AdamW by 0.38 BPB on bytes and 0.16 on bpe:4096 (llama:micro, 300 steps).
    name: str = "muon"  # adamw | muon (muon: hidden matrices; Adam for embeddings, head, norms, scalars)
    lr: float = 3e-3  # AdamW lr (with muon: the lr of the Adam-managed parameters)
    muon_lr: float = 0.01  # swept 0.005-0.04: 0.01 best on bytes and bpe:4096
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0  # decoupled decay of the Muon-managed hidden matrices
    muon_ns_steps: int = 5  # Newton–Schulz iterations per Muon step (3 was 0.045 BPB worse on bytes)
    weight_decay: float = 0.1  # decoupled; applied to matrices (>= 2-D parameters) only
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    schedule: str = "wsd"  # wsd | cosine | constant
    warmup_steps: int | None = None  # when set, warmup is counted in steps instead of warmup_frac
    warmup_frac: float = 0.02  # fraction of the budget spent warming up
    warmdown_frac: float = 0.3  # wsd: final fraction of the budget decaying linearly to min_lr_frac
    min_lr_frac: float = 0.0  # lr at the end of the schedule, as a fraction of the peak lr


@dataclass
class TrainSection:
    seq_len: int = 128
    batch_size: int = 16  # global sequences per optimizer step (over all ranks and accumulation steps)
    grad_accum: int = 1
    budget: str = "200steps"
    seed: int = 0
    init_seed: int | None = None  # None: same as seed
    data_seed: int | None = None  # None: same as seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (fp32 on CPU, bf16 autocast on CUDA) | fp32 | bf16
    compile: bool = False
    parallel: str = "ddp"  # ddp | fsdp (FSDP2: sharded params, grads, optimizer state; under torchrun)
    threads: int | None = None  # CPU threads per process; None = torch default (divided among local ranks)
    peak_flops: float | None = None  # for MFU; None = measured once by a matmul probe and cached
    log_every: int = 10  # steps between train rows in metrics.jsonl
    eval_every_s: float | None = 20.0  # training seconds between periodic evals (None = off)
    eval_every_steps: int | None = None  # steps between periodic evals (None = off); both may be set
    eval_tokens: int = 32768  # targets in the fixed validation prefix used by periodic evals
    final_eval: str = "full"  # full (whole val split) | subset (the periodic prefix) | none
    checkpoint_every_s: float | None = 60.0
    checkpoint_every_steps: int | None = None
    # Causality probes at the training length (lumi.check.audit): before training (init + randomised
    # weights; `lumi compare` turns it off because it runs the whole `lumi check` at that length first)
    # and on the final weights (the result lands in summary.json).
    causality_preflight: bool = True
    causality_audit: bool = True
    allow_leaky: bool = (
        False  # train a model that fails the pre-training probe anyway (the run is marked LEAK)
    )
    # Live logging (rank 0): every metrics.jsonl row also goes to TensorBoard (RUN/tensorboard/) or wandb.
    # Neither changes what a run trains: a resume or a comparison may change them (lumi.run.LOGGING_KEYS).
    logger: str = "none"  # none | tensorboard | wandb
    logger_tags: list = field(default_factory=list)  # wandb tags (lumi compare adds arm, seed-<k>, name)

    @property
    def resolved_init_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def parsed_budget(self) -> Budget:
        """``budget`` as a typed value (validate() has already checked it parses)."""
        return parse_budget(self.budget)


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "train": TrainSection,
}


@dataclass
class TrainConfig:
    name: str | None = None
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "config") -> TrainConfig:
        """Build and validate from a nested dict; unknown keys -> LumiError naming ``source``."""
        d = dict(d or {})
        allowed = ["name", *SECTIONS]
        for key in d:
            if key not in allowed:
                raise LumiError(
                    f"{source}: unknown key {key!r}{closest(str(key), allowed)}; "
                    f"top-level keys: {', '.join(allowed)}"
                )
        cfg = cls(name=None if d.get("name") is None else str(d["name"]))
        for section in SECTIONS:
            values = d.get(section) or {}
            if not isinstance(values, dict):
                raise LumiError(f"{source}: {section!r} must be a mapping of keys to values, got {values!r}")
            obj = getattr(cfg, section)
            for key, value in values.items():
                if section == "data" and key == "corpus" and isinstance(value, list):
                    from lumi.data.mixture import corpus_list_to_spec

                    value = corpus_list_to_spec(value, f"{source}: data.corpus")
                _set_field(obj, section, str(key), value, source)
        cfg.validate(source)
        return cfg

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    # -- validation --------------------------------------------------------------------------
    def validate(self, source: str = "config") -> None:
        o, t = self.optim, self.train
        _finite_numbers(self, source)  # first: nan slips through every `x > 0` / range check below
        _one_of(source, "optim.name", o.name, OPTIMIZERS)
        _one_of(source, "optim.schedule", o.schedule, SCHEDULES)
        _one_of(source, "train.precision", t.precision, PRECISIONS)
        _one_of(source, "train.final_eval", t.final_eval, FINAL_EVALS)
        _one_of(source, "train.logger", t.logger, LOGGERS)
        _one_of(source, "train.parallel", t.parallel, PARALLEL)
        if not isinstance(t.logger_tags, list) or not all(
            isinstance(tag, str) and tag.strip() for tag in t.logger_tags
        ):
            raise LumiError(
                f"{source}: train.logger_tags must be a list of non-empty strings, e.g. [baseline, seed-0]; "
                f"got {t.logger_tags!r}"
            )
        for key, value in [("optim.lr", o.lr), ("optim.muon_lr", o.muon_lr), ("optim.eps", o.eps)]:
            if not value > 0:
                raise LumiError(f"{source}: {key} must be > 0, got {value}")
        for key, value in [
            ("optim.weight_decay", o.weight_decay),
            ("optim.muon_weight_decay", o.muon_weight_decay),
            ("optim.grad_clip", o.grad_clip),
        ]:
            if value < 0:
                raise LumiError(f"{source}: {key} must be >= 0, got {value}")
        for key, value in [
            ("optim.warmup_frac", o.warmup_frac),
            ("optim.warmdown_frac", o.warmdown_frac),
            ("optim.min_lr_frac", o.min_lr_frac),
            ("optim.muon_momentum", o.muon_momentum),
        ]:
            if not 0.0 <= value <= 1.0:
                raise LumiError(f"{source}: {key} must be in [0, 1], got {value}")
        if o.muon_ns_steps < 1:
            raise LumiError(f"{source}: optim.muon_ns_steps must be >= 1, got {o.muon_ns_steps}")
        if o.warmup_steps is not None and o.warmup_steps < 0:
            raise LumiError(f"{source}: optim.warmup_steps must be >= 0 or null, got {o.warmup_steps}")
        if len(o.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in o.betas):
            raise LumiError(
                f"{source}: optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got {o.betas}"
            )
        for key in ("seq_len", "batch_size", "grad_accum", "log_every", "eval_tokens"):
            if getattr(t, key) < 1:
                raise LumiError(f"{source}: train.{key} must be >= 1, got {getattr(t, key)}")
        if t.batch_size % t.grad_accum:
            raise LumiError(
                f"{source}: train.batch_size={t.batch_size} must be divisible by "
                f"train.grad_accum={t.grad_accum}"
            )
        for key in ("threads", "eval_every_steps", "checkpoint_every_steps"):
            value = getattr(t, key)
            if value is not None and value < 1:
                raise LumiError(f"{source}: train.{key} must be >= 1 or null, got {value}")
        for key in ("eval_every_s", "checkpoint_every_s", "peak_flops"):
            value = getattr(t, key)
            if value is not None and not value > 0:
                raise LumiError(f"{source}: train.{key} must be > 0 or null, got {value}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", t.device):
            raise LumiError(
                f"{source}: train.device must be auto, cpu, cuda, cuda:N or mps; got {t.device!r}"
            )
        if not isinstance(self.model.overrides, dict):
            raise LumiError(
                f"{source}: model.overrides must be a mapping (field: value), got {self.model.overrides!r}"
            )
        if not isinstance(self.model.files, list):
            raise LumiError(f"{source}: model.files must be a list of .py files, got {self.model.files!r}")
        parse_budget(t.budget)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML file (optional) <- dotted overrides ``section.key=value``; validated."""
    import yaml

    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise LumiError(f"config file {source!r} does not exist (expected a YAML file)")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise LumiError(f"config file {source!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        except UnicodeDecodeError as e:
            raise LumiError(
                f"config file {source!r} is not UTF-8 text (byte {e.start}: {e.reason}); "
                f"save it as UTF-8 YAML"
            ) from None
        except OSError as e:
            raise LumiError(f"config file {source!r} is unreadable: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise LumiError(f"config file {source!r} must hold a mapping (model:, data:, optim:, train:)")
    cfg = TrainConfig.from_dict(data, source)
    for item in overrides:
        apply_override(cfg, item)
    cfg.validate("--set")
    return cfg


def apply_override(cfg: TrainConfig, item: str) -> None:
    """Apply one ``section.key=value`` (or ``model.overrides.field=value``) in place."""
    dotted, value = parse_assignment(item, "section.key=value (e.g. optim.lr=1e-3)", "override")
    parts = dotted.split(".")
    if parts == ["name"]:
        cfg.name = None if value is None else str(value)
        return
    if len(parts) < 2 or parts[0] not in SECTIONS:
        keys = [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)] + ["name"]
        raise LumiError(
            f"unknown config key {dotted!r}{closest(dotted, keys)}; keys look like "
            f"optim.lr, train.budget, model.overrides.n_layers"
        )
    section, key = parts[0], parts[1]
    obj = getattr(cfg, section)
    if section == "model" and key == "overrides" and len(parts) == 3:
        obj.overrides[parts[2]] = value
        return
    if len(parts) != 2:
        raise LumiError(
            f"config key {dotted!r} is nested too deeply; only model.overrides.FIELD takes a third part"
        )
    _set_field(obj, section, key, value, "--set")


# -- budgets ------------------------------------------------------------------------------------

BUDGET_KINDS = ("steps", "tokens", "seconds", "flops")
_BUDGET_EXAMPLES = "e.g. 2000steps, 5M tokens, 5Mtok, 3e14flops, 90s, 10m, 1h"
_MULTIPLIERS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}
_UNITS = {
    "steps": ("steps", "step"),
    "tokens": ("tokens", "token", "tok", "toks"),
    "flops": ("flops", "flop"),
}
_TIME_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
}
_BUDGET_RE = re.compile(
    r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\s*([kKMGBT]?)\s*([A-Za-z]*)\s*$"
)


@dataclass(frozen=True)
class Budget:
    """A parsed training budget; ``parse_budget`` is the only way to make one."""

    kind: str  # steps | tokens | seconds | flops
    value: float
    text: str = ""

    def __str__(self) -> str:
        return self.text

    @property
    def is_time(self) -> bool:
        return self.kind == "seconds"

    def steps(self, tokens_per_step: int, flops_per_token: float) -> int | None:
        """Optimizer steps this budget buys: the nearest whole step (at least 1); None for a time budget.

        The one conversion: ``lumi train`` uses it for its own budget and ``lumi compare`` for every arm's
        matched budget, so both agree on what N tokens or FLOPs mean in steps."""
        if self.kind == "steps":
            return int(self.value)
        if self.kind == "tokens":
            return max(1, math.floor(self.value / tokens_per_step + 0.5))
        if self.kind == "flops":
            return max(1, math.floor(self.value / (tokens_per_step * flops_per_token) + 0.5))
        return None


def parse_budget(text: str | int | float) -> Budget:
    """'2000steps' | '5M tokens' | '5Mtok' | '3e14flops' | '90s' | '10m' | '1h' -> Budget."""
    s = str(text)
    m = _BUDGET_RE.match(s)
    if not m:
        raise LumiError(f"budget {s!r} does not parse; give a number with a unit: {_BUDGET_EXAMPLES}")
    number, mult, unit = float(m.group(1)), m.group(2), m.group(3)
    if not unit:
        raise LumiError(f"budget {s!r} has no unit; {_BUDGET_EXAMPLES} (lower-case m = minutes, M = million)")
    kind = None
    if unit.lower() in _TIME_UNITS:
        if mult:
            raise LumiError(
                f"budget {s!r}: multipliers (k, M, ...) apply to steps/tokens/flops, not time; "
                f"{_BUDGET_EXAMPLES}"
            )
        kind, value = "seconds", number * _TIME_UNITS[unit.lower()]
    else:
        for k, names in _UNITS.items():
            if unit.lower() in names:
                kind, value = k, number * _MULTIPLIERS[mult]
        if kind is None:
            raise LumiError(
                f"budget {s!r}: unknown unit {unit!r}; units are steps, tokens (tok), flops, "
                f"s, m (minutes), h; {_BUDGET_EXAMPLES}"
            )
    if not (value > 0 and math.isfinite(value)):
        raise LumiError(f"budget {s!r} must be positive; {_BUDGET_EXAMPLES}")
    if kind == "steps" and value != int(value):
        raise LumiError(f"budget {s!r}: steps must be a whole number; {_BUDGET_EXAMPLES}")
    return Budget(kind=kind, value=value, text=s)


# -- field coercion -----------------------------------------------------------------------------


def _set_field(obj: Any, section: str, key: str, value: Any, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if key not in fields:
        raise LumiError(
            f"{source}: unknown key {section}.{key}{closest(key, list(fields))}; "
            f"{section} keys: {', '.join(fields)}"
        )
    setattr(obj, key, coerce(value, _field_type(type(obj), key), f"{source}: {section}.{key}"))


def _field_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def _finite_numbers(cfg: TrainConfig, source: str) -> None:
    """Every float in every section (and in model.overrides, optim.betas) must be finite: .inf / .nan are
    valid YAML floats but no valid setting (an infinite lr diverges, a nan budget check never fires)."""
    items: list[tuple[str, Any]] = []
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, dict):
                items += [(f"{section}.{f.name}.{k}", v) for k, v in value.items()]
            elif isinstance(value, (list, tuple)):
                items += [(f"{section}.{f.name}[{i}]", v) for i, v in enumerate(value)]
            else:
                items.append((f"{section}.{f.name}", value))
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            raise LumiError(f"{source}: {key} must be a finite number, got {value}")


def _one_of(source: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LumiError(
            f"{source}: {key} must be one of {', '.join(choices)}; got {value!r}"
            f"{closest(str(value), list(choices))}"
        )

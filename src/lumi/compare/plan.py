"""Matched budgets: turn the comparison's budget into one `lumi train` budget per arm.

tokens: every arm gets the same optimizer steps (arms share seq_len and batch size, so equal steps =
equal tokens). flops: every arm gets the same training FLOPs; its steps = FLOPs / (its FLOPs per token x
tokens per step). time: every arm gets the same training seconds. A time budget with tokens/flops
matching is converted once from the baseline's measured throughput (``measure_tokens_per_s``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from lumi.compare.arms import Arm
from lumi.compare.spec import CompareSpec
from lumi.errors import LumiError
from lumi.train.config import Budget

MIN_STEPS = 10  # fewer optimizer steps than this leave nothing to evaluate or compare
MIN_SECONDS = 10.0
FORBIDDEN_TRAIN_KEYS = ("seed", "init_seed", "data_seed", "budget", "threads")


@dataclass(frozen=True)
class ModelFacts:
    params: int
    non_embedding_params: int
    active_params: int
    flops_per_token: float  # at the comparison's seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArmPlan:
    label: str
    budget: str  # what `lumi train` gets: "123steps" or "120s"
    steps: int | None  # None: a time budget
    tokens: int | None
    flops: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_facts(arm: Arm, vocab_size: int, seq_len: int) -> ModelFacts:
    """Parameters and FLOPs/token of the arm's model, built exactly as training builds it."""
    from lumi.models.registry import build_model, load_model_file

    for f in arm.files:
        load_model_file(f)
    model = build_model(arm.name, arm.preset, arm.overrides, vocab_size=vocab_size)
    counts = model.param_counts()
    return ModelFacts(
        params=counts.total,
        non_embedding_params=counts.non_embedding,
        active_params=counts.active if counts.active is not None else counts.total,
        flops_per_token=float(model.flops_per_token(seq_len)),
    )


def validate_pairing(spec: CompareSpec) -> None:
    """Refuse specs that would break the paired design or leave nothing to compare."""
    for arm in spec.arms:
        if arm.train:
            raise LumiError(
                f"arm {arm.label!r} sets its own train settings ({', '.join(sorted(arm.train))}); the "
                f"paired design needs every arm to see the same batches, so seq_len, batch_size and "
                f"the other train settings go in the shared train: section"
            )
    for key in FORBIDDEN_TRAIN_KEYS:
        if key in spec.train:
            raise LumiError(
                f"train.{key} is set by the comparison itself (from seeds:, budget: and --jobs); "
                f"remove it from the train section"
            )
    if train_settings(spec).final_eval == "none":
        raise LumiError(
            "train.final_eval=none leaves no final validation BPB to compare; use full (default) or subset"
        )
    tokenizers = {spec.tokenizer_of(a) for a in spec.arms}
    if len(tokenizers) > 1 and spec.match == "tokens":
        raise LumiError(
            f"arms use different tokenizers ({', '.join(sorted(tokenizers))}): a token is not the same "
            f"amount of text for each, so --match tokens is not a fair budget; use --match flops or time"
        )
    from lumi.train.config import TrainConfig

    for arm in spec.arms:  # bad shared/per-arm keys fail now, naming the key, not in every child process
        TrainConfig.from_dict(
            {"train": spec.train, "optim": {**spec.optim, **arm.optim}},
            f"comparison {spec.name!r} (arm {arm.label!r})",
        )


def train_settings(spec: CompareSpec):
    """The shared train section with `lumi train`'s defaults filled in (seq_len, batch_size ...)."""
    from lumi.train.config import TrainConfig

    return TrainConfig.from_dict({"train": spec.train}, f"comparison {spec.name!r}").train


def tokens_per_step(spec: CompareSpec) -> int:
    t = train_settings(spec)
    return t.seq_len * t.batch_size


def plan_budgets(
    spec: CompareSpec,
    facts: dict[str, ModelFacts],
    tokens_per_step: int,
    probe_tokens_per_s: float | None = None,
) -> list[ArmPlan]:
    """One ArmPlan per arm (in spec order) so that ``spec.match`` is equal across arms."""
    budget = spec.budget
    if spec.match == "time":
        if budget.kind != "seconds":
            raise LumiError(f"--match time needs a time budget (e.g. 90s, 2m), got {budget.text!r}")
        if budget.value < MIN_SECONDS:
            raise LumiError(
                f"budget {budget.text!r} is too small to evaluate: give every arm at least "
                f"{MIN_SECONDS:g} s of training"
            )
        return [ArmPlan(a.label, f"{budget.value:g}s", None, None, None) for a in spec.arms]
    base = facts[spec.baseline]
    if budget.kind == "seconds":
        if not probe_tokens_per_s:
            raise LumiError(
                f"a time budget ({spec.budget}) with --match {spec.match} needs the baseline's measured "
                f"throughput to convert it into tokens"
            )
        base_tokens = budget.value * probe_tokens_per_s
    elif budget.kind == "steps":
        base_tokens = budget.value * tokens_per_step
    elif budget.kind == "tokens":
        base_tokens = budget.value
    else:  # flops
        base_tokens = budget.value / base.flops_per_token
    total_flops = budget.value if budget.kind == "flops" else base_tokens * base.flops_per_token
    plans = []
    for arm in spec.arms:
        fpt = facts[arm.label].flops_per_token
        tokens = base_tokens if spec.match == "tokens" else total_flops / fpt
        steps = Budget("tokens", tokens).steps(tokens_per_step, fpt) or 0
        if steps < MIN_STEPS:
            raise LumiError(
                f"budget {budget.text!r} is too small to evaluate: arm {arm.label!r} would get {steps} "
                f"optimizer steps of {tokens_per_step} tokens (at least {MIN_STEPS} are needed)"
            )
        plans.append(
            ArmPlan(arm.label, f"{steps}steps", steps, steps * tokens_per_step, steps * tokens_per_step * fpt)
        )
    return plans


def measure_tokens_per_s(
    arm: Arm, vocab_size: int, seq_len: int, batch_size: int, threads: int, seconds: float = 3.0
) -> float:
    """Training throughput of ``arm`` (forward + backward + AdamW on random tokens) over ~``seconds``."""
    import torch
    import torch.nn.functional as F

    from lumi.models.registry import build_model, load_model_file

    for f in arm.files:
        load_model_file(f)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(arm.name, arm.preset, arm.overrides, vocab_size=vocab_size)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1))

            def step() -> None:
                logits = model(tokens[:, :-1])
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
                )
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()  # warm-up: allocations, kernel selection
            n, start = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - start < seconds:
                step()
                n += 1
            return n * batch_size * seq_len / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(old)

"""`lumi adapt`'s work: per seed, attach an adapter to a fresh copy of the frozen core, train it on the new
domain, score domain and general BPB before and after, then apply the gates over the seeds.

The training loop is a small one of its own because ``lumi.train``'s trainer builds its model from a
config and owns a run directory (checkpoints, resume, causality probes); here the model arrives built,
mostly frozen, and nothing but the adapter is written. The pieces are the trainer's: ``build_optimizer``
(trainable parameters only), ``lr_multiplier`` keyed to the budget fraction (a wall-clock budget still ends
annealed), ``step_batch`` (seed k gives every method the same batches: the methods are paired too),
``resolve_autocast`` and ``evaluate_bpb``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lumi.adapt.directory import (
    REPORT,
    RESULTS,
    merged_dir_name,
    seed_dir_name,
    weights_sha256,
    write_adapter,
    write_merged_run,
)
from lumi.adapt.gates import DEFAULT_MAX_FORGET, DEFAULT_MIN_GAIN, evaluate_gate
from lumi.adapt.methods import (
    attach,
    brick_param_count,
    check_mergeable,
    check_method,
    lora_param_count,
    merge,
    resolve_brick_targets,
    resolve_linear_targets,
    trainable_state,
)
from lumi.errors import LumiError

if TYPE_CHECKING:
    import numpy as np

    from lumi.models.base import LumiModel
    from lumi.train.config import Budget

# Peak AdamW learning rates: adapters start from zero and take a larger step than full fine-tuning, whose
# every weight moves (docs/adapt.md measures 3e-3 against 3e-4).
DEFAULT_LR = {"lora": 3e-3, "brick": 3e-3, "full": 3e-4}
DEFAULT_RANK = 8
DEFAULT_EVAL_TOKENS = 65536
EVAL_BATCH = 16
# Merged and adapted logits differ only by float rounding of the folded weights.
MERGE_ATOL = 1e-4


@dataclass
class AdaptOptions:
    corpus: str
    method: str
    budget: Budget
    seeds: int = 3
    rank: int = DEFAULT_RANK
    alpha: float | None = None  # lora scaling alpha / rank; None: alpha = rank
    targets: list[str] | None = None
    lr: float | None = None  # None: DEFAULT_LR[method]
    min_gain: float = DEFAULT_MIN_GAIN
    max_forget: float = DEFAULT_MAX_FORGET
    eval_tokens: int | None = DEFAULT_EVAL_TOKENS  # None: the whole validation splits
    batch_size: int | None = None  # None: the run's train.batch_size
    seq_len: int | None = None  # None: the run's train.seq_len
    merge: bool = False
    device: str = "auto"
    out: Path | None = None
    progress: bool = True

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def adapt(run_path: str | Path, o: AdaptOptions, model_files: list[str] | None = None) -> dict[str, Any]:
    """Adapt the run at ``run_path`` as ``o`` says; writes the output directory and returns results.json."""
    from lumi.adapt.domain import domain_data
    from lumi.run import Run
    from lumi.train.distributed import DistInfo
    from lumi.train.runtime import resolve_autocast, resolve_device, set_threads

    _check_options(o)
    run = Run.open(run_path)
    cfg = run.config
    ckpt = run.checkpoint()
    if o.corpus.strip() == str(cfg.data.corpus).strip():
        raise LumiError(
            f"--corpus {o.corpus!r} is the corpus run {str(run.path)!r} trained on; adapting needs a new domain "
            "(e.g. milton or pystdlib)"
        )
    set_threads(cfg.train.threads, DistInfo())  # the core run's CPU threads setting, as `lumi train` does
    device = resolve_device(o.device, DistInfo())
    autocast = resolve_autocast(cfg.train.precision, device)
    files = model_files or []
    core = run.load_model(device, files, ckpt)
    modules, params = _planned_adapter(core, o)  # bad --targets fail here, before any tokenizing
    seq_len = o.seq_len or cfg.train.seq_len
    batch_size = o.batch_size or cfg.train.batch_size
    limit = core.max_context()
    if limit is not None and seq_len > limit:
        raise LumiError(f"--seq-len {seq_len} is longer than the model's maximum context {limit}")
    data = run.data()
    domain = domain_data(o.corpus, data.tokenizer)
    out = _output_dir(run, o)
    log = _Log(o.progress)

    def score(model: torch.nn.Module, tokens: Any, target_bytes: Any, name: str) -> dict[str, Any]:
        from lumi.metrics.evaluate import evaluate_bpb

        return evaluate_bpb(
            model, tokens, target_bytes, seq_len, EVAL_BATCH, device, o.eval_tokens, autocast, split=name
        )

    general_tokens, general_bytes = data.tokens("val"), data.target_bytes("val")
    domain_before = score(core, domain.val.tokens, domain.val.target_bytes, f"{o.corpus} val")
    general_before = score(core, general_tokens, general_bytes, "val")
    log(
        f"core {str(run.path)!r}: domain {o.corpus} BPB {domain_before['bpb']:.4f}, general "
        f"({cfg.data.corpus}) BPB {general_before['bpb']:.4f}"
    )
    probe = torch.as_tensor(domain.val.tokens[: min(seq_len, len(domain.val.tokens))], device=device)[None]
    with torch.no_grad():
        core_logits = core(probe)
    core_sha = weights_sha256(core)
    core_state = run.checkpoint_state(ckpt)
    core_params = sum(p.numel() for p in core.parameters())
    del core

    seeds: list[dict[str, Any]] = []
    for seed in range(o.seeds):
        model = run.load_model(device, files, ckpt)
        torch.manual_seed(seed)  # the adapter's initialisation; the data order is step_batch(seed, step)
        adapter = attach(model, o.method, o.rank, o.alpha, o.targets)
        with torch.no_grad():
            start_logits = model(probe)
        if not torch.equal(start_logits, core_logits):  # the zero-initialised adapter must be a no-op
            raise LumiError(
                f"{o.method} changed the core's logits before any training (max difference "
                f"{(start_logits - core_logits).abs().max().item():.3g}); the adapter is not attached cleanly"
            )
        trained = train_adapter(
            model, domain.train.tokens, o, seed, seq_len, batch_size, device, autocast, log
        )
        domain_after = score(model, domain.val.tokens, domain.val.target_bytes, f"{o.corpus} val")
        general_after = score(model, general_tokens, general_bytes, "val")
        config = {
            "core_run": str(run.path.resolve()),
            "core_checkpoint": str(ckpt.resolve()),
            "core_step": core_state.get("step"),
            "core_weights_sha256": core_sha,
            "model": cfg.model.name,
            **adapter.describe(),
            "targets": o.targets,
            "seed": seed,
            "domain": o.corpus,
            "lr": o.peak_lr,
            "budget": str(o.budget),
            "steps": trained["steps"],
            "tokens": trained["tokens"],
        }
        saved = write_adapter(out / seed_dir_name(seed), trainable_state(model), config)
        row = {
            "seed": seed,
            "domain_before": domain_before["bpb"],
            "domain_after": domain_after["bpb"],
            "general_before": general_before["bpb"],
            "general_after": general_after["bpb"],
            "gain": domain_before["bpb"] - domain_after["bpb"],
            "forgetting": general_after["bpb"] - general_before["bpb"],
            **trained,
            "adapter": str(out / seed_dir_name(seed)),
            "trainable_params": saved["trainable_params"],
            "adapter_bytes": saved["adapter_bytes"],
        }
        if o.merge:
            row.update(_merge(model, adapter, probe, out / merged_dir_name(seed), run, saved))
        seeds.append(row)
        log(
            f"seed {seed}: {trained['steps']} steps{' (diverged)' if trained['diverged'] else ''}, domain "
            f"{row['domain_before']:.4f} -> {row['domain_after']:.4f}, general {row['general_before']:.4f} -> "
            f"{row['general_after']:.4f}"
        )

    def after(key: str) -> dict[int, float]:  # a diverged seed has no usable adapted BPB
        return {r["seed"]: math.nan if r["diverged"] else r[key] for r in seeds}

    gate = evaluate_gate(
        domain_before["bpb"],
        after("domain_after"),
        general_before["bpb"],
        after("general_after"),
        o.min_gain,
        o.max_forget,
    )
    results = {
        "core_run": str(run.path),
        "model": cfg.model.name,
        "core_step": core_state.get("step"),
        "core_corpus": cfg.data.corpus,
        "tokenizer": data.tokenizer.spec,
        "domain": {"corpus": o.corpus, "split": domain.split, "train_documents": domain.train.documents,
                   "val_documents": domain.val.documents, "train_tokens": len(domain.train.tokens)},
        "method": o.method,
        "rank": o.rank if o.method != "full" else None,
        "alpha": (o.alpha if o.alpha is not None else float(o.rank)) if o.method == "lora" else None,
        "modules": modules,
        "trainable_params": params,
        "core_params": core_params,
        "optimizer": {**_optimizer_record(), "lr": o.peak_lr},
        "budget": str(o.budget),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "eval": {"seq_len": seq_len, "max_targets": o.eval_tokens, "domain": domain_before["protocol"],
                 "general": general_before["protocol"]},
        "thresholds": {"min_gain": o.min_gain, "max_forget": o.max_forget},
        "seeds": seeds,
        "gate": gate.to_dict(),
        "out": str(out),
    }  # fmt: skip
    _write_results(out, results)
    return results


def train_adapter(
    model: LumiModel,
    tokens: np.ndarray,
    o: AdaptOptions,
    seed: int,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    autocast: torch.dtype | None,
    log: _Log,
) -> dict[str, Any]:
    """Train the trainable parameters of ``model`` on ``tokens`` for the budget; returns steps, tokens,
    seconds, first / last loss and whether the loss diverged."""
    from lumi.train.batches import step_batch
    from lumi.train.optim import build_optimizer
    from lumi.train.runtime import autocast_context
    from lumi.train.schedule import lr_multiplier

    vocab = int(model.config.vocab_size)
    optim_cfg = dataclasses.replace(adapter_optim_section(), lr=o.peak_lr)
    optimizer = build_optimizer(model, optim_cfg, vocab, device)
    params = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = seq_len * batch_size
    total = o.budget.steps(tokens_per_step, model.flops_per_token(seq_len))
    step, elapsed, last_dt = 0, 0.0, 0.0
    losses: list[float] = []
    diverged = False
    model.train()
    while (step < total) if total is not None else (elapsed < o.budget.value):
        if total is not None:
            frac = (step / total, (step + 1) / total)
        else:
            frac = (elapsed / o.budget.value, (elapsed + last_dt) / o.budget.value)
        optimizer.set_lr_multiplier(lr_multiplier(optim_cfg, step, *frac))
        t0 = time.perf_counter()
        x, y = step_batch(tokens, seed, step, seq_len, batch_size)
        x, y = x.to(device), y.to(device)
        with autocast_context(device, autocast):
            logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            aux = sum(model.aux_losses().values(), torch.zeros((), device=device))
        value, aux_value = loss.item(), float(aux.item())
        if not (math.isfinite(value) and math.isfinite(aux_value)):
            diverged = True
            break
        (loss + aux).backward()
        if optim_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        last_dt = time.perf_counter() - t0
        elapsed += last_dt
        step += 1
        losses.append(value)
        if step % 50 == 0:
            log.progress(f"seed {seed}: step {step}, loss {value:.4f}, {elapsed:.0f}s")
    model.eval()
    return {
        "steps": step,
        "tokens": step * tokens_per_step,
        "train_s": elapsed,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "diverged": diverged,
    }


def adapter_optim_section() -> Any:
    """AdamW without weight decay (decay would pull a zero-started adapter, or every core weight, toward
    zero), the default warmup-stable-decay schedule and gradient clipping of `lumi train`."""
    from lumi.train.config import OptimSection

    return OptimSection(name="adamw", weight_decay=0.0)


def _optimizer_record() -> dict[str, Any]:
    s = adapter_optim_section()
    return {"name": s.name, "weight_decay": s.weight_decay, "schedule": s.schedule, "warmup_frac": s.warmup_frac,
            "warmdown_frac": s.warmdown_frac, "grad_clip": s.grad_clip}  # fmt: skip


def _check_options(o: AdaptOptions) -> None:
    check_method(o.method)
    if o.seeds < 1:
        raise LumiError(f"--seeds must be >= 1, got {o.seeds}")
    if o.method != "full" and o.rank < 1:
        raise LumiError(f"--rank must be >= 1, got {o.rank}")
    if o.merge:
        check_mergeable(o.method)
    for flag, value in (("--lr", o.lr), ("--alpha", o.alpha)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise LumiError(f"{flag} must be a positive number, got {value}")
    for flag, value in (("--min-gain", o.min_gain), ("--max-forget", o.max_forget)):
        if not math.isfinite(value) or value < 0:
            raise LumiError(f"{flag} must be a number >= 0 (BPB), got {value}")
    for flag, count in (
        ("--eval-tokens", o.eval_tokens),
        ("--batch-size", o.batch_size),
        ("--seq-len", o.seq_len),
    ):
        if count is not None and count < 1:
            raise LumiError(f"{flag} must be >= 1, got {count}")


def _planned_adapter(core: LumiModel, o: AdaptOptions) -> tuple[list[str], int]:
    """The modules the adapter will touch and its parameter count by formula (checked against the model)."""
    if o.method == "lora":
        modules = resolve_linear_targets(core, o.targets)
        return modules, lora_param_count(core, modules, o.rank)
    if o.method == "brick":
        widths = resolve_brick_targets(core, o.targets)
        return list(widths), brick_param_count(widths, o.rank)
    if o.targets:
        raise LumiError(
            "--targets applies to --method lora or brick; full fine-tuning trains every parameter"
        )
    return [], sum(p.numel() for p in core.parameters() if p.requires_grad)


def _merge(
    model: LumiModel, adapter: Any, probe: torch.Tensor, path: Path, run: Any, config: dict[str, Any]
) -> dict[str, Any]:
    with torch.no_grad():
        adapted = model(probe)
    merged = merge(model, adapter)
    with torch.no_grad():
        folded = merged(probe)
    gap = float((folded - adapted).abs().max())
    if not gap <= MERGE_ATOL:
        raise LumiError(
            f"the merged model's logits differ from the adapted model's by {gap:.3g} (> {MERGE_ATOL})"
        )
    write_merged_run(path, run, merged, config)
    return {"merged_run": str(path), "merge_max_logit_diff": gap}


def _output_dir(run: Any, o: AdaptOptions) -> Path:
    if o.out is not None:
        out = Path(o.out)
    else:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", o.corpus).strip("-")[:40] or "corpus"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = run.adapters_dir / f"{o.method}-{slug}-{stamp}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LumiError(
            f"output directory {str(out)!r} already exists and is not empty; choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LumiError(f"cannot create output directory {str(out)!r}: {e.strerror or e}") from None
    return out


def _write_results(out: Path, results: dict[str, Any]) -> None:
    from lumi.adapt.report import render_report
    from lumi.io import write_json, write_text_atomic

    write_json(out / RESULTS, results)
    write_text_atomic(out / REPORT, render_report(results))


class _Log:
    """One line per event on stderr (the summary goes to stdout); silent with --no-progress or --json."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)

    def progress(self, text: str) -> None:
        self(f"  {text}")

"""`lumi bench`: training and inference speed, memory and MFU of models, side by side with HF.

For every subject (each model, plus HF LlamaForCausalLM twins with ``hf=True``) a warm-up round runs
every workload once (compile, allocator, lazy imports); then ``rounds`` rounds measure, visiting the
subjects in a rotated order each round so that machine noise is shared. Per round:
    train      tokens/s over ``train_steps`` optimizer steps on [batch, seq_len]; MFU = FLOPs/token
               (the model's analytic count, the same for a Lumi model and its HF twin) x tokens/s /
               the measured matmul peak
    prefill    tokens/s of one no-grad forward over [batch, seq_len]
    decode     for each decode batch: time of 1 and of new_tokens greedy tokens after a prompt_len
               prompt; TTFT = the 1-token time at batch 1, decode tokens/s = batch x (new_tokens - 1) /
               (the difference)
Peak memory is measured once per subject: on CUDA as max allocated, on CPU as resident-set growth in
a fresh child process (memory the parent freed but kept would hide growth otherwise).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from lumi.bench.measure import Figure, PeakMemory, timed
from lumi.bench.subjects import BenchShape, HFLlamaSubject, LumiSubject, Subject, is_hf_comparable
from lumi.compare.arms import Arm, parse_arm
from lumi.errors import LumiError
from lumi.models.base import LumiModel


@dataclass
class BenchOptions:
    models: list[str]
    shape: BenchShape = field(default_factory=BenchShape)
    vocab_size: int = 4096
    hf: bool = False
    threads: int | None = None
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    rounds: int = 5
    train_steps: int = 2
    memory: bool = True
    train: bool = True  # False: inference workloads only (lumi compare --bench)
    seed: int = 0
    model_files: list[str] = field(default_factory=list)


def run_bench(
    options: BenchOptions,
    log: Callable[[str], None] = lambda _: None,
    prebuilt: dict[str, LumiModel] | None = None,
) -> dict[str, Any]:
    """Measure every subject; returns the JSON-ready result (figures with median, best, spread).
    ``prebuilt``: models to measure as they are (e.g. trained runs), keyed by their name in ``options.models``."""
    from lumi.train.allocator import keep_freed_memory
    from lumi.train.distributed import DistInfo
    from lumi.train.env import device_name, measure_peak_flops, peak_flops
    from lumi.train.runtime import resolve_autocast, resolve_device

    _validate(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device, DistInfo())
    autocast_dtype = resolve_autocast(options.precision, device)
    if device.type == "cpu":
        keep_freed_memory()  # what `lumi train` does; both sides of a ratio share it
    arms = [parse_arm(text) for text in options.models]
    subjects = _subjects(arms, options, device, autocast_dtype, prebuilt or {})
    for s in subjects:
        if not s.has_cache:
            log(f"{s.name} has no KV cache: its decode re-runs the whole sequence for every token")
    shape = options.shape
    log(f"{len(subjects)} subjects on {device_name(device)}, {torch.get_num_threads()} threads")

    compute_dtype = autocast_dtype or torch.float32
    # MFU's denominator: the best of the cached clean probe and two fresh ones (a probe taken while the
    # machine is busy understates the peak and would overstate MFU).
    peak = (
        max(peak_flops(device, compute_dtype)[0], measure_peak_flops(device, compute_dtype))
        if options.train
        else 0.0
    )
    generator = torch.Generator().manual_seed(options.seed)
    vocab = min(s.vocab_size for s in subjects)  # prebuilt models bring their own vocabularies
    x = torch.randint(0, vocab, (shape.batch, shape.seq_len), generator=generator).to(device)
    y = torch.randint(0, vocab, (shape.batch, shape.seq_len), generator=generator).to(device)
    prompts = {
        b: torch.randint(0, vocab, (b, shape.prompt_len), generator=generator).to(device)
        for b in shape.decode_batches
    }

    figures: dict[str, dict[str, Figure]] = {s.name: _empty_figures(shape, options.train) for s in subjects}
    cache_bytes: dict[str, dict[str, float | None]] = {}
    for s in subjects:  # warm-up: every workload once, nothing recorded
        log(f"warm-up {s.name}")
        for _ in range((3 if s.compiled else 1) if options.train else 0):
            s.train_step(x, y)
        s.prefill(x)
        for b, prompt in prompts.items():
            first = s.decode(prompt, 1)
            full = s.decode(prompt, shape.new_tokens)
            if b == min(prompts):
                cache_bytes[s.name] = _cache_bytes(s, first, full, b, shape)
    for r in range(options.rounds):
        order = subjects[r % len(subjects) :] + subjects[: r % len(subjects)]
        for s in order:
            _measure_round(s, figures[s.name], x, y, prompts, options)
        log(f"round {r + 1}/{options.rounds} done")
    if options.train:  # a quieter moment may show a higher peak
        peak = max(peak, measure_peak_flops(device, compute_dtype))

    memory = _memory(subjects, arms, options, device) if options.memory else {}
    rows = []
    for s in subjects:
        fpt = _flops_per_token(s, subjects, shape.seq_len)
        figs = figures[s.name]
        if options.train:
            train_rates = figs["train_tok_per_s"].values
            figs = {**figs, "mfu": Figure("fraction of peak", values=[v * fpt / peak for v in train_rates])}
        rows.append(
            {
                "name": s.name,
                "kind": "hf" if isinstance(s, HFLlamaSubject) else "lumi",
                "params": sum(p.numel() for p in s.model.parameters()),
                "flops_per_token": fpt,
                "has_cache": s.has_cache,
                "compiled": s.compiled,
                "figures": {k: f.as_dict() for k, f in figs.items()},
                "cache_bytes": cache_bytes.get(s.name),
                "memory": memory.get(s.name),
            }
        )
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "precision": str(compute_dtype).replace("torch.", ""),
        "compile": options.compile,
        "shape": {**vars(shape), "decode_batches": list(shape.decode_batches)},
        "vocab_size": options.vocab_size,
        "rounds": options.rounds,
        "train_steps_per_round": options.train_steps,
        "matmul_peak_flops": peak or None,
        "memory_method": PeakMemory(device).method if options.memory else None,
        "subjects": rows,
        "ratios": _ratios(rows),
        "torch": torch.__version__,
        "transformers": _transformers_version() if options.hf else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _validate(o: BenchOptions) -> None:
    if not o.models:
        raise LumiError("name at least one model, e.g. lumi bench llama:micro mla:micro")
    s = o.shape
    for label, value, low in [
        ("--seq-len", s.seq_len, 2), ("--batch", s.batch, 1), ("--prompt-len", s.prompt_len, 1),
        ("--new-tokens", s.new_tokens, 2), ("--rounds", o.rounds, 1), ("--train-steps", o.train_steps, 1),
        ("--vocab-size", o.vocab_size, 2),
    ]:  # fmt: skip
        if value < low:
            raise LumiError(f"{label} must be >= {low}, got {value}")
    if o.threads is not None and o.threads < 1:
        raise LumiError(f"--threads must be >= 1, got {o.threads}")


def _subjects(
    arms: list[Arm],
    o: BenchOptions,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    prebuilt: dict[str, LumiModel],
) -> list[Subject]:
    from lumi.cli.common import load_plugins
    from lumi.models.registry import build_model

    load_plugins(o.model_files)
    subjects: list[Subject] = []
    names = [arm.label for arm in arms]
    if len(set(names)) != len(names):
        raise LumiError(
            f"a model is named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}"
        )
    hf_twins = 0
    for arm in arms:
        torch.manual_seed(o.seed)
        model = prebuilt.get(arm.label) or build_model(
            arm.name, arm.preset, arm.overrides, vocab_size=o.vocab_size
        )
        _check_lengths(arm.label, model, o.shape)
        subject = LumiSubject(arm.label, model, device, autocast_dtype)
        if o.compile:
            subject.compile()
        subjects.append(subject)
        if o.hf and is_hf_comparable(model):
            max_positions = max(o.shape.seq_len, o.shape.prompt_len + o.shape.new_tokens)
            subjects.append(HFLlamaSubject(f"hf:{arm.label}", model, device, autocast_dtype, max_positions))
            hf_twins += 1
    if o.hf and not hf_twins:
        raise LumiError(
            "--hf compares with transformers' LlamaForCausalLM, which only a plain `llama` model can match "
            f"(not {', '.join(names)}); add a llama model, e.g. lumi bench llama:micro {' '.join(names)} --hf"
        )
    return subjects


def _check_lengths(label: str, model: LumiModel, shape: BenchShape) -> None:
    limit = model.max_context()
    if limit is None:
        return
    for what, length in [
        ("--seq-len", shape.seq_len),
        ("--prompt-len + --new-tokens", shape.prompt_len + shape.new_tokens),
    ]:
        if length > limit:
            raise LumiError(
                f"{label}: {what} = {length} is beyond the model's maximum context of {limit} tokens"
            )


def _empty_figures(shape: BenchShape, train: bool) -> dict[str, Figure]:
    figs = {"train_tok_per_s": Figure("tokens/s")} if train else {}
    figs |= {"prefill_tok_per_s": Figure("tokens/s"), "ttft_s": Figure("s", higher_is_better=False)}
    for b in shape.decode_batches:
        figs[f"decode_b{b}_tok_per_s"] = Figure("tokens/s")
    return figs


def _measure_round(
    s: Subject,
    figs: dict[str, Figure],
    x: torch.Tensor,
    y: torch.Tensor,
    prompts: dict[int, torch.Tensor],
    o: BenchOptions,
) -> None:
    shape = o.shape
    if o.train:
        seconds = sum(timed(partial(s.train_step, x, y), s.device) for _ in range(o.train_steps))
        figs["train_tok_per_s"].values.append(o.train_steps * x.numel() / seconds)
    figs["prefill_tok_per_s"].values.append(x.numel() / timed(lambda: s.prefill(x), s.device))
    for b, prompt in prompts.items():
        first = timed(partial(s.decode, prompt, 1), s.device)
        full = timed(partial(s.decode, prompt, shape.new_tokens), s.device)
        if b == min(prompts):
            figs["ttft_s"].values.append(first)
        # Decoding n tokens took less than decoding 1 only if the machine stalled during the 1-token
        # run: that round has no decode figure (the figure's round count shows it).
        if full > first:
            figs[f"decode_b{b}_tok_per_s"].values.append(b * (shape.new_tokens - 1) / (full - first))


def _cache_bytes(s: Subject, first: Any, full: Any, batch: int, shape: BenchShape) -> dict[str, float | None]:
    """Bytes the cache grows by per token and sequence, and what it holds whatever the length (a
    recurrent state, a fixed window). After 1 new token the cache holds the prompt's positions; after
    n new tokens, n - 1 more."""
    if not s.has_cache or first is None or full is None:
        return {"per_token": None, "fixed": None}
    a, b = s.cache_bytes(first), s.cache_bytes(full)
    per_token = (b - a) / ((shape.new_tokens - 1) * batch)
    return {"per_token": per_token, "fixed": max(0.0, a - per_token * batch * shape.prompt_len)}


def _flops_per_token(s: Subject, subjects: list[Subject], seq_len: int) -> float:
    """The Lumi model's analytic count; an HF twin uses its Lumi model's (same dims, same FLOPs)."""
    if isinstance(s, LumiSubject):
        return s.lumi_model.flops_per_token(seq_len)
    twin = next(t for t in subjects if isinstance(t, LumiSubject) and s.name == f"hf:{t.name}")
    return twin.lumi_model.flops_per_token(seq_len)


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lumi / HF medians for every figure of each model that has an HF twin (TTFT: HF / Lumi, so > 1
    always means Lumi is faster)."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        twin = by_name.get(f"hf:{r['name']}")
        if twin is None:
            continue
        ratios = {}
        for key, fig in r["figures"].items():
            other = twin["figures"][key]
            if key == "mfu":
                continue
            if key == "ttft_s":
                ratios["ttft_speedup"] = other["median"] / fig["median"]
            else:
                ratios[key] = fig["median"] / other["median"]
        out.append({"lumi": r["name"], "hf": twin["name"], "lumi_over_hf": ratios})
    return out


def _memory(
    subjects: list[Subject], arms: list[Arm], o: BenchOptions, device: torch.device
) -> dict[str, dict[str, Any]]:
    if device.type == "cuda":
        return {s.name: _memory_in_process(s, o) for s in subjects}
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        for hf in (False, True):
            name = f"hf:{arm.label}" if hf else arm.label
            if any(s.name == name for s in subjects):
                out[name] = _memory_in_child(arm, hf, o)
    return out


def _memory_in_process(s: Subject, o: BenchOptions) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(o.seed)
    shape = o.shape
    x = torch.randint(0, o.vocab_size, (shape.batch, shape.seq_len), generator=gen).to(s.device)
    prompt = torch.randint(0, o.vocab_size, (max(shape.decode_batches), shape.prompt_len), generator=gen)
    tracker = PeakMemory(s.device)
    # Decode first: memory a step frees stays with the process, and the small decode would reuse what
    # the training step left behind and show no growth at all.
    with tracker.track():
        s.decode(prompt.to(s.device), shape.new_tokens)
    decode = tracker.growth_bytes
    with tracker.track():
        s.train_step(x, x)
    return {
        "train_step_bytes": tracker.growth_bytes,
        "decode_bytes": decode,
        "decode_batch": max(shape.decode_batches),
        "param_bytes": sum(p.numel() * p.element_size() for p in s.model.parameters()),
    }


def _memory_in_child(arm: Arm, hf: bool, o: BenchOptions) -> dict[str, Any]:
    """Run ``memory_child`` in a fresh interpreter (arguments and result as JSON)."""
    request = {
        "arm": arm.spec(),
        "hf": hf,
        "options": {**vars(o), "shape": {**vars(o.shape), "decode_batches": list(o.shape.decode_batches)}},
    }
    code = "from lumi.bench.runner import memory_child; memory_child()"
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(request), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LumiError(f"measuring the memory of {arm.label}{' (HF)' if hf else ''} failed: {tail}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def memory_child() -> None:
    """Entry point of the child: build the subject from the JSON request on stdin, measure one training
    step and one decode (fresh process, plain malloc settings), print the result as JSON."""
    request = json.loads(sys.stdin.read())
    raw = request["options"]
    o = BenchOptions(
        **{
            **raw,
            "shape": BenchShape(**{**raw["shape"], "decode_batches": tuple(raw["shape"]["decode_batches"])}),
        }
    )
    from lumi.cli.common import load_plugins
    from lumi.models.registry import build_model

    if o.threads:
        torch.set_num_threads(o.threads)
    load_plugins(o.model_files)
    arm = parse_arm(request["arm"])
    torch.manual_seed(o.seed)
    device = torch.device("cpu")
    model = build_model(arm.name, arm.preset, arm.overrides, vocab_size=o.vocab_size)
    max_positions = max(o.shape.seq_len, o.shape.prompt_len + o.shape.new_tokens)
    subject: Subject = (
        HFLlamaSubject("hf", model, device, None, max_positions)
        if request["hf"]
        else LumiSubject("lumi", model, device, None)
    )
    print(json.dumps(_memory_in_process(subject, o)))


def _transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return str(transformers.__version__)

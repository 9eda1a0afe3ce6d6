"""`lumi compare --bench`: inference speed of every arm beside its BPB.

After training, each arm's seed-0 model (its real config and vocabulary) is measured by `lumi bench`'s
inference workloads: prefill tokens/s, greedy decode tokens/s with the cache at batch 1 and 8, time to
first token and cache bytes per token; the arms alternate within each round. Training speed is
already in the comparison (tokens/s of the runs themselves), so it is not measured again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_ROUNDS = 3
BENCH_HEADER = ["arm", "prefill tok/s", "decode b1 tok/s", "decode b8 tok/s", "TTFT ms", "cache B/token"]


def bench_arms(
    arm_runs: list[tuple[str, Path, list[str]]], seq_len: int, threads: int | None, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """``arm_runs``: (label, seed-0 run directory, plugin files); arms whose run saved no weights are skipped.
    Prefill runs at the comparison's ``seq_len``; decoding stays within it (a prompt of half of it, at
    most 64 tokens, and as many new tokens)."""
    from lumi.bench.runner import BenchOptions, run_bench
    from lumi.bench.subjects import BenchShape
    from lumi.run import Run

    models = {}
    for label, run_dir, files in arm_runs:
        run = Run.open(run_dir)
        if run.latest_checkpoint() is None:
            log(f"bench: {label} has no checkpoint in {run_dir}; not measured")
            continue
        models[label] = run.load_model("cpu", files)
    if not models:
        return None
    log(f"bench: inference speed of {len(models)} arms ({BENCH_ROUNDS} rounds)")
    prompt_len = max(1, min(64, seq_len // 2))
    shape = BenchShape(
        seq_len=seq_len, prompt_len=prompt_len, new_tokens=max(2, min(64, seq_len - prompt_len))
    )
    options = BenchOptions(
        models=list(models),
        shape=shape,
        threads=threads,
        rounds=BENCH_ROUNDS,
        memory=False,
        train=False,
        device="cpu",
    )
    result = run_bench(options, log=lambda msg: log(f"bench: {msg}"), prebuilt=models)
    return {
        "device": result["device"],
        "threads": result["threads"],
        "shape": result["shape"],
        "rounds": result["rounds"],
        "arms": {
            row["name"]: {
                **{k: fig["median"] for k, fig in row["figures"].items() if k != "mfu"},
                "spread": {k: fig["spread"] for k, fig in row["figures"].items() if k != "mfu"},
                "has_cache": row["has_cache"],
                "cache_bytes_per_token": (row.get("cache_bytes") or {}).get("per_token"),
            }
            for row in result["subjects"]
        },
    }


def bench_rows(bench: dict[str, Any] | None) -> list[list[str]]:
    """One row per arm: medians with their spread (shared by the markdown, HTML and terminal reports)."""
    if not bench:
        return []
    rows = []
    for label, arm in bench["arms"].items():
        no_cache = "" if arm.get("has_cache") else " (no cache)"
        per_token = arm.get("cache_bytes_per_token")
        rows.append(
            [
                label,
                _figure(arm, "prefill_tok_per_s"),
                _figure(arm, "decode_b1_tok_per_s") + no_cache,
                _figure(arm, "decode_b8_tok_per_s") + no_cache,
                _figure(arm, "ttft_s", 1000.0, "{:.1f}"),
                "—" if per_token is None else f"{per_token:,.0f}",
            ]
        )
    return rows


def _figure(arm: dict[str, Any], key: str, scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
    value = arm.get(key)
    if value is None:
        return "n/a"
    spread = (arm.get("spread") or {}).get(key)
    return fmt.format(value * scale) + (f" ±{100 * spread:.0f}%" if spread is not None else "")


def bench_caption(bench: dict[str, Any]) -> str:
    shape = bench["shape"]
    return (
        f"{bench['device']}, {bench['threads']} threads; prefill {shape['batch']} x {shape['seq_len']}, "
        f"{shape['new_tokens']} greedy tokens after a {shape['prompt_len']}-token prompt; median ±spread of "
        f"{bench['rounds']} rounds (`lumi bench` for training speed, memory and MFU)"
    )

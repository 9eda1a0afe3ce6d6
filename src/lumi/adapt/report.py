"""report.md of `lumi adapt` (and the terminal summary): every seed, then the gate with its intervals."""

from __future__ import annotations

from typing import Any

from lumi.progress import format_count


def render_report(r: dict[str, Any]) -> str:
    lines = [
        f"# lumi adapt: {r['method']} on {r['domain']['corpus']}",
        "",
        f"Core: `{r['core_run']}` ({r['model']}, step {r['core_step']}, trained on {r['core_corpus']}, "
        f"tokenizer {r['tokenizer']}).",
        f"Adapter: {adapter_line(r)}.",
        f"Training: {r['budget']} per seed, AdamW lr {r['optimizer']['lr']:g} ({r['optimizer']['schedule']}), "
        f"batch {r['batch_size']} x {r['seq_len']} tokens; data order = seed (every method sees the same "
        "batches for a seed).",
        f"Evaluation: {_protocol(r)}.",
        "",
        *seed_table(r),
        "",
        *gate_lines(r),
        "",
    ]
    return "\n".join(lines)


def adapter_line(r: dict[str, Any]) -> str:
    sizes = r["seeds"][0] if r["seeds"] else {}
    size = (
        f"{format_count(sizes['trainable_params'])} trainable parameters ({sizes['adapter_bytes']:,} bytes)"
        if sizes
        else f"{format_count(r['trainable_params'])} trainable parameters"
    )
    share = r["trainable_params"] / r["core_params"] if r.get("core_params") else 0.0
    where = (
        f"rank {r['rank']}" + (f", alpha {r['alpha']:g}" if r.get("alpha") is not None else "")
        if r["method"] != "full"
        else "every weight"
    )
    modules = r.get("modules") or []
    on = f" on {len(modules)} modules ({_modules(modules)})" if modules else ""
    return f"{r['method']}, {where}{on}: {size}, {100 * share:.2f}% of the core's {format_count(r['core_params'])}"


def seed_table(r: dict[str, Any]) -> list[str]:
    rows = [
        "| seed | steps | domain before | domain after | gain | general before | general after | forgetting |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in r["seeds"]:
        steps = f"{s['steps']}" + (" (diverged)" if s["diverged"] else "")
        rows.append(
            f"| {s['seed']} | {steps} | {_f(s['domain_before'])} | {_f(s['domain_after'])} | {_f(s['gain'], True)} "
            f"| {_f(s['general_before'])} | {_f(s['general_after'])} | {_f(s['forgetting'], True)} |"
        )
    return rows


def gate_lines(r: dict[str, Any]) -> list[str]:
    g = r["gate"]
    lines = [f"**Gate: {g['verdict'].upper()}** ({r['method']}, {len(r['seeds'])} seed(s))", ""]
    for key, sign, label in (("domain", -1.0, "gain"), ("preservation", 1.0, "forgetting")):
        c = g[key]
        if c["mean"] is None:
            lines.append(f"- {c['name']}: {c['verdict']} ({c['evidence']}) — no finite paired result")
            lines += [f"  - {note}" for note in c.get("notes", [])]
            continue
        mean = sign * c["mean"]
        if c["ci_low"] is not None and c["ci_high"] is not None:
            lo, hi = sorted((sign * c["ci_low"], sign * c["ci_high"]))
            interval = f" [95% CI {lo:+.4f}, {hi:+.4f}]"
        else:
            interval = " (no interval: one seed)"
        p = f", sign-flip p {c['p_permutation']:.3g}" if c.get("p_permutation") is not None else ""
        lines.append(
            f"- {c['name']}: {c['verdict']} ({c['evidence']}) — mean {label} {mean:+.4f} BPB{interval}{p}; "
            f"rule: {c['rule']}"
        )
        lines += [f"  - {note}" for note in c.get("notes", [])]
    return lines


def _protocol(r: dict[str, Any]) -> str:
    e = r["eval"]
    d, g = e["domain"], e["general"]
    return (
        f"windows of {e['seq_len']} tokens; domain BPB on {d['subset']} of its validation split "
        f"({d['bytes']:,} bytes), general BPB on {g['subset']} of the core's validation split ({g['bytes']:,} "
        "bytes); every BPB = NLL / (ln 2 x UTF-8 bytes)"
    )


def _modules(modules: list[str]) -> str:
    leaves = sorted({m.rsplit(".", 1)[-1] if not m.rsplit(".", 1)[-1].isdigit() else m.rsplit(".", 1)[0]
                     for m in modules})  # fmt: skip
    return ", ".join(leaves[:8])


def _f(x: Any, signed: bool = False) -> str:
    if not isinstance(x, (int, float)) or x != x:
        return "n/a"
    return f"{x:+.4f}" if signed else f"{x:.4f}"

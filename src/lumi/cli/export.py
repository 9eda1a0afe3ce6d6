"""`lumi export RUN --format hf|lumi --out DIR`: a run's model as a Hugging Face or a Lumi directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from lumi.cli.common import RUN_MODEL_FILE_HELP, add_json_flag, add_model_file_arg, add_verb, print_json
from lumi.errors import LumiError

HELP = "export a trained run: Hugging Face LlamaForCausalLM (hf) or a self-contained Lumi directory"

DESCRIPTION = """\
Export the latest checkpoint of a run.

--format hf (the `llama` family): config.json, model.safetensors with Hugging Face's names,
generation_config.json and a tokenizer AutoTokenizer loads (the separator <|sep|> is BOS/EOS). Recipe
switches LlamaForCausalLM cannot express (relu2/gelu MLP, QK-norm, logit softcap) are refused. The
command then loads the directory with transformers and checks itself: max |Δ logit| <= 1e-4 on a fixed
batch, the same greedy continuation, the same token ids (needs `pip install 'lumi-lab[hf]'`).

--format lumi (every model, plugins included): weights, model config, tokenizer and a manifest with the
BPB the run reached; lumi.load(DIR) returns (model, tokenizer) without the run directory.

For a compressed, size-limited artifact use `lumi pack`.
"""

EPILOG = """\
examples:
  lumi export runs/llama-tiny-20250101-120000 --format hf --out exports/llama-tiny
  lumi export runs/mine-small-20250101-120000 --format lumi --out exports/mine --model-file my_arch.py
"""

FORMATS = ("hf", "lumi")
SAMPLE_TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind — ünïcödé ✓ 42."


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_verb(subparsers, "export", HELP, DESCRIPTION, EPILOG)
    p.add_argument("run", help="a run directory written by `lumi train`")
    p.add_argument("--format", choices=FORMATS, default="lumi", help="hf | lumi (default lumi)")
    p.add_argument("--out", metavar="DIR", required=True, help="the directory to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-check", action="store_true", help="skip loading the result back and comparing")
    add_model_file_arg(p, RUN_MODEL_FILE_HELP)
    add_json_flag(p)
    p.set_defaults(func=run)


def export_run(
    run_dir: Path,
    fmt: str,
    out: Path,
    force: bool = False,
    model_files: list[str] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    from lumi.export.bundle import run_facts, write_bundle
    from lumi.run import Run

    start = time.perf_counter()
    run = Run.open(run_dir)
    name = run.config.model.name
    if fmt == "hf" and name != "llama":
        raise LumiError(
            f"model {name!r} has no Hugging Face equivalent (only the `llama` family maps onto LlamaForCausalLM); "
            f"it exports with --format lumi, and packs with `lumi pack`"
        )
    ckpt = run.checkpoint()
    model, tokenizer = run.load_model_and_tokenizer("cpu", model_files or [], ckpt)
    result: dict[str, Any] = {"run": str(run.path), "checkpoint": str(ckpt), "format": fmt, "out": str(out)}
    if fmt == "hf":
        from lumi.export import hf
        from lumi.models.llama import Llama

        if type(model) is not Llama:  # a registered subclass of llama has parts LlamaForCausalLM lacks
            raise LumiError(
                f"model {name!r} built a {type(model).__name__}, not a plain Llama; use --format lumi"
            )
        switches = hf.unsupported_switches(model.config)
        if switches:
            raise LumiError(f"cannot export {run.path} to Hugging Face: {'; '.join(switches)}")
        _require_transformers()
        from lumi.io import write_directory

        max_positions = max(2048, run.config.train.seq_len)
        write_directory(
            out,
            lambda tmp: hf.write_hf_model(model, tokenizer, tmp, max_positions),
            force,
            "export directory",
        )
        if check:
            result["check"] = hf.self_check(model, tokenizer, out, SAMPLE_TEXT)
    else:
        write_bundle(out, name, model, tokenizer, run_facts(run, ckpt), force)
        if check:
            result["check"] = _check_bundle(model, out, model_files or [])
    result["seconds"] = time.perf_counter() - start
    return result


def _check_bundle(model: Any, out: Path, model_files: list[str]) -> dict[str, Any]:
    import torch

    from lumi.export.bundle import load

    loaded, _ = load(out, "cpu", model_files)
    batch = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(batch) - loaded(batch)).abs().max().item()
    return {"max_abs_logit_diff": diff, "logits_ok": diff == 0.0}


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise LumiError("--format hf needs transformers: pip install 'lumi-lab[hf]'") from None


def run(args: argparse.Namespace) -> int:
    out = export_run(
        Path(args.run), args.format, Path(args.out), args.force, args.model_file, not args.no_check
    )
    check = out.get("check")
    ok = check is None or (
        check["logits_ok"] and check.get("greedy_match", True) and check.get("tokenizer_match", True)
    )
    if args.json:
        print_json(out)
        return 0 if ok else 1
    print(
        f"exported {out['run']} ({out['checkpoint']}) as {out['format']} to {out['out']} in {out['seconds']:.1f}s"
    )
    if check is not None:
        line = f"  self-check: max |Δ logit| {check['max_abs_logit_diff']:.2e}"
        if "greedy_match" in check:
            line += (
                f", greedy continuation ({check['greedy_tokens']} tokens) "
                f"{'identical' if check['greedy_match'] else 'DIFFERS'}, tokenizer ids "
                f"{'identical' if check['tokenizer_match'] else 'DIFFER'}"
            )
        print(line + ("" if ok else "  — FAILED"))
    return 0 if ok else 1

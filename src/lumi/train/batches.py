"""Training batches: random windows of the train stream, drawn from a generator seeded by (data_seed, step).

The batch of optimizer step s depends only on (data_seed, s, seq_len, batch_size, the stream), so
- resuming needs no loader state beyond the step number;
- two arms with the same seed, seq_len and batch size see exactly the same data (paired design);
- under DDP every rank draws the same global batch and takes its own disjoint slice of rows.
Windows may start anywhere (including mid-document) and cross document separators.

A corpus mixture (PreparedData.train_mixture: each corpus's token range and weight) first draws each
row's corpus by weight from the same generator, then a window inside that corpus's range, so a window
never mixes two corpora and the same (data_seed, step) always gives the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lumi.errors import LumiError


def batch_offsets(data_seed: int, step: int, n_tokens: int, seq_len: int, batch_size: int) -> np.ndarray:
    """Start offsets of the ``batch_size`` windows (seq_len + 1 tokens each) for optimizer step ``step``."""
    high = n_tokens - (seq_len + 1)
    if high < 0:
        raise LumiError(
            f"the train split has {n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
            f"use a smaller train.seq_len or a bigger corpus"
        )
    return _rng(data_seed, step).integers(0, high + 1, size=batch_size, dtype=np.int64)


def mixture_offsets(
    data_seed: int,
    step: int,
    ranges: Sequence[tuple[int, int]],
    weights: Sequence[float],
    seq_len: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(corpus index, start offset) of each of the ``batch_size`` windows of step ``step`` in a mixture.

    Row r's corpus is drawn with probability weights[c] / sum(weights); its window lies inside ranges[c].
    """
    lengths = np.array([end - start for start, end in ranges], dtype=np.int64)
    short = [i for i, n in enumerate(lengths) if n < seq_len + 1]
    if short:
        raise LumiError(
            f"corpus {short[0] + 1} of the mixture has {int(lengths[short[0]])} training tokens, fewer than "
            f"seq_len + 1 = {seq_len + 1}; use a smaller train.seq_len or a bigger corpus"
        )
    p = np.asarray(weights, dtype=np.float64)
    rng = _rng(data_seed, step)
    corpus = rng.choice(len(ranges), size=batch_size, p=p / p.sum())
    starts = np.array([start for start, _ in ranges], dtype=np.int64)
    offsets = starts[corpus] + rng.integers(0, lengths[corpus] - seq_len, dtype=np.int64)
    return corpus, offsets


def _rng(data_seed: int, step: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(data_seed), int(step)])))


def step_batch(
    tokens: np.ndarray,
    data_seed: int,
    step: int,
    seq_len: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    mixture: tuple[Sequence[tuple[int, int]], Sequence[float]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows (inputs, targets: int64 [batch_size / world_size, seq_len]) of step ``step``.

    ``mixture``: (token ranges, weights) of a corpus mixture's training stream, or None for one corpus.
    """
    if mixture is None:
        offsets = batch_offsets(data_seed, step, len(tokens), seq_len, batch_size)
    else:
        offsets = mixture_offsets(data_seed, step, mixture[0], mixture[1], seq_len, batch_size)[1]
    per_rank = batch_size // world_size
    mine = offsets[rank * per_rank : (rank + 1) * per_rank]
    windows = np.stack([np.asarray(tokens[o : o + seq_len + 1]) for o in mine]).astype(np.int64)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]

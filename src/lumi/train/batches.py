"""Training batches: random windows of the train stream, drawn from a generator seeded by (data_seed, step).

The batch of optimizer step s depends only on (data_seed, s, seq_len, batch_size, the stream), so
- resuming needs no loader state beyond the step number;
- two arms with the same seed, seq_len and batch size see exactly the same data (paired design);
- under DDP every rank draws the same global batch and takes its own disjoint slice of rows.
Windows may start anywhere (including mid-document) and cross document separators.
"""

from __future__ import annotations

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
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(data_seed), int(step)])))
    return rng.integers(0, high + 1, size=batch_size, dtype=np.int64)


def step_batch(
    tokens: np.ndarray,
    data_seed: int,
    step: int,
    seq_len: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows (inputs, targets: int64 [batch_size / world_size, seq_len]) of step ``step``."""
    offsets = batch_offsets(data_seed, step, len(tokens), seq_len, batch_size)
    per_rank = batch_size // world_size
    mine = offsets[rank * per_rank : (rank + 1) * per_rank]
    windows = np.stack([np.asarray(tokens[o : o + seq_len + 1]) for o in mine]).astype(np.int64)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]

"""Deliberately broken: a unigram "cache" prior counted over the whole batch.

A cache language model adds ``w * log(1 + count of token v so far)`` to the logits, so recently seen
tokens become likelier. The bug: the counts are computed with one vectorised ``one_hot(...).sum((0,
1))`` over the batch AND time, so position t of sequence b is told which tokens occur anywhere in the
batch — including its own future tokens (the targets) and every other sequence. Written honestly the
counts are per sequence and cumulative: ``one_hot(tokens).cumsum(1)``.

Why a naive check misses it: the prior comes from integer token counts, not from the embeddings, so
a gradient probe sees nothing; with batch 1 at short lengths the leak is small, and the model trains
and overfits like any other. A perturbation probe over batch > 1 sees it.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lumi import register
from lumi.models.llama import Llama


@register("leaky_batch_stat", description="BROKEN on purpose: cache prior counts tokens over batch and time",
          presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)}, cpu_presets=["nano"])
class LeakyBatchStat(Llama):
    def __init__(self, config):
        super().__init__(config)
        self.cache_weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, tokens, cache=None):
        logits = super().forward(tokens, cache)
        counts = F.one_hot(tokens, self.config.vocab_size).sum(dim=(0, 1))  # the bug: whole batch, all times
        return logits + self.cache_weight * torch.log1p(counts.to(logits.dtype))

"""lumi.metrics.bpb: the one bits-per-byte implementation, checked against exact and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lumi.metrics.bpb import BpbAccumulator, bits_per_byte, bpb


def test_uniform_byte_model_scores_exactly_8():
    """A uniform model over 256 byte values: NLL ln(256) per byte = exactly 8 bits per byte.

    4096 targets (a power of two) keep every float64 sum exact, so equality is exact.
    """
    targets = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(4096, 256, dtype=torch.float64)
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert bpb(nll, torch.ones(4096, dtype=torch.int64)) == 8.0
    assert bpb(nll.numpy(), np.ones(4096)) == 8.0


def test_hand_computed_example():
    # Three targets: NLLs of 1, 2 and 0.5 bits covering 1, 2 and 0 bytes (the last is a separator).
    nll_nats = [1 * math.log(2), 2 * math.log(2), 0.5 * math.log(2)]
    nbytes = [1, 2, 0]
    # (1 + 2 + 0.5) bits / 3 bytes
    assert bpb(torch.tensor(nll_nats, dtype=torch.float64), torch.tensor(nbytes)) == pytest.approx(3.5 / 3, rel=1e-15)
    assert bpb(np.array(nll_nats), np.array(nbytes)) == pytest.approx(3.5 / 3, rel=1e-15)
    # A 2-byte token predicted with p = 1/4 costs 2 bits over 2 bytes: 1 bit per byte.
    assert bpb(np.array([math.log(4)]), np.array([2])) == pytest.approx(1.0, rel=1e-15)


def test_sums_in_float64_even_for_float32_input():
    nll32 = torch.full((1_000_000,), 0.1, dtype=torch.float32)
    acc = BpbAccumulator()
    acc.add(nll32, torch.ones(1_000_000, dtype=torch.int64))
    exact = 1_000_000 * float(np.float32(0.1)) / (math.log(2) * 1_000_000)
    assert acc.bpb == pytest.approx(exact, rel=1e-12)
    assert torch.float32 is nll32.dtype  # input untouched


def test_accumulator_batches_and_merge_equal_one_shot():
    rng = np.random.default_rng(0)
    nll = rng.random(1000) * 5
    nbytes = rng.integers(0, 4, 1000)
    one_shot = bpb(nll, nbytes)
    a, b = BpbAccumulator(), BpbAccumulator()
    a.add(nll[:300], nbytes[:300])
    b.add(nll[300:700], nbytes[300:700])
    b.add(nll[700:], nbytes[700:])
    a.merge(b)
    assert (a.targets, a.bytes) == (1000, int(nbytes.sum()))
    assert a.bpb == pytest.approx(one_shot, rel=1e-13)
    assert a.nats_per_target == pytest.approx(nll.mean(), rel=1e-13)


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        bpb(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="positive byte count"):
        bits_per_byte(1.0, 0)
    with pytest.raises(ValueError, match="positive byte count"):
        bpb(np.ones(2), np.zeros(2))  # only separators: nothing was scored

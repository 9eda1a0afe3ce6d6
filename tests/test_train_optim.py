"""Muon's Newton–Schulz orthogonalisation (batched, Gram form) and optimizer state round trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lumi.train.config import OptimSection
from lumi.train.optim import Muon, _ns_gram, _ns_plain, build_optimizer, orthogonalize


def _ill_conditioned(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random matrices whose column scales span three decades, like real gradients."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * torch.logspace(-3, 0, shape[-1])


@pytest.mark.parametrize("shape", [(6, 32, 32), (5, 24, 96), (4, 96, 24), (3, 2, 16, 40)])
def test_batched_orthogonalize_equals_per_matrix(shape: tuple[int, ...]) -> None:
    g = _ill_conditioned(*shape)
    batched = orthogonalize(g, steps=5)
    flat = g.reshape(-1, *shape[-2:])
    looped = torch.stack([orthogonalize(m, steps=5) for m in flat]).reshape(shape)
    assert batched.shape == g.shape
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5)


def test_gram_form_matches_plain_iteration() -> None:
    g = _ill_conditioned(4, 32, 128)
    x = g / torch.linalg.vector_norm(g, dim=(-2, -1), keepdim=True)
    for steps in (1, 3, 5):
        torch.testing.assert_close(_ns_gram(x, steps), _ns_plain(x, steps), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(48, 48), (32, 128), (128, 32)])
@pytest.mark.parametrize("steps", [3, 5])
def test_singular_values_land_in_a_band(shape: tuple[int, int], steps: int) -> None:
    # Singular values spanning two decades all end in the quintic's band around 1 (not exactly 1:
    # Muon only needs the direction). Three steps still lift the smallest ones well off zero.
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen))
    g = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T
    sv = torch.linalg.svdvals(orthogonalize(g, steps=steps))
    low = 0.6 if steps == 5 else 0.1
    assert sv.min() > low and sv.max() < 1.25, (sv.min(), sv.max())


def test_orthogonalize_is_transpose_equivariant_and_keeps_dtype() -> None:
    g = _ill_conditioned(24, 80).double()
    out = orthogonalize(g)
    assert out.dtype == torch.float64
    torch.testing.assert_close(orthogonalize(g.mT), out.mT)
    with pytest.raises(ValueError):
        orthogonalize(torch.ones(5))


class _Net(nn.Module):
    """Hidden matrices of several shapes: square, wide, tall (same shape up to a transpose), 3-D."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(16, 16, bias=False)
        self.k = nn.Linear(16, 16, bias=False)
        self.up = nn.Linear(16, 48, bias=False)  # weight [48, 16]: tall
        self.down = nn.Linear(48, 16, bias=False)  # weight [16, 48]: wide, batched with up
        self.conv = nn.Parameter(torch.randn(8, 4, 3) * 0.1)  # flattened to [8, 12]
        self.norm = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q(x) * torch.sigmoid(self.k(x))
        h = self.down(torch.relu(self.up(h))) * self.norm
        return h.sum() + (self.conv ** 2).sum() * (x.mean() ** 2)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=gen)
        model(x).pow(2).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _muon(model: nn.Module, batched: bool) -> Muon:
    mats = [p for p in model.parameters() if p.ndim >= 2]
    return Muon(mats, lr=0.02, momentum=0.95, weight_decay=0.01, batched=batched)


def test_muon_batched_and_unbatched_give_the_same_weights() -> None:
    torch.manual_seed(0)
    a = _Net()
    b = copy.deepcopy(a)
    _train(a, _muon(a, batched=True), steps=5)
    _train(b, _muon(b, batched=False), steps=5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(a.q.weight, _Net().q.weight)  # it did train


def test_muon_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    a = _Net()
    opt_a = _muon(a, batched=True)
    _train(a, opt_a, steps=3)
    b = copy.deepcopy(a)
    opt_b = _muon(b, batched=False)  # the state layout does not depend on batching
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["ns_steps"] == 5
    _train(a, opt_a, steps=3, seed=2)
    _train(b, opt_b, steps=3, seed=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_build_optimizer_muon_roles_and_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 50))
    cfg = OptimSection(name="muon", muon_ns_steps=3)
    opt = build_optimizer(model, cfg, vocab_size=50, device=torch.device("cpu"))
    muon = opt.optimizers["muon"]
    assert [p.shape for g in muon.param_groups for p in g["params"]] == [torch.Size([16, 16])]
    assert muon.param_groups[0]["ns_steps"] == 3
    x = torch.randint(0, 50, (4, 8))
    model(x).logsumexp(-1).mean().backward()
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"muon", "adamw"}
    opt2 = build_optimizer(copy.deepcopy(model), cfg, vocab_size=50, device=torch.device("cpu"))
    opt2.load_state_dict(state)
    assert opt2.state_dict()["muon"]["state"].keys() == state["muon"]["state"].keys()


def test_muon_rejects_zero_ns_steps() -> None:
    with pytest.raises(ValueError):
        Muon([nn.Parameter(torch.zeros(4, 4))], ns_steps=0)

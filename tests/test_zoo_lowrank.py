"""`lowrank`: full rank represents the dense llama (SVD init), truncation is Eckart-Young optimal,
rank clamping, inits, r(m+n)+r parameters, FLOPs analytic == measured, lumi check."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.errors import LumiError
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.lowrank import LowRank, LowRankConfig, LowRankLinear, lowrank_param_formula
from lumi.models.registry import build_model, make_config

V = 97


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [
    dict(n_layers=2, d_model=32, n_heads=2),
    dict(n_layers=2, d_model=48, n_heads=4, n_kv_heads=2, mlp="relu2", ffn_hidden=80, qk_norm=True),
])
@pytest.mark.parametrize("rank", [None, 4096])  # null and "larger than any dimension" both mean full rank
def test_full_rank_svd_init_reproduces_dense_llama(shape, rank):
    torch.manual_seed(0)
    dense = Llama(LlamaConfig(vocab_size=V, init_std=0.1, **shape)).eval()
    low = LowRank(LowRankConfig(vocab_size=V, attn_rank=rank, mlp_rank=rank, **shape)).eval()
    low.load_dense_weights(dense)
    x = tokens(2, 24)
    with torch.no_grad():
        ref, out = dense(x), low(x)
    assert ref.abs().max() > 1.0  # a non-trivial function
    assert (out - ref).abs().max() < 1e-4


def test_low_rank_layer_is_the_best_rank_r_approximation():
    torch.manual_seed(1)
    w = torch.randn(40, 24)
    sv = torch.linalg.svdvals(w.double())
    for r in (1, 5, 24):
        layer = LowRankLinear(24, 40, r)
        layer.set_from_dense(w)
        err = torch.linalg.matrix_norm((layer.dense_weight() - w).double())
        assert err.item() == pytest.approx(math.sqrt(float((sv[r:] ** 2).sum())), abs=1e-4)  # Eckart-Young
        x = torch.randn(3, 24)
        assert torch.allclose(layer(x), x @ layer.dense_weight().T, atol=1e-5)
    assert LowRankLinear(24, 40, 100).rank == 24  # clamped to min(m, n)


def test_orthogonal_and_svd_inits():
    torch.manual_seed(2)
    model = build_model("lowrank", "nano", vocab_size=V)
    q = model.blocks[0].attn.q_proj
    assert isinstance(q, LowRankLinear) and q.rank == 16
    assert torch.allclose(q.u.T @ q.u, torch.eye(16), atol=1e-5)
    assert torch.allclose(q.vt @ q.vt.T, torch.eye(16), atol=1e-5)
    assert torch.allclose(q.s, torch.full((16,), 0.02 * math.sqrt(64)))
    down = model.blocks[0].mlp.down_proj  # residual projection: std / sqrt(2 * n_layers)
    assert torch.allclose(down.s, torch.full((32,), 0.02 / math.sqrt(4) * math.sqrt(256)))
    torch.manual_seed(3)
    svd = build_model("lowrank", "nano", dict(factor_init="svd"), vocab_size=V)
    s = svd.blocks[0].mlp.up_proj.s
    assert torch.all(s[:-1] >= s[1:])  # singular values of a dense draw, sorted
    zero = build_model("lowrank", "nano", dict(zero_init_proj=True), vocab_size=V)
    assert torch.count_nonzero(zero.blocks[1].attn.o_proj.s) == 0


@pytest.mark.parametrize("overrides", [{}, dict(attn_rank=None, mlp_rank=None), dict(attn_rank=3, mlp_rank=1000),
                                       dict(n_kv_heads=1, mlp="gelu", tie_embeddings=True, qk_norm=True)])
def test_param_formula_matches_module(overrides):
    model = build_model("lowrank", "nano", overrides, vocab_size=V)
    counts = model.param_counts()
    formula = lowrank_param_formula(model.config)
    assert (counts.total, counts.non_embedding) == (formula["total"], formula["non_embedding"])
    per_linear = [m.rank * (m.in_features + m.out_features) + m.rank for m in model.modules()
                  if isinstance(m, LowRankLinear)]
    assert len(per_linear) == (4 + (3 if model.config.mlp == "swiglu" else 2)) * model.config.n_layers
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    assert counts.non_embedding == sum(per_linear) + norms


def test_embedding_and_head_stay_dense():
    model = build_model("lowrank", "micro", vocab_size=V)
    assert isinstance(model.lm_head, torch.nn.Linear) and isinstance(model.embed, torch.nn.Embedding)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.blocks.modules())


@pytest.mark.parametrize("overrides", [{}, dict(attn_rank=8, mlp_rank=None, n_kv_heads=1)])
def test_flops_analytic_equals_measured(overrides):
    model = build_model("lowrank", "micro", overrides, vocab_size=512)
    x = tokens(2, 128) % 512
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert counter.get_total_flops() / x.numel() == model.flops_per_token(128)


@pytest.mark.parametrize("field,value", [("attn_rank", 0), ("mlp_rank", -2), ("factor_init", "kaiming")])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(LumiError, match=field):
        make_config("lowrank", "nano", {field: value})

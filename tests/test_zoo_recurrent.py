"""`recurrent`: loops=1 is llama bitwise, loops=k against a hand-written reference, zero-init passes
are the identity, unique vs effective depth, formula == module, FLOPs analytic == measured, cache."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.errors import LumiError
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.recurrent import Recurrent, RecurrentConfig, recurrent_param_formula
from lumi.models.registry import build_model, make_config

V = 89
SHAPE = dict(vocab_size=V, n_layers=4, d_model=32, n_heads=2)


def tiny(**kw) -> Recurrent:
    cfg = RecurrentConfig(**{**SHAPE, **kw})
    cfg.validate()
    return Recurrent(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_one_loop_reproduces_llama_bitwise():
    torch.manual_seed(0)
    llama = Llama(LlamaConfig(**SHAPE)).eval()
    rec = tiny(loops=1, loop_start=1, loop_end=3).eval()
    rec.load_state_dict(llama.state_dict(), strict=True)  # same parameter names, nothing extra
    x = tokens(3, 25)
    with torch.no_grad():
        assert torch.equal(rec(x), llama(x))
    assert rec.param_counts() == llama.param_counts()
    assert rec.flops_per_token(64) == llama.flops_per_token(64)
    # same seed, same init too (residual scaling uses the effective depth, which is the depth here)
    torch.manual_seed(5)
    a = Llama(LlamaConfig(**SHAPE))
    torch.manual_seed(5)
    b = tiny(loops=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def reference_forward(model: Recurrent, x: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Blocks applied in ``order``; a block's k-th reappearance uses extra-pass scales k-1."""
    h = model.embed(x)
    seen: dict[int, int] = {}
    for i in order:
        blk = model.blocks[i]
        p = seen.get(i, 0)
        seen[i] = p + 1
        a, m = (1.0, 1.0) if p == 0 else model.pass_scales(p, i)
        h = h + a * blk.attn(blk.attn_norm(h))
        h = h + m * blk.mlp(blk.mlp_norm(h))
    return model.lm_head(model.norm(h))


@pytest.mark.parametrize("per_channel", [True, False])
def test_three_loops_match_reference_order_and_scales(per_channel):
    torch.manual_seed(1)
    model = tiny(loops=3, loop_start=1, loop_end=3, per_channel_scales=per_channel).eval()
    with torch.no_grad():
        model.attn_scales.uniform_(0.5, 1.5)
        model.mlp_scales.uniform_(0.5, 1.5)
    assert [i for i, _ in model.config.virtual_layers()] == [0, 1, 2, 1, 2, 1, 2, 3]
    x = tokens(2, 13)
    with torch.no_grad():
        assert torch.allclose(model(x), reference_forward(model, x, [0, 1, 2, 1, 2, 1, 2, 3]), atol=1e-6)
    width = 32 if per_channel else 1
    assert model.scales_shape == (2, 2, width)
    assert model.attn_scales.ndim == 1  # optimizers treat it as a vector (no weight decay, no Muon)
    a, m = model.pass_scales(2, 1)  # third pass of block 1
    assert torch.equal(a, model.attn_scales.view(2, 2, width)[1, 0])


def test_zero_initialised_extra_passes_are_the_identity():
    torch.manual_seed(2)
    llama = Llama(LlamaConfig(**SHAPE)).eval()
    rec = tiny(loops=3, pass_scale_init=0.0).eval()
    missing = rec.load_state_dict(llama.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["attn_scales", "mlp_scales"]
    x = tokens(2, 11)
    with torch.no_grad():
        assert torch.equal(rec(x), llama(x))
    rec.train()
    rec(x).sum().backward()
    assert rec.attn_scales.grad.abs().sum() > 0 and rec.mlp_scales.grad.abs().sum() > 0  # they can learn


def test_unique_and_effective_depth():
    model = tiny(loops=2)  # default span: the middle two layers
    assert model.config.span == (1, 3)
    assert (model.unique_depth, model.effective_depth) == (4, 6)
    assert model.stats() == {"unique_depth": 4.0, "effective_depth": 6.0}
    assert tiny(n_layers=11, loops=2).config.span == (4, 6)  # PR #686: layers 4,5 of 11 -> 13 virtual
    assert tiny(n_layers=11, loops=2).effective_depth == 13


@pytest.mark.parametrize("overrides", [dict(loops=1), dict(loops=3), dict(loops=2, per_channel_scales=False),
                                       dict(loops=2, loop_start=0, loop_end=4, n_kv_heads=1, tie_embeddings=True)])
def test_param_formula_matches_module(overrides):
    model = tiny(**overrides)
    counts = model.param_counts()
    formula = recurrent_param_formula(model.config)
    assert (counts.total, counts.non_embedding) == (formula["total"], formula["non_embedding"])


def test_flops_scale_with_effective_depth_and_match_measurement():
    model = build_model("recurrent", "micro", dict(loops=3), vocab_size=512)  # 4 unique, 8 effective layers
    x = tokens(2, 128) % 512
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert counter.get_total_flops() / x.numel() == model.flops_per_token(128)
    llama = build_model("llama", "micro", vocab_size=512)
    head = 6.0 * 512 * 128
    assert model.flops_per_token(128) - head == pytest.approx(2 * (llama.flops_per_token(128) - head))


def test_cached_decoding_matches_full_forward():
    torch.manual_seed(3)
    model = tiny(loops=3).eval()
    x = tokens(2, 15)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        parts = [model(x[:, :4], cache)] + [model(x[:, i:i + 1], cache) for i in range(4, 15)]
    assert len(cache.layers) == model.effective_depth
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("overrides,field", [(dict(loops=0), "loops"), (dict(loop_start=3, loop_end=3), "loop_start"),
                                             (dict(loop_start=0, loop_end=9), "loop_end")])
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(LumiError, match=field):
        make_config("recurrent", "micro", overrides)

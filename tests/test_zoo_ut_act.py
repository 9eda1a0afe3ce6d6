"""`ut_act`: ACT halting arithmetic, weighted output, ponder cost, equivalences, causality, FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.check import check_model
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.ut_act import UTAct, UTActConfig, ut_act_param_formula

V = 97


def tiny(**kw) -> UTAct:
    base = dict(vocab_size=V, n_layers=1, d_model=32, n_heads=2, max_steps=4)
    base.update(kw)
    cfg = UTActConfig(**base)
    cfg.validate()
    return UTAct(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def constant_halting(model: UTAct, p: float) -> None:
    """Every position emits the same halting probability p at every step."""
    with torch.no_grad():
        model.halt.weight.zero_()
        model.halt.bias.fill_(math.log(p / (1 - p)))


def reference_output(model: UTAct, x: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Logits from sum_n w_n s_n with s_n = step(s_{n-1} + e_n), written out by hand."""
    s = model.embed(x)
    out = torch.zeros_like(s)
    for n, w in enumerate(weights):
        s = model.step(s + model.step_embed[n])
        out = out + w * s
    return model.lm_head(model.norm(out))


@pytest.mark.parametrize("p, steps, remainder", [(0.3, 4, 0.1), (0.73, 2, 0.27), (0.15, 6, 0.25)])
def test_halting_steps_remainder_and_weighted_output(p, steps, remainder):
    # p=0.3: cumulative .3 .6 .9 1.2 >= .99 -> N=4, R=1-.9; p=0.15: forced halt at max_steps=6, R=1-5*.15
    torch.manual_seed(0)
    model = tiny(max_steps=6, ponder_weight=0.5).eval()
    constant_halting(model, p)
    x = tokens(2, 9)
    with torch.no_grad():
        logits = model(x)
    st = model.stats()
    assert st["act_steps_mean"] == st["act_steps_max"] == steps
    assert st["act_remainder_mean"] == pytest.approx(remainder, abs=1e-6)
    assert model.aux_losses()["ponder"].item() == pytest.approx(0.5 * (steps + remainder), abs=1e-6)
    weights = [p] * (steps - 1) + [1 - p * (steps - 1)]
    with torch.no_grad():
        assert torch.allclose(logits, reference_output(model, x, weights), atol=1e-5)


def test_does_not_halt_immediately_at_init():
    model = tiny(max_steps=4)
    model(tokens(2, 16))
    assert model.stats()["act_steps_mean"] == 2.0  # bias 1.0: p ~ 0.73 -> two steps


def test_ponder_gradient_reaches_halting_unit():
    model = tiny()
    model(tokens(2, 8))
    model.aux_losses()["ponder"].backward()
    assert model.halt.bias.grad is not None and model.halt.bias.grad.abs().item() > 0
    assert model.halt.bias.grad.item() < 0  # raising p lowers R, the differentiable part of N + R


def test_one_step_equals_llama():
    torch.manual_seed(1)
    model = tiny(n_layers=2, max_steps=1).eval()
    with torch.no_grad():
        model.step_embed.zero_()
    dense = Llama(LlamaConfig(vocab_size=V, n_layers=2, d_model=32, n_heads=2)).eval()
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["halt.bias", "halt.weight", "step_embed"]
    x = tokens(2, 11)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))
    assert model.stats()["act_steps_mean"] == 1.0


def varied_halting(model: UTAct) -> UTAct:
    """Strong random halting weights so positions halt after different numbers of steps."""
    with torch.no_grad():
        model.halt.weight.normal_(0, 8.0)
        model.halt.bias.fill_(-0.5)
    return model


def test_early_exit_gives_identical_output():
    torch.manual_seed(2)
    a = varied_halting(tiny(max_steps=8)).eval()
    b = tiny(max_steps=8, early_exit=True).eval()
    b.load_state_dict(a.state_dict())
    x = tokens(2, 24)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    sa, sb = a.stats(), b.stats()
    assert sa["steps_run"] == 8 and sb["steps_run"] == sa["act_steps_max"] > 1
    # with every position halting at step 4, early exit runs 4 of the 8 steps
    constant_halting(a, 0.3)
    constant_halting(b, 0.3)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert b.stats()["steps_run"] == 4 and a.stats()["steps_run"] == 8


@pytest.mark.parametrize("freeze", [True, False])
def test_causal_with_per_position_halting(freeze):
    def factory() -> UTAct:
        return varied_halting(tiny(max_steps=5, freeze_halted=freeze))

    torch.manual_seed(0)
    probe = factory()
    probe(tokens(2, 32))
    st = probe.stats()
    assert st["act_steps_max"] > st["act_steps_mean"] > 1  # positions really halt at different steps
    report = check_model(factory, label="ut_act:varied", only=["causality"])
    assert report.passed, report.summary()


def test_param_formula():
    for kw in [{}, dict(n_layers=2, tie_embeddings=True, qk_norm=True, max_steps=7)]:
        model = tiny(**kw)
        f = ut_act_param_formula(model.config)
        pc = model.param_counts()
        assert pc.total == sum(p.numel() for p in model.parameters()) == f["total"]
        assert pc.non_embedding == f["non_embedding"]


def test_flops_analytic_equals_measured():
    model = tiny(max_steps=3)
    x = tokens(2, 64)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()) + model.aux_losses()["ponder"]
        loss.backward()
    assert counter.get_total_flops() / x.numel() == model.flops_per_token(64)


def test_validation_names_the_field():
    from lumi.errors import LumiError
    from lumi.models.registry import make_config

    with pytest.raises(LumiError, match="max_steps"):
        make_config("ut_act", "nano", {"max_steps": 0})
    with pytest.raises(LumiError, match="act_eps"):
        make_config("ut_act", "nano", {"act_eps": 1.5})


def test_run_checks_passes():
    from lumi.check import run_checks

    report = run_checks("ut_act", "nano", vocab_size=256)
    assert report.passed, report.summary()

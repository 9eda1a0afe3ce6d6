"""`vocabspace`: the mixers equal their defining formulas, parameter and FLOP formulas are exact, the
source's parameter counts and its ~23-nat initial loss are reproduced, and lumi check accepts ours
and rejects the reversed-mask v8 (the pre-daaff06 bug) at a named position."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lumi.check import run_checks
from lumi.errors import LumiError
from lumi.models import registry
from lumi.models.registry import build_model, make_config
from lumi.models.vocabspace import (
    ChannelMixer,
    DecayedInteraction,
    DepthwiseCausalConv,
    OneHotInput,
    VocabSpace,
    fourier_basis,
    vocabspace_param_formula,
)

PLUGIN = Path(__file__).parent / "plugins" / "leaky_vocabspace.py"


def measured_training_flops_per_token(model: VocabSpace, tokens: torch.Tensor) -> float:
    """Forward + backward of the LM loss under FlopCounterMode, per token (what lumi check does)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        logits = model(tokens)
        v = logits.shape[-1]
        F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1)).backward()
    return counter.get_total_flops() / tokens.numel()


# -- the mixers are their formulas -----------------------------------------------------------

def test_one_hot_input_is_rms_normalised_and_weightless():
    emb = OneHotInput(50)
    tokens = torch.tensor([[0, 7, 49]])
    x = emb(tokens)
    assert torch.equal(x, F.one_hot(tokens, 50).float() * math.sqrt(50))
    assert torch.allclose(x.pow(2).mean(-1), torch.ones(1, 3))  # RMS exactly 1: the "RMS-normalised one-hot"
    assert isinstance(emb, torch.nn.Embedding)  # so lumi check's gradient probe finds the input
    assert list(emb.parameters()) == [] and emb.state_dict() == {}
    assert torch.equal(F.embedding(tokens, emb.weight), x)  # weight is the equivalent table sqrt(V) I


def test_interaction_equals_its_definition_over_strictly_earlier_positions():
    torch.manual_seed(0)
    c = make_config("vocabspace", "interaction-nano", {"decay_init": 0.7}, vocab_size=11)
    mixer = DecayedInteraction(c).double()
    with torch.no_grad():
        mixer.q.normal_()
        mixer.k.normal_()
    n = torch.randn(2, 6, 11, dtype=torch.float64)
    out = mixer(n)
    decay = torch.sigmoid(mixer.decay_logit.detach())
    assert float(decay) == pytest.approx(1 / (1 + math.exp(-0.7)))
    expected = torch.zeros_like(n)
    for t in range(6):
        for s in range(t):  # s < t only: never t itself, never later
            score = ((n[:, t] * mixer.q) * (n[:, s] * mixer.k)).sum(-1, keepdim=True)
            expected[:, t] += score * decay ** (t - s - 1) * n[:, s]
    expected *= mixer.out_scale  # initialised to mixer_scale = 0.1
    assert float(mixer.out_scale.detach()) == pytest.approx(0.1)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))  # nothing precedes position 0


def test_depthwise_causal_conv_equals_its_definition_and_gradients_match_native_conv():
    torch.manual_seed(0)
    c = make_config("vocabspace", "conv-nano", {"kernel_size": 3}, vocab_size=5)
    conv = DepthwiseCausalConv(c).double()
    with torch.no_grad():
        conv.bias.normal_()
    n = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    out = conv(n)
    w = conv.weight[:, 0]  # [V, K]; tap j multiplies position t - (K - 1) + j
    expected = conv.bias.expand(2, 7, 5).clone()
    for t in range(7):
        for j in range(3):
            src = t - 2 + j
            if src >= 0:
                expected[:, t] += w[:, j] * n[:, src]
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    # The hand-written backward (exact FLOP counting) equals autograd through F.conv1d.
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (n, conv.weight, conv.bias), g)
    native = F.conv1d(F.pad(n.transpose(1, 2), (2, 0)), conv.weight, conv.bias, groups=5).transpose(1, 2)
    theirs = torch.autograd.grad(native, (n, conv.weight, conv.bias), g)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_fourier_read_write_matrices():
    c = make_config("vocabspace", "conv-paper", {"n_channels": 8, "n_fourier_basis": 3}, vocab_size=40)
    basis = fourier_basis(40, 3)
    i = torch.arange(40, dtype=torch.float64) / 40
    assert basis.shape == (40, 6)
    assert torch.allclose(basis[:, 4].double(), torch.cos(2 * math.pi * 3 * i), atol=1e-6)  # f = 3, cos
    assert torch.allclose(basis[:, 5].double(), torch.sin(2 * math.pi * 3 * i), atol=1e-6)  # f = 3, sin
    mixer = ChannelMixer(c)
    read, write = mixer.read_write(basis)
    assert read.shape == (40, 8) and write.shape == (8, 40)
    assert torch.allclose(read.sum(0), torch.ones(8))  # each channel reads a distribution over V
    assert torch.allclose(write, (basis @ mixer.write_coeffs).t())


# -- accounting -------------------------------------------------------------------------------

CONFIGS = [
    ("conv-nano", {}, 97),
    ("conv-micro", {}, 256),
    ("conv-paper", {"n_steps": 2, "n_channels": 16}, 64),
    ("interaction-nano", {}, 97),
    ("interaction-micro", {"rank": 3}, 256),
]


@pytest.mark.parametrize("preset,overrides,vocab", CONFIGS)
def test_param_formula_matches_module(preset, overrides, vocab):
    model = build_model("vocabspace", preset, overrides, vocab_size=vocab)
    formula = vocabspace_param_formula(model.config)
    counts = model.param_counts()
    assert counts.total == formula["total"] == sum(p.numel() for p in model.parameters())
    assert counts.non_embedding == counts.total  # no embedding matrix, no head


def test_source_parameter_counts_are_reproduced():
    # ARCHITECTURES.md §1.1: v2_conv 353K params, v8_lowrank_vv at rank 8 163,881 params (sp1024).
    assert build_model("vocabspace", "conv-paper", vocab_size=1024).param_counts().total == 353_289
    assert build_model("vocabspace", "interaction-paper", vocab_size=1024).param_counts().total == 163_881


@pytest.mark.parametrize("preset,overrides,vocab", [c for c in CONFIGS if "paper" not in c[0]])
@pytest.mark.parametrize("seq_len", [1, 9, 128])
def test_flops_analytic_equals_measured(preset, overrides, vocab, seq_len):
    torch.manual_seed(0)
    model = build_model("vocabspace", preset, overrides, vocab_size=vocab)
    tokens = torch.randint(0, vocab, (2, seq_len))
    assert model.flops_per_token(seq_len) == measured_training_flops_per_token(model, tokens)


def test_flops_fourier_read_adds_a_per_batch_weight_generation_cost():
    torch.manual_seed(0)
    model = build_model("vocabspace", "conv-paper", {"n_steps": 2, "n_channels": 16}, vocab_size=64)
    tokens = torch.randint(0, 64, (3, 20))
    measured = measured_training_flops_per_token(model, tokens) * tokens.numel()
    assert model.weight_generation_flops() == 2 * 16 * 64 * 16 * 16  # n_steps * 16 V F C
    assert measured == model.flops_per_token(20) * tokens.numel() + model.weight_generation_flops()


def test_interaction_flops_grow_as_4_T_V_per_step():
    model = build_model("vocabspace", "interaction-paper", vocab_size=1024)
    # d/dT of training FLOPs per token: 3 x 8 steps x 4V, minus the first step's values input-grad 2V.
    slope = model.flops_per_token(1024) - model.flops_per_token(1023)
    assert slope == 3 * 8 * 4 * 1024 - 2 * 1024
    assert model.flops_per_token(1024) > 100 * 6 * model.param_counts().total  # 6N is meaningless here


# -- initial loss, any length -----------------------------------------------------------------

def _loss_on_random_tokens(model: VocabSpace, vocab: int) -> float:
    tokens = torch.randint(0, vocab, (4, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(tokens)
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1)))


@pytest.mark.parametrize("preset", ["conv-micro", "interaction-micro", "interaction-paper"])
def test_initial_loss_is_ln_v(preset):
    torch.manual_seed(0)
    loss = _loss_on_random_tokens(build_model("vocabspace", preset, vocab_size=1024), 1024)
    assert abs(loss - math.log(1024)) < 0.01


@pytest.mark.parametrize("preset", ["conv-micro", "interaction-nano"])
def test_source_init_predicts_the_current_token_at_about_23_nats(preset):
    # logit_scale_init = sqrt(V) is the source's output scalar of 1: the one-hot (peak sqrt(V) = 32
    # after the final norm) gives the CURRENT token logit 30 tanh(32 / 30) = 23.6 -> ~23-nat loss.
    # (Deeper interaction stacks dilute the one-hot at init, because q = k = 1 makes the cross mixer's
    # gain ~V on the dense part of the state, so they start lower.)
    torch.manual_seed(0)
    model = build_model("vocabspace", preset, {"logit_scale_init": 32.0}, vocab_size=1024)
    assert 23.0 < _loss_on_random_tokens(model, 1024) < 24.0


@pytest.mark.parametrize("preset", ["conv-nano", "interaction-nano"])
def test_any_length_and_prefix_consistency(preset):
    torch.manual_seed(0)
    model = build_model("vocabspace", preset, vocab_size=31).eval()
    tokens = torch.randint(0, 31, (2, 13))
    with torch.no_grad():
        full = model(tokens)
        for t in (1, 2, 7):
            assert torch.allclose(model(tokens[:, :t]), full[:, :t], atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(LumiError, match="'variant'.*conv, interaction"):
        make_config("vocabspace", None, {"variant": "graph"})
    with pytest.raises(LumiError, match="'read'"):
        make_config("vocabspace", None, {"read": "dct"})
    with pytest.raises(LumiError, match="'rank'"):
        make_config("vocabspace", "interaction-nano", {"rank": 0})
    with pytest.raises(LumiError, match="'logit_scale_init'"):
        make_config("vocabspace", None, {"logit_scale_init": 0.0})


# -- lumi check ---------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["conv-nano", "interaction-nano"])
def test_run_checks_passes(preset):
    report = run_checks("vocabspace", preset)
    assert report.passed, report.summary()
    assert report.result("causality_gradient").status == "pass"  # the one-hot input is probed, not skipped
    assert report.result("flops").value == 0.0  # exact


@pytest.fixture
def leaky_vocabspace(monkeypatch):
    # A private copy of the (fully loaded) registry, so the broken model never reaches later sweeps.
    registry._load_builtins()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert registry.load_model_file(PLUGIN) == ["leaky_vocabspace"]
    return "leaky_vocabspace"


def test_reversed_mask_variant_is_rejected_at_a_named_position_and_ours_passes(leaky_vocabspace):
    leaky = run_checks(leaky_vocabspace, "nano", only=["causality"])
    assert not leaky.passed
    for name in ("causality_perturbation", "causality_gradient"):
        result = leaky.result(name)
        assert result.status == "FAIL"
        assert re.search(r"LEAK at position \d+", result.detail), result.detail
    # The very first cut already leaks: position 0 reads position 1 through the reversed mask.
    assert leaky.result("causality_perturbation").detail.startswith("LEAK at position 0: changing the tokens "
                                                                    "after position t=0")
    ours = run_checks("vocabspace", "interaction-nano", only=["causality"])
    assert ours.passed, ours.summary()


def _held_out_loss_after_training_on_random_tokens(name: str, preset: str, vocab: int = 64) -> float:
    torch.manual_seed(0)
    model = build_model(name, preset, vocab_size=vocab)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):  # a fresh batch of uniformly random tokens every step
        x = torch.randint(0, vocab, (8, 32), generator=g)
        loss = F.cross_entropy(model(x)[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        return float(F.cross_entropy(model(x)[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1)))


def test_reversed_mask_beats_chance_on_random_tokens_which_only_a_leak_can(leaky_vocabspace):
    # Uniform random tokens are unpredictable: a causal model cannot go below ln V on unseen ones.
    # The reversed mask reads the next token, which is how the published v8 reached 0.467 BPB.
    ln_v = math.log(64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 300 tiny steps: threading only adds overhead (and stalls on a busy machine)
    try:
        causal = _held_out_loss_after_training_on_random_tokens("vocabspace", "interaction-nano")
        leaky = _held_out_loss_after_training_on_random_tokens(leaky_vocabspace, "nano")
    finally:
        torch.set_num_threads(threads)
    assert causal > ln_v - 0.05  # measured 4.159 = ln 64
    assert leaky < 0.5 * ln_v  # measured 0.66

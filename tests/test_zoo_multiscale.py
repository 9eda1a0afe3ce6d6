"""`multiscale`: windowed causal means vs a naive reference, NoPE attention pattern, parameter
matching with llama, formula == module, FLOPs analytic == measured, cached decoding, lumi check."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.errors import LumiError
from lumi.models.llama import llama_param_formula
from lumi.models.multiscale import MultiScale, MultiScaleConfig, MultiScaleMixer, NoPEBlock, multiscale_param_formula
from lumi.models.registry import build_model, make_config

V = 101


def tiny(**kw) -> MultiScale:
    base = dict(vocab_size=V, n_layers=4, d_model=32, n_heads=2, windows="1,3,8", attn_every=2)
    base.update(kw)
    cfg = MultiScaleConfig(**base)
    cfg.validate()
    return MultiScale(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def naive_mixer(mixer: MultiScaleMixer, x: torch.Tensor, zero_pad: bool) -> torch.Tensor:
    """The definition, one position and window at a time."""
    v = mixer.v_proj(x) if mixer.v_proj is not None else x
    weights = torch.softmax(mixer.scale_logits.view(len(mixer.windows), -1), dim=0)
    out = torch.zeros_like(v)
    for t in range(x.shape[1]):
        for s, w in enumerate(mixer.windows):
            lo = max(0, t - w + 1)
            window = v[:, lo:t + 1]
            mean = window.sum(1) / (w if zero_pad else window.shape[1])
            out[:, t] += weights[s] * mean
    return mixer.o_proj(out)


@pytest.mark.parametrize("early", ["available", "zero_pad"])
@pytest.mark.parametrize("fusion", ["channel", "scalar"])
def test_mixer_matches_naive_windowed_means(early, fusion):
    torch.manual_seed(0)
    cfg = MultiScaleConfig(vocab_size=V, d_model=16, n_heads=2, windows="1,4,16,64", early_positions=early,
                           fusion=fusion)
    mixer = MultiScaleMixer(cfg)
    with torch.no_grad():
        mixer.scale_logits.normal_()  # unequal fusion weights
    assert mixer.scale_logits.ndim == 1  # optimizers treat it as a vector (no weight decay, no Muon)
    w = mixer.fusion_weights()
    assert w.shape == (4, 16 if fusion == "channel" else 1)
    assert torch.allclose(w.sum(0), torch.ones(w.shape[1]))
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        assert torch.allclose(mixer(x), naive_mixer(mixer, x, early == "zero_pad"), atol=1e-5)


def test_mixer_without_value_projection_and_window_one_is_identity_mix():
    torch.manual_seed(1)
    cfg = MultiScaleConfig(vocab_size=V, d_model=16, n_heads=2, windows="1", value_proj=False)
    mixer = MultiScaleMixer(cfg)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mixer.o_proj(x), atol=1e-6)  # a 1-window mean is the position itself


def test_attention_every_kth_layer_and_no_positional_encoding():
    model = tiny(n_layers=8, attn_every=4)
    kinds = [type(b).__name__ for b in model.blocks]
    assert kinds == ["MultiScaleBlock"] * 3 + ["NoPEBlock"] + ["MultiScaleBlock"] * 3 + ["NoPEBlock"]
    assert all(b.attn.rope is None for b in model.blocks if isinstance(b, NoPEBlock))
    assert not any(isinstance(m, torch.nn.Embedding) and m is not model.embed for m in model.modules())
    assert model.stats() == {"attention_layers": 2.0}
    assert tiny(attn_every=0).config.n_attention_layers == 0


def test_nope_attention_sees_an_unordered_context():
    # No positional encoding: a model of one NoPE attention layer sees the context as a set, so
    # swapping two earlier tokens leaves the last position's logits unchanged (llama's RoPE does not).
    torch.manual_seed(2)
    x = tokens(1, 12)
    swapped = x.clone()
    swapped[0, [1, 6]] = x[0, [6, 1]]
    nope = tiny(n_layers=1, attn_every=1, init_std=0.3).eval()  # peaked attention: order would matter
    rope = build_model("llama", None, dict(n_layers=1, d_model=32, n_heads=2), vocab_size=V).eval()
    rope.load_state_dict(nope.state_dict())  # same weights, only the positional encoding differs
    with torch.no_grad():
        assert torch.allclose(nope(x)[:, -1], nope(swapped)[:, -1], atol=1e-5)
        assert not torch.allclose(rope(x)[:, -1], rope(swapped)[:, -1], atol=1e-4)


@pytest.mark.parametrize("overrides", [
    {},
    dict(fusion="scalar", value_proj=False),
    dict(qk_norm=True, tie_embeddings=True, n_kv_heads=1, mlp="relu2", ffn_hidden=40),
])
def test_param_formula_matches_module(overrides):
    model = tiny(**overrides)
    counts = model.param_counts()
    formula = multiscale_param_formula(model.config)
    assert counts.total == formula["total"]
    assert counts.non_embedding == formula["non_embedding"]


def test_micro_preset_matches_llama_micro_parameters():
    ms = make_config("multiscale", "micro", vocab_size=4096)
    ll = make_config("llama", "micro", vocab_size=4096)
    assert multiscale_param_formula(ms) == llama_param_formula(ll)  # exact, total and non-embedding
    for preset in ("nano", "micro_deep", "tiny", "small"):
        a = multiscale_param_formula(make_config("multiscale", preset, vocab_size=4096))["non_embedding"]
        b = llama_param_formula(make_config("llama", preset.replace("_deep", ""), vocab_size=4096))["non_embedding"]
        assert abs(a - b) / b < 0.002, (preset, a, b)


@pytest.mark.parametrize("overrides", [{}, dict(value_proj=False, n_kv_heads=1)])
def test_flops_analytic_equals_measured(overrides):
    model = build_model("multiscale", "micro", overrides, vocab_size=512)
    x = tokens(2, 128)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x % 512).sum().backward()
    assert counter.get_total_flops() / x.numel() == model.flops_per_token(128)


def test_cached_decoding_matches_full_forward():
    torch.manual_seed(3)
    model = tiny(n_layers=4, attn_every=2).eval()  # mixers and NoPE attention, windows up to 8
    x = tokens(2, 23)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        parts = [model(x[:, :5], cache)] + [model(x[:, i:i + 1], cache) for i in range(5, 23)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert cache.position == 23
    assert cache.layers[0].v.shape[1] == 7  # a mixer keeps only max(windows) - 1 values


def test_causality_exact_and_cumsum_long_sequence_stable():
    torch.manual_seed(4)
    model = tiny(windows="1,4,16,64").eval()
    x = tokens(1, 300)
    y = x.clone()
    y[:, 150:] = (y[:, 150:] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :150], b[:, :150])
    assert not torch.allclose(a[:, 150:], b[:, 150:])


@pytest.mark.parametrize("field,value", [("windows", "1,0,4"), ("windows", "a,b"), ("windows", "4,4"),
                                         ("fusion", "mean"), ("early_positions", "skip"), ("attn_every", -1)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(LumiError, match=field):
        make_config("multiscale", "nano", {field: value})

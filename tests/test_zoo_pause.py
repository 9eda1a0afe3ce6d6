"""`pause`: layout of pauses and read positions, pauses before the predicting position, causality."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.check import run_checks
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.pause import Pause, PauseConfig, internal_length, pause_layout, pause_param_formula

V = 97


def tiny(**kw) -> Pause:
    base = dict(vocab_size=V, n_layers=2, d_model=32, n_heads=2, n_pause=2, pause_every=4)
    base.update(kw)
    cfg = PauseConfig(**base)
    cfg.validate()
    return Pause(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_layout_exact():
    # T=9, every 4 real tokens 2 pauses: r0 r1 r2 r3 P0 P1 r4 r5 r6 r7 P0 P1 r8 (rows 9, 10 = pauses)
    source, read = pause_layout(9, 2, 4)
    assert source.tolist() == [0, 1, 2, 3, 9, 10, 4, 5, 6, 7, 9, 10, 8]
    # t=3 and t=7 are followed by a pause group: they read at its last pause; the rest read themselves
    assert read.tolist() == [0, 1, 2, 5, 6, 7, 8, 11, 12]
    # a group also follows the last token when T is a multiple of pause_every
    source, read = pause_layout(8, 3, 4)
    assert source.tolist() == [0, 1, 2, 3, 8, 9, 10, 4, 5, 6, 7, 8, 9, 10]
    assert read.tolist() == [0, 1, 2, 6, 7, 8, 9, 13]
    assert internal_length(8, 3, 4) == 14 and internal_length(3, 3, 4) == 3


def test_pauses_sit_before_the_predicting_position():
    torch.manual_seed(0)
    model = tiny()
    logits = model(tokens(2, 10))
    for t in range(10):
        (grad,) = torch.autograd.grad(logits[:, t].sum(), model.pause_embed, retain_graph=True)
        feeds = grad.abs().sum().item() > 0
        # positions 0..2 come before any pause; position 3 is read at the first group's last pause
        assert feeds == (t >= 3), f"position {t}: pause gradient {'nonzero' if feeds else 'zero'}"


def test_prediction_does_not_depend_on_input_length():
    torch.manual_seed(1)
    model = tiny(n_pause=3, pause_every=3).eval()
    x = tokens(2, 13)
    with torch.no_grad():
        full = model(x)
        for t in range(1, 13):
            prefix = model(x[:, :t])
            assert torch.allclose(prefix, full[:, :t], atol=1e-5), f"prefix length {t}"


def test_causal_at_every_position():
    torch.manual_seed(2)
    model = tiny(n_pause=2, pause_every=3).eval()
    x = tokens(2, 14, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        ref = model(x)
        for t in range(13):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + torch.randint(1, V, y[:, t + 1:].shape, generator=g)) % V
            assert torch.allclose(model(y)[:, : t + 1], ref[:, : t + 1], atol=1e-6, rtol=0), f"leak at cut {t}"


def test_no_pause_inside_the_sequence_equals_llama():
    torch.manual_seed(5)
    model = tiny(pause_every=50).eval()
    dense = Llama(LlamaConfig(vocab_size=V, n_layers=2, d_model=32, n_heads=2)).eval()
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected == ["pause_embed"]
    x = tokens(2, 20)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))
    assert model.stats()["internal_len_ratio"] == 1.0


def test_throughput_cost_and_flops():
    model = tiny(n_pause=2, pause_every=8)
    x = tokens(2, 64)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    assert logits.shape == (2, 64, V)
    assert model.stats()["internal_len_ratio"] == (64 + 2 * 8) / 64
    assert counter.get_total_flops() / x.numel() == model.flops_per_token(64)


def test_param_formula():
    for kw in [{}, dict(tie_embeddings=True, qk_norm=True, n_kv_heads=1, n_pause=5)]:
        model = tiny(**kw)
        f = pause_param_formula(model.config)
        pc = model.param_counts()
        assert pc.total == sum(p.numel() for p in model.parameters()) == f["total"]
        assert pc.non_embedding == f["non_embedding"]


def test_validation_names_the_field():
    from lumi.errors import LumiError
    from lumi.models.registry import make_config

    with pytest.raises(LumiError, match="pause_every"):
        make_config("pause", "nano", {"pause_every": 0})
    with pytest.raises(LumiError, match="n_pause"):
        make_config("pause", "nano", {"n_pause": 0})


def test_run_checks_passes_with_dense_pauses():
    # groups every 3 tokens: T=32 and T=35 put boundaries everywhere the checks cut
    report = run_checks("pause", "nano", overrides={"pause_every": 3, "n_pause": 3}, vocab_size=256)
    assert report.passed, report.summary()

"""`spacebyte`: the boundary rule byte by byte, forced max patch, fixed global budget (no ignored
targets), == llama when every position is a boundary, sliding window, param/FLOPs formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.check import run_checks
from lumi.errors import LumiError
from lumi.models.byte_utils import (
    SlidingWindowAttention,
    force_max_patch,
    gather_index,
    running_budget,
    spacelike_boundaries,
)
from lumi.models.layers import Attention
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.registry import build_model, get_spec, make_config
from lumi.models.spacebyte import SpaceByte, SpaceByteConfig

V = 257
SEP = 256


def tiny(**kw) -> SpaceByte:
    base = dict(d_local=16, n_local_heads=1, n_local_before=1, n_local_after=1, d_global=32, n_global_heads=2,
                n_global_layers=1, max_patch=6, global_patch_len=3)
    base.update(kw)
    cfg = SpaceByteConfig(**base)
    cfg.validate()
    return SpaceByte(cfg)


def stream(text: str) -> torch.Tensor:
    return torch.tensor([[SEP] + list(text.encode("utf-8"))])


def wordy_tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    """Random text-like bytes (letters, spaces, punctuation, a separator) so boundaries vary."""
    alphabet = torch.tensor(list(b"abcdefgh  ,.\n") + [SEP, 0xC3, 0xA9])
    g = torch.Generator().manual_seed(seed)
    return alphabet[torch.randint(0, len(alphabet), (b, t), generator=g)]


def positions(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask[0]).flatten().tolist()


def test_spacelike_rule_byte_by_byte():
    # index: 0 sep, 1 a, 2 b, 3 ',', 4 ' ', 5 c, 6 '9', 7 '\n', 8 '\n', 9 e, 10 0xC3, 11 0xA9 (é), 12 ' ', 13 sep, 14 f
    x = stream("ab, c9\n\neé ")
    x = torch.cat([x, torch.tensor([[SEP, ord("f")]])], dim=1)
    assert x.shape[1] == 15
    # ',' after a letter; '\n' after a digit; the UTF-8 lead byte 0xC3 is spacelike (SpaceByte's literal
    # rule), its continuation byte 0xA9 is not, so the space after 'é' is a boundary; separators always.
    assert positions(spacelike_boundaries(x)) == [0, 3, 7, 10, 12, 13]


def test_forced_max_patch_and_position_zero():
    b = torch.zeros(1, 23, dtype=torch.bool)
    b[0, 0] = b[0, 10] = True
    assert positions(force_max_patch(b, 4)) == [0, 4, 8, 10, 14, 18, 22]
    assert positions(force_max_patch(b, 100)) == [0, 10]
    assert positions(force_max_patch(b, 1)) == list(range(23))


def test_running_budget_and_gather_index():
    # allowance ceil((t+1)/2) = 1,1,2,2,3,3,4: boundary at 2 is the 2nd by t=2 (allowed 2) -> kept,
    # 3 would be the 3rd by t=3 (allowed 2) -> dropped, 5 -> 3rd by t=5 (allowed 3) -> kept, 6 -> 4th (allowed 4).
    b = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    kept = running_budget(b, 2)
    assert kept.tolist() == [[True, False, True, False, False, True, True], [True] + [False] * 6]
    assert gather_index(kept, 4).tolist() == [[0, 2, 5, 6], [0, 7, 7, 7]]  # 7 = T marks padding
    # a burst early does not block later boundaries once the allowance has grown
    b2 = torch.zeros(1, 20, dtype=torch.bool)
    b2[0, [0, 1, 2, 3, 12, 16]] = True
    assert positions(running_budget(b2, 4)) == [0, 12, 16]
    # brute-force agreement with the sequential token bucket on random rows
    g = torch.Generator().manual_seed(0)
    for p in (1, 2, 3, 5):
        rows = torch.rand(8, 30, generator=g) < 0.5
        rows[:, 0] = True
        got = running_budget(rows, p)
        for r in range(8):
            k, want = 0, []
            for t in range(30):
                ok = bool(rows[r, t]) and k < -(-(t + 1) // p)
                k += ok
                want.append(ok)
            assert got[r].tolist() == want


def test_mean_patch_len_and_dropped_fraction_are_reported():
    m = tiny(global_patch_len=1, max_patch=100)
    x = stream("one two three four five")  # boundaries: sep + 4 spaces = 5 over 24 bytes
    m(x)
    assert m.stats()["mean_patch_len"] == pytest.approx(24 / 5)
    assert m.stats()["dropped_boundary_frac"] == 0.0
    # budget: 1 boundary by t=11, 2 by t=23. Boundaries 0, 4, 8, 14, 19: 0 and 14 kept
    m2 = tiny(global_patch_len=12, max_patch=100)
    m2(x)
    assert m2.stats()["dropped_boundary_frac"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(local_window=3, global_merge="output", ngram_max=3, ngram_buckets=64),
    dict(global_patch_len=8, max_patch=2),  # budget overflows: boundaries get dropped, causally
])
def test_every_cut_is_causal(overrides):
    torch.manual_seed(0)
    m = tiny(**overrides).eval()
    x = wordy_tokens(2, 21, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        ref = m(x)
        for t in range(x.shape[1] - 1):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + torch.randint(1, V, y[:, t + 1:].shape, generator=g)) % V
            assert (m(y)[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-6, f"leak at cut t={t}"
            assert (m(x[:, : t + 1]) - ref[:, : t + 1]).abs().max() <= 1e-5, f"prefix mismatch at t={t}"


def test_global_state_reaches_only_positions_at_or_after_its_boundary():
    """With no local blocks after the global ones, the global blocks change the logits exactly at
    the (kept) boundary positions and nowhere else."""
    torch.manual_seed(0)
    m = tiny(n_local_after=0, global_patch_len=1, max_patch=100).eval()
    x = stream("ab cd, ef")
    with torch.no_grad():
        ref = m(x)
        for block in m.global_blocks:
            block.mlp.down_proj.weight.mul_(3.0)
        diff = (m(x) - ref).abs().amax(-1)[0]
    assert positions(diff[None] > 0) == positions(spacelike_boundaries(x))


def test_all_boundaries_equals_llama_exactly():
    """Every position a boundary, full budget, d_global = d_local, merge 'delta': the model IS a llama
    with n_local_before + n_global_layers + n_local_after layers."""
    torch.manual_seed(0)
    d = 32
    m = tiny(d_local=d, d_global=d, n_local_heads=2, n_global_heads=2, n_local_before=1, n_global_layers=2,
             n_local_after=1, max_patch=1, global_patch_len=1).eval()
    llama = Llama(LlamaConfig(vocab_size=V, n_layers=4, d_model=d, n_heads=2)).eval()
    blocks = [*m.local_before, *m.global_blocks, *m.local_after]
    with torch.no_grad():
        llama.embed.load_state_dict(m.embed.state_dict())
        for dst, src in zip(llama.blocks, blocks):
            dst.load_state_dict(src.state_dict())
        llama.norm.load_state_dict(m.norm.state_dict())
        llama.lm_head.load_state_dict(m.lm_head.state_dict())
        x = wordy_tokens(2, 19, seed=3)
        assert torch.allclose(m(x), llama(x), atol=1e-5, rtol=0)


def test_sliding_window_attention():
    torch.manual_seed(0)
    full = Attention(16, 2, 2, 8)
    win = SlidingWindowAttention(16, 2, 2, 8, window=4)
    win.load_state_dict(full.state_dict())
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        win.window = 12  # a window covering everything is plain causal attention
        assert torch.allclose(win(x), full(x), atol=1e-6)
        win.window = 4
        ref = win(x)
        y = x.clone()
        y[:, 3] += 1.0  # position 3 is outside the window of positions >= 7
        out = win(y)
    assert torch.equal(out[:, 7:], ref[:, 7:])
    assert not torch.allclose(out[:, 3:7], ref[:, 3:7])


def test_lumi_check_passes_on_cpu_presets():
    for preset in get_spec("spacebyte").cpu_presets:
        report = run_checks("spacebyte", preset)
        assert report.passed, report.summary()


@pytest.mark.parametrize("preset", sorted(get_spec("spacebyte").presets))
def test_param_formula_matches_module(preset):
    m = build_model("spacebyte", preset)
    pc, formula = m.param_counts(), m.param_formula()
    assert pc.total == formula["total"] == sum(p.numel() for p in m.parameters())
    assert pc.non_embedding == formula["non_embedding"]


@pytest.mark.parametrize("t_len", [1, 7, 32])
@pytest.mark.parametrize("overrides", [dict(), dict(local_window=4, ngram_max=3, ngram_buckets=64)])
def test_flops_analytic_equals_measured(t_len, overrides):
    torch.manual_seed(0)
    m = tiny(**overrides).train()
    x = wordy_tokens(2, t_len, seed=4)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = m(x)
        F.cross_entropy(logits.reshape(-1, V), x.reshape(-1)).backward()
    assert m.flops_per_token(t_len) == pytest.approx(counter.get_total_flops() / x.numel(), rel=1e-9)


def test_invalid_configs_name_the_field():
    with pytest.raises(LumiError, match="d_global"):
        make_config("spacebyte", "nano", {"d_global": 16})
    with pytest.raises(LumiError, match="global_merge"):
        make_config("spacebyte", "nano", {"global_merge": "replace"})
    with pytest.raises(LumiError, match="local_window"):
        make_config("spacebyte", "nano", {"local_window": 0})
    with pytest.raises(LumiError, match="vocab_size"):
        make_config("spacebyte", "nano", vocab_size=100)

"""`bltpatch`: entropy boundaries (global and monotonic rules), the frozen patcher (buffers, not
parameters; loaded from a `lumi train` run directory), causality at every cut, patcher FLOPs."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.check import run_checks
from lumi.errors import LumiError
from lumi.models.bltpatch import BltPatch, BltPatchConfig
from lumi.models.llama import Llama
from lumi.models.registry import build_model, get_spec, make_config

V = 257
SEP = 256


def tiny(**kw) -> BltPatch:
    base = dict(d_local=16, n_local_heads=1, n_local_before=1, n_local_after=1, d_global=32, n_global_heads=2,
                n_global_layers=1, max_patch=6, global_patch_len=2, patcher_preset="byte-nano")
    base.update(kw)
    cfg = BltPatchConfig(**base)
    cfg.validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BltPatch(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def sharpen_patcher(m: BltPatch, scale: float = 40.0) -> None:
    """A random patcher has entropy ~ln V everywhere; a scaled head spreads the entropies out."""
    with torch.no_grad():
        m.patcher.lm_head.weight.mul_(scale)


def test_entropies_are_the_patchers_next_byte_entropies():
    torch.manual_seed(0)
    m = tiny()
    sharpen_patcher(m)
    x = tokens(2, 17)
    with torch.no_grad():
        p = torch.softmax(m.patcher(x), dim=-1)
    want = -(p * p.log()).sum(-1)
    assert torch.allclose(m.entropies(x), want, atol=1e-5)


def test_boundary_rules_on_given_entropies(monkeypatch):
    m = tiny(entropy_threshold=2.0, entropy_margin=0.5)
    h = torch.tensor([[3.0, 1.0, 2.5, 2.0, 1.0, 1.6, 1.7, 2.1]])
    x = torch.tensor([[65, 65, 65, 65, SEP, 65, 65, 65]])
    monkeypatch.setattr(m, "entropies", lambda tokens: h)
    # global: H > 2.0 at 0, 2, 7; separator at 4; position 0 always
    assert torch.nonzero(m.boundaries(x)[0]).flatten().tolist() == [0, 2, 4, 7]
    m.config.patch_rule = "monotonic"
    # rises: t2: +1.5, t5: +0.6, t7: +0.4 (not > 0.5); separator at 4; position 0 always
    assert torch.nonzero(m.boundaries(x)[0]).flatten().tolist() == [0, 2, 4, 5]
    # forced boundaries on top, every 2 positions after the last one: only 7 (after 5) is new
    m.config.max_patch = 2
    assert torch.nonzero(m.patch_boundaries(x)[0]).flatten().tolist() == [0, 2, 4, 5, 7]


@pytest.mark.parametrize("rule", ["global", "monotonic"])
def test_every_cut_is_causal_with_varied_entropy_patches(rule):
    torch.manual_seed(0)
    m = tiny(patch_rule=rule, entropy_margin=0.05).eval()
    sharpen_patcher(m)
    x = tokens(2, 19, seed=1)
    # About half the positions are boundaries. The threshold sits in the widest gap between the middle
    # entropies, never on one of them: entropies differ in the last bits with the sequence length (kernels
    # change with shapes), so a threshold equal to a data value flips a boundary between a prefix and the
    # full sequence on some CPUs (AVX-512) — a float tie, not a leak.
    h = m.entropies(x).flatten().sort().values
    lo, hi = len(h) // 3, 2 * len(h) // 3
    k = max(range(lo, hi), key=lambda i: float(h[i + 1] - h[i]))
    assert float(h[k + 1] - h[k]) > 1e-4
    m.config.entropy_threshold = float((h[k] + h[k + 1]) / 2)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        ref = m(x)
        assert 1.5 < m.stats()["mean_patch_len"] < 6.0  # patches really vary
        for t in range(x.shape[1] - 1):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + torch.randint(1, V, y[:, t + 1:].shape, generator=g)) % V
            assert (m(y)[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-6, f"leak at cut t={t}"
            assert (m(x[:, : t + 1]) - ref[:, : t + 1]).abs().max() <= 1e-5, f"prefix mismatch at t={t}"


def test_patcher_is_frozen_saved_and_not_counted():
    torch.manual_seed(0)
    m = tiny()
    patcher_names = {n for n, _ in m.patcher.named_parameters()}
    assert patcher_names == set()  # buffers only
    assert not any(n.startswith("patcher.") for n, _ in m.named_parameters())
    assert "patcher.embed.weight" in m.state_dict()
    byte_nano = build_model("llama", "byte-nano").param_counts().total
    assert m.patcher_params() == byte_nano
    assert m.param_counts().total == sum(p.numel() for p in m.parameters()) == m.param_formula()["total"]
    assert m.param_counts().non_embedding == m.param_formula()["non_embedding"]
    before = {k: v.clone() for k, v in m.patcher.state_dict().items()}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = tokens(2, 16)
    m.train()
    assert not m.patcher.training  # frozen: never in training mode
    F.cross_entropy(m(x)[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.patcher.state_dict().items())


def test_loads_the_patcher_from_a_lumi_train_run_directory(tmp_path):
    torch.manual_seed(3)
    trained = Llama(make_config("llama", "byte-nano"))
    ckpt = tmp_path / "patcher-run" / "checkpoints" / "latest"
    ckpt.mkdir(parents=True)
    save_model(trained, str(ckpt / "model.safetensors"))
    (ckpt / "model_config.json").write_text(json.dumps(asdict(trained.config)))
    for where in (tmp_path / "patcher-run", ckpt, ckpt / "model.safetensors"):
        m = build_model("bltpatch", "nano", {"patcher_checkpoint": str(where)})
        got = m.patcher.state_dict()
        assert all(torch.equal(got[k], v) for k, v in trained.state_dict().items())
    with pytest.raises(LumiError, match="no model.safetensors"):
        build_model("bltpatch", "nano", {"patcher_checkpoint": str(tmp_path / "missing")})
    (ckpt / "model_config.json").write_text(json.dumps(dict(asdict(trained.config), vocab_size=300)))
    with pytest.raises(LumiError, match="vocab_size 300"):
        build_model("bltpatch", "nano", {"patcher_checkpoint": str(ckpt)})


def test_random_patcher_warns():
    with pytest.warns(UserWarning, match="randomly initialised frozen patcher"):
        build_model("bltpatch", "nano")


@pytest.mark.parametrize("t_len", [1, 9, 32])
def test_flops_include_the_patchers_forward_once(t_len):
    torch.manual_seed(0)
    m = tiny(ngram_max=3, ngram_buckets=64, local_window=4).train()
    sharpen_patcher(m)
    x = tokens(2, t_len, seed=5)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = m(x)
        F.cross_entropy(logits.reshape(-1, V), x.reshape(-1)).backward()
    assert m.flops_per_token(t_len) == pytest.approx(counter.get_total_flops() / x.numel(), rel=1e-9)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as patcher_counter, torch.no_grad():
        m.patcher(x)
    assert m.patcher_flops_per_token(t_len) == pytest.approx(patcher_counter.get_total_flops() / x.numel(), rel=1e-9)
    assert m.stats()["patcher_flops_per_token"] == m.patcher_flops_per_token(t_len)
    assert m.stats()["mean_patch_len"] >= 1.0 and "mean_entropy" in m.stats()


def test_lumi_check_passes_on_cpu_presets():
    for preset in get_spec("bltpatch").cpu_presets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = run_checks("bltpatch", preset)
        assert report.passed, report.summary()


def test_invalid_configs_name_the_field():
    with pytest.raises(LumiError, match="patch_rule"):
        make_config("bltpatch", "nano", {"patch_rule": "entropy"})
    with pytest.raises(LumiError, match="patcher_preset"):
        make_config("bltpatch", "nano", {"patcher_preset": "huge"})
    with pytest.raises(LumiError, match="entropy_threshold"):
        make_config("bltpatch", "nano", {"entropy_threshold": -1.0})
    assert make_config("bltpatch", "nano", {"patcher_checkpoint": "none"}).patcher_checkpoint is None
    assert math.isclose(make_config("bltpatch", "nano").entropy_threshold, 1.335)

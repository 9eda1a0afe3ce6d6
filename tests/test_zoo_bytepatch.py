"""`bytepatch` (MEGABYTE patch core): exact alignment, P=1 == byte llama, leaky variant rejected,
param/FLOPs formulas, hashed n-grams are causal, and byte-model BPB == per-byte CE / ln 2."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lumi.check import run_checks
from lumi.errors import LumiError
from lumi.metrics.bpb import bpb
from lumi.models.byte_utils import hashed_ngram_ids
from lumi.models.bytepatch import BytePatch, BytePatchConfig
from lumi.models.llama import Llama, LlamaConfig
from lumi.models.registry import build_model, get_spec, load_model_file, make_config

V = 257
LEAKY_PLUGIN = Path(__file__).parent / "plugins" / "leaky_bytepatch.py"


def tiny(**kw) -> BytePatch:
    base = dict(vocab_size=V, patch_size=4, n_global_layers=1, d_global=32, n_global_heads=2,
                n_local_layers=1, d_local=16, n_local_heads=1)
    base.update(kw)
    cfg = BytePatchConfig(**base)
    cfg.validate()
    return BytePatch(cfg)


def tokens(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def measured_flops(model, x: torch.Tensor) -> float:
    model.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1)).backward()
    return counter.get_total_flops() / x.numel()


@pytest.mark.parametrize("patch_size,ngram_max", [(4, 0), (3, 3)])
def test_every_cut_is_causal_and_prefixes_agree(patch_size, ngram_max):
    """Perturbing bytes after t never moves logits <= t, and running on the prefix 0..t gives the
    same logits: right padding of the last patch never reaches an earlier output."""
    torch.manual_seed(0)
    m = tiny(patch_size=patch_size, d_global=8 * patch_size, ngram_max=ngram_max, ngram_buckets=64).eval()
    x = tokens(2, 14, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        ref = m(x)
        for t in range(x.shape[1]):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + torch.randint(1, V, y[:, t + 1:].shape, generator=g)) % V
            assert (m(y)[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-6, f"leak at cut t={t}"
            assert (m(x[:, : t + 1]) - ref[:, : t + 1]).abs().max() <= 1e-5, f"prefix mismatch at t={t}"


def test_which_bytes_each_prediction_sees():
    """The docstring's alignment, exactly: the prediction at t (of byte u = t+1, patch k = u // P)
    depends on global byte embeddings of bytes < kP only, and on local byte embeddings of bytes
    kP..t only (the current patch up to and including t)."""
    torch.manual_seed(0)
    p, t_len = 4, 13
    m = tiny(patch_size=p).eval()
    x = tokens(1, t_len, seed=3)
    ge = m.global_embed(x).detach().requires_grad_(True)
    le = m.local_embed(x).detach().requires_grad_(True)
    m.global_embed.register_forward_hook(lambda mod, i, o: ge)
    m.local_embed.register_forward_hook(lambda mod, i, o: le)
    logits = m(x)
    for t in range(t_len):
        gg, gl = torch.autograd.grad(logits[0, t].square().sum(), (ge, le), retain_graph=True)
        k = (t + 1) // p
        global_seen = set(torch.nonzero(gg[0].abs().sum(-1)).flatten().tolist())
        local_seen = set(torch.nonzero(gl[0].abs().sum(-1)).flatten().tolist())
        assert global_seen == set(range(k * p)), (t, global_seen)
        assert local_seen == set(range(k * p, t + 1)), (t, local_seen)


def test_patch_size_one_is_a_byte_llama_on_pad_then_bytes():
    """P=1, d_local = d_global, no local layers, identity slot projection, zero slot-0 vector:
    logits at t == llama([pad, x_0 .. x_t])[t+1] with the pad patch as the pad's embedding."""
    torch.manual_seed(0)
    d = 32
    m = tiny(patch_size=1, d_global=d, d_local=d, n_global_layers=2, n_local_layers=0).eval()
    llama = Llama(LlamaConfig(vocab_size=V + 1, n_layers=2, d_model=d, n_heads=2)).eval()
    with torch.no_grad():
        m.slot_proj.weight.copy_(torch.eye(d))
        m.slot0.zero_()
        llama.embed.weight[:V] = m.global_embed.weight
        llama.embed.weight[V] = m.pad_patch
        for i, block in enumerate(m.global_blocks):
            llama.blocks[i].load_state_dict(block.state_dict())
        llama.norm.load_state_dict(m.norm.state_dict())
        llama.lm_head.weight.zero_()
        llama.lm_head.weight[:V] = m.lm_head.weight
        x = tokens(2, 11, seed=4)
        pad = torch.full((2, 1), V)
        want = llama(torch.cat([pad, x], dim=1))[:, 1:, :V]
        assert torch.allclose(m(x), want, atol=1e-5, rtol=0)


def test_leaky_own_patch_decoder_is_rejected_naming_the_position(monkeypatch):
    from lumi.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin stays in this test
    load_model_file(LEAKY_PLUGIN)
    report = run_checks("leaky_bytepatch", "nano", only=["causality_perturbation", "causality_gradient"])
    assert not report.passed
    pert = report.result("causality_perturbation")
    assert not pert.passed and "LEAK at position 0" in pert.detail and "t=0" in pert.detail
    grad = report.result("causality_gradient")
    assert not grad.passed and "LEAK at position" in grad.detail and "future position 1" in grad.detail


def test_lumi_check_passes_on_cpu_presets():
    for preset in get_spec("bytepatch").cpu_presets:
        report = run_checks("bytepatch", preset)
        assert report.passed, report.summary()


@pytest.mark.parametrize("preset", sorted(get_spec("bytepatch").presets))
def test_param_formula_matches_module(preset):
    m = build_model("bytepatch", preset)
    pc, formula = m.param_counts(), m.param_formula()
    assert pc.total == formula["total"] == sum(p.numel() for p in m.parameters())
    assert pc.non_embedding == formula["non_embedding"]


@pytest.mark.parametrize("t_len", [1, 3, 4, 35])
@pytest.mark.parametrize("patch_size,ngram_max", [(4, 0), (3, 4)])
def test_flops_analytic_equals_measured(t_len, patch_size, ngram_max):
    torch.manual_seed(0)
    m = tiny(patch_size=patch_size, d_global=8 * patch_size, ngram_max=ngram_max, ngram_buckets=64)
    assert m.flops_per_token(t_len) == pytest.approx(measured_flops(m, tokens(2, t_len)), rel=1e-9)


def test_hashed_ngrams_read_only_the_n_bytes_ending_at_each_position():
    x = tokens(1, 20, seed=5)
    for n in (2, 3, 5):
        ids = hashed_ngram_ids(x, n, 4096)
        assert ids.min() >= 0 and ids.max() < 4096
        for j in range(20):
            y = x.clone()
            y[0, j] = (y[0, j] + 1) % V
            changed = set(torch.nonzero(hashed_ngram_ids(y, n, 4096)[0] != ids[0]).flatten().tolist())
            assert changed <= set(range(j, min(j + n, 20)))  # only n-grams that contain byte j
            assert j in changed  # the newest byte has coefficient 1 in the hash: +1 always changes it
    # identical n-byte windows hash identically, wherever they are
    z = torch.tensor([[7, 8, 9, 1, 7, 8, 9]])
    h = hashed_ngram_ids(z, 3, 1 << 20)
    assert h[0, 2] == h[0, 6] and h[0, 2] != h[0, 3]


def test_invalid_configs_name_the_field():
    with pytest.raises(LumiError, match="d_global"):
        make_config("bytepatch", "nano", {"patch_size": 3})
    with pytest.raises(LumiError, match="ngram_max"):
        make_config("bytepatch", "nano", {"ngram_max": 1})
    with pytest.raises(LumiError, match="patch_size"):
        make_config("bytepatch", "nano", {"patch_size": 0})
    with pytest.raises(LumiError, match="n_local_heads"):
        make_config("bytepatch", "nano", {"n_local_heads": 3})


def test_byte_model_bpb_equals_per_byte_ce_over_ln2():
    """Through lumi.metrics.bpb with the bytes tokenizer's byte counts (1 per byte, 0 for the
    separator) the BPB of a byte model is exactly its mean per-byte CE / ln 2 on the same text."""
    from lumi.data.tokenizers import BytesTokenizer

    tok = BytesTokenizer()
    text = "To be, or not to be — naïve café 😀 中文\nx"
    stream = torch.tensor([[tok.sep_id] + tok.encode(text)])
    targets = stream[:, 1:]
    target_bytes = torch.from_numpy(tok.token_bytes)[targets]
    assert int(target_bytes.sum()) == len(text.encode("utf-8"))
    torch.manual_seed(0)
    for model in (build_model("bytepatch", "nano"), build_model("llama", "byte-nano")):
        model.eval()
        with torch.no_grad():
            logits = model(stream)[:, :-1].double()
        nll = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
        got = bpb(nll, target_bytes)
        assert got == pytest.approx(float(nll.mean()) / math.log(2), rel=1e-12)
        assert got == pytest.approx(float(nll.sum()) / (math.log(2) * len(text.encode("utf-8"))), rel=1e-12)
        assert 7.0 < got < 9.0  # an untrained model is near uniform: log2(257) = 8.006 bits


def test_llama_byte_presets_use_the_bytes_vocabulary():
    for preset in ("byte-nano", "byte-micro"):
        cfg = make_config("llama", preset)
        assert cfg.vocab_size == 257
    assert np.isclose(build_model("llama", "byte-micro").param_counts().non_embedding,
                      build_model("bytepatch", "micro").param_counts().non_embedding, rtol=0.15)

"""The llama baseline: parameter formula, FLOPs, GQA, recipe switches, KV cache, config validation."""

from __future__ import annotations

import pytest
import torch

from lumi.check.accounting import measure_flops_per_token
from lumi.errors import LumiError
from lumi.models import build_model, get_spec, make_config
from lumi.models.llama import Llama, LlamaConfig, llama_param_formula

NANO = dict(n_layers=2, d_model=64, n_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def llama(seed: int = 0, **fields) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**{**NANO, **fields}))


def tokens(b: int = 2, t: int = 16, v: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


# -- accounting ---------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", list(get_spec("llama").presets))
@pytest.mark.parametrize("vocab", [257, 4096])
def test_param_counts_of_every_preset_match_the_formula(preset, vocab):
    config = make_config("llama", preset, vocab_size=None if "vocab_size" in get_spec("llama").presets[preset]
                         else vocab)
    with torch.device("meta"):  # exact counts without allocating the 200M-parameter presets
        model = Llama(config)
    counts, want = model.param_counts(), llama_param_formula(config)
    assert (counts.total, counts.non_embedding) == (want["total"], want["non_embedding"])
    assert counts.total == sum(p.numel() for p in model.parameters())


def test_published_presets_have_head_dim_64_and_ffn_4x():
    for preset, (layers, d, heads) in {"tiny": (6, 256, 4), "small": (12, 512, 8), "base": (24, 768, 12)}.items():
        c = make_config("llama", preset)
        assert (c.n_layers, c.d_model, c.n_heads, c.dim_head, c.ffn) == (layers, d, heads, 64, 4 * d)


def test_small_preset_count_by_hand():
    # 12 x (attention 4 d^2 + SwiGLU 3 d (4d) + 2 norms) + final norm + embedding + head, d = 512, V = 4096
    d, v, layers = 512, 4096, 12
    per_layer = 4 * d * d + 12 * d * d + 2 * d
    want = layers * per_layer + d + 2 * v * d
    assert llama_param_formula(make_config("llama", "small", vocab_size=v))["total"] == want == 54_538_752


@pytest.mark.parametrize("fields", [
    {},
    {"n_kv_heads": 1},
    {"tie_embeddings": True},
    {"mlp": "relu2", "qk_norm": True},
    {"mlp": "gelu", "head_dim": 16, "n_heads": 4},
    {"ffn_hidden": 96, "logit_softcap": 30.0},
])
def test_flops_estimate_equals_the_measured_count_exactly(fields):
    model = llama(**fields)
    for t in (8, 24):
        x = tokens(t=t)
        assert measure_flops_per_token(model, x, 256) == model.flops_per_token(t)


@pytest.mark.parametrize("fields,changed", [
    ({"qk_norm": True}, 2 * 2 * 32),  # q_norm + k_norm of head_dim 32, 2 layers
    ({"tie_embeddings": True}, -256 * 64),  # the head disappears
    ({"n_kv_heads": 1}, -2 * 2 * 64 * 32),  # k and v lose one of two heads, 2 layers
    ({"mlp": "relu2"}, -2 * 64 * 256),  # no gate matrix
    ({"mlp": "gelu"}, -2 * 64 * 256),
])
def test_recipe_switches_change_the_parameter_count_as_the_formula_says(fields, changed):
    base, switched = llama(), llama(**fields)
    assert switched.param_counts().total - base.param_counts().total == changed
    assert switched.param_counts().total == llama_param_formula(switched.config)["total"]


# -- GQA -----------------------------------------------------------------------------------------

def test_gqa_with_as_many_kv_heads_as_heads_is_mha():
    mha, gqa = llama(seed=3), llama(seed=3, n_kv_heads=2)
    assert mha.state_dict().keys() == gqa.state_dict().keys()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(mha(x), gqa(x))


def test_gqa_equals_mha_with_kv_heads_repeated_per_group():
    gqa = llama(seed=4, n_heads=4, n_kv_heads=2)
    mha = llama(seed=5, n_heads=4)
    sd = gqa.state_dict()
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            w = sd[f"blocks.{i}.attn.{name}.weight"]  # [2 kv heads x 16, 64]
            sd[f"blocks.{i}.attn.{name}.weight"] = w.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(sd)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=0)


def test_kv_cache_holds_2_layers_groups_head_dim_numbers_per_token():
    for kv in (1, 2, 4):
        model = llama(n_heads=4, n_kv_heads=kv).eval()
        cache = model.new_cache()
        with torch.no_grad():
            model(tokens(b=1, t=5), cache=cache)
        assert cache.position == 5
        assert cache.num_elements_per_token() == 2 * 2 * kv * 16


# -- KV cache ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [{}, {"n_heads": 4, "n_kv_heads": 1, "qk_norm": True}, {"logit_softcap": 5.0}])
def test_kv_cached_forward_equals_full_forward(fields):
    model = llama(seed=6, **fields).eval()
    x = tokens(b=2, t=20)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        parts = [model(x[:, :7], cache=cache), model(x[:, 7:11], cache=cache)]  # a prefix, then a chunk
        parts += [model(x[:, i:i + 1], cache=cache) for i in range(11, 20)]  # then one token at a time
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


# -- recipe switches -----------------------------------------------------------------------------

def test_logit_softcap_bounds_the_logits():
    x = tokens()
    with torch.no_grad():
        free = llama(seed=7, init_std=0.5)(x)
        capped = llama(seed=7, init_std=0.5, logit_softcap=2.0)(x)
    assert free.abs().max() > 2.0
    assert capped.abs().max() < 2.0
    torch.testing.assert_close(capped, 2.0 * torch.tanh(free / 2.0))


def test_zero_init_proj_zeroes_the_residual_output_projections():
    model = llama(zero_init_proj=True)
    names = [n for n, _ in model.named_parameters() if n.endswith(("o_proj.weight", "down_proj.weight"))]
    assert len(names) == 4
    for name, p in model.named_parameters():
        if name in names:
            assert torch.count_nonzero(p) == 0, name
        elif p.dim() == 2:
            assert torch.count_nonzero(p) == p.numel(), name
    # Every block is then the identity, so the logits are the (normed) embeddings times the head.
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(model(x), model.lm_head(model.norm(model.embed(x))), atol=1e-6)


def test_residual_projections_are_scaled_by_depth():
    model = llama(seed=8, n_layers=8)
    std = model.blocks[0].attn.o_proj.weight.std().item()
    assert std == pytest.approx(0.02 / 4.0, rel=0.1)  # 0.02 / sqrt(2 x 8)
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_tied_embeddings_share_storage_with_the_head():
    model = llama(tie_embeddings=True)
    assert model.lm_head is None
    assert sum(p.numel() for p in model.parameters()) == llama_param_formula(model.config)["total"]
    x = torch.randint(0, 100, (2, 8))  # ids >= 100 never appear in the input ...
    model(x).logsumexp(-1).sum().backward()
    # ... so their embedding rows can only get gradient through the (shared) output head
    assert model.embed.weight.grad[100:].abs().sum() > 0
    with torch.no_grad():  # editing one embedding row moves exactly that logit column
        before = model(x)
        model.embed.weight[200] += 1.0
        after = model(x)
    changed = (after != before).any(dim=(0, 1)).nonzero().flatten().tolist()
    assert changed == [200]


def test_qk_norm_adds_rms_norms_on_queries_and_keys():
    plain, normed = llama(), llama(qk_norm=True)
    assert plain.blocks[0].attn.q_norm is None
    attn = normed.blocks[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (32,)
    # the normalised queries have unit RMS per head, whatever the input scale
    x = torch.randn(1, 5, 64) * 7.0
    q = attn.q_proj(x).view(1, 5, 2, 32)
    assert torch.allclose(attn.q_norm(q).pow(2).mean(-1), torch.ones(1, 5, 2), atol=1e-3)


@pytest.mark.parametrize("mlp,has_gate", [("swiglu", True), ("relu2", False), ("gelu", False)])
def test_mlp_activation_switch(mlp, has_gate):
    block_mlp = llama(mlp=mlp).blocks[0].mlp
    assert (block_mlp.gate_proj is not None) == has_gate
    h = torch.randn(3, 64)
    up = block_mlp.up_proj(h)
    inner = {"swiglu": lambda: torch.nn.functional.silu(block_mlp.gate_proj(h)) * up,
             "relu2": lambda: torch.relu(up) ** 2,
             "gelu": lambda: torch.nn.functional.gelu(up)}[mlp]()
    torch.testing.assert_close(block_mlp(h), block_mlp.down_proj(inner))


def test_dropout_only_in_training_mode():
    model = llama(dropout=0.5)
    x = tokens()
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    x = tokens()
    grads = []
    for ckpt in (False, True):
        model = llama(seed=9, gradient_checkpointing=ckpt).train()
        loss = torch.nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# -- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    ({"n_heads": 3}, "n_heads=3 must divide d_model=64"),
    ({"n_kv_heads": 3, "n_heads": 4}, "n_kv_heads=3 must divide n_heads=4"),
    ({"n_kv_heads": 0}, "n_kv_heads=0 must divide n_heads=2"),
    ({"head_dim": 15}, "head_dim must be even for RoPE, got 15"),
    ({"mlp": "relu"}, "mlp must be one of swiglu, relu2, gelu, got 'relu'"),
    ({"attention": "xformers"}, "attention must be one of sdpa, flash_attn, got 'xformers'"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"logit_softcap": -1.0}, "logit_softcap must be positive or null (off), got -1.0"),
    ({"n_layers": 0}, "n_layers must be >= 1, got 0"),
    ({"vocab_size": 1}, "vocab_size must be >= 2, got 1"),
    ({"n_layer": 2}, "unknown config field 'n_layer' for model 'llama' (did you mean 'n_layers'?)"),
    ({"n_layers": "two"}, "config field 'n_layers' of model 'llama' expects int, got 'two'"),
    ({"n_layers": 2.5}, "config field 'n_layers' of model 'llama' expects int, got 2.5"),
])
def test_invalid_configs_raise_lumi_error_naming_the_field(overrides, message):
    with pytest.raises(LumiError) as info:
        build_model("llama", "nano", overrides)
    assert message in str(info.value)


def test_string_overrides_are_coerced_to_field_types():
    c = make_config("llama", "nano", {"n_kv_heads": "1", "qk_norm": "true", "logit_softcap": "none",
                                      "dropout": "0.1"})
    assert (c.n_kv_heads, c.qk_norm, c.logit_softcap, c.dropout) == (1, True, None, 0.1)


def test_module_apply_works_on_every_zoo_model():
    """nn.Module.apply(fn) reaches every submodule (a method named `apply` on a layer once shadowed it)."""
    from lumi.models import list_models

    for spec in list_models():
        if not spec.cpu_presets:
            continue
        seen: list[str] = []
        build_model(spec.name, spec.cpu_presets[0]).apply(lambda m: seen.append(type(m).__name__))
        assert len(seen) > 3, spec.name

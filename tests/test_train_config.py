"""Training config: budgets, YAML round trip, dotted overrides, schedules, optimizer parameter roles."""

from __future__ import annotations

import math

import pytest
import torch

from lumi.errors import LumiError
from lumi.train.config import TrainConfig, load_config, parse_budget
from lumi.train.optim import Muon, build_optimizer, orthogonalize, param_roles
from lumi.train.schedule import lr_multiplier



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

@pytest.mark.parametrize("text,kind,value", [
    ("2000steps", "steps", 2000),
    ("2000 steps", "steps", 2000),
    ("2k steps", "steps", 2000),
    ("5M tokens", "tokens", 5e6),
    ("5Mtok", "tokens", 5e6),
    ("1.5e6 tok", "tokens", 1.5e6),
    ("3e14flops", "flops", 3e14),
    ("2G flops", "flops", 2e9),
    ("90s", "seconds", 90),
    ("10m", "seconds", 600),
    ("2 min", "seconds", 120),
    ("1h", "seconds", 3600),
])
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, value)


@pytest.mark.parametrize("text,needle", [
    ("10M", "no unit"),           # minutes or millions? refuse to guess
    ("2000", "no unit"),
    ("abc", "does not parse"),
    ("0steps", "positive"),
    ("1.5steps", "whole number"),
    ("5kh", "not time"),
    ("10 parsecs", "unknown unit 'parsecs'"),
])
def test_parse_budget_errors_explain(text, needle):
    with pytest.raises(LumiError) as e:
        parse_budget(text)
    assert needle in str(e.value) and "e.g. 2000steps" in str(e.value)


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: llama\n  preset: nano\n  overrides: {n_layers: 1}\n"
                    "optim:\n  lr: 0.01\ntrain:\n  budget: 5M tokens\n")
    cfg = load_config(path, ["optim.lr=1e-3", "model.overrides.d_model=32", "train.init_seed=7",
                             "optim.betas=[0.8, 0.9]", "train.eval_every_s=null"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.model.overrides == {"n_layers": 1, "d_model": 32}
    assert cfg.train.resolved_init_seed == 7 and cfg.train.resolved_data_seed == 0
    assert cfg.optim.betas == [0.8, 0.9] and cfg.train.eval_every_s is None
    out = tmp_path / "config.yaml"
    cfg.save_yaml(out)
    assert load_config(out) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override,needle", [
    ("optim.lrr=1", "did you mean 'lr'"),
    ("train.seqlen=3", "did you mean 'seq_len'"),
    ("optim.name=sgd", "adamw, muon"),
    ("train.seq_len=abc", "train.seq_len expects int"),
    ("bogus.key=1", "unknown config key"),
    ("train.batch_size=10", "divisible"),  # with grad_accum=4 below
    ("train.budget=soon", "does not parse"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(LumiError) as e:
        load_config(None, ["train.grad_accum=4", override] if "batch_size" in override else [override])
    assert needle in str(e.value)


def test_unknown_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  budget: 2m\n")
    with pytest.raises(LumiError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "did you mean 'train'" in str(e.value)


def _optim(**kw):
    cfg = TrainConfig().optim
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_wsd_schedule_shape():
    cfg = _optim(schedule="wsd", warmup_frac=0.1, warmdown_frac=0.5, min_lr_frac=0.0)
    total = 100
    mults = [lr_multiplier(cfg, s, s / total, (s + 1) / total) for s in range(total)]
    assert mults[0] == pytest.approx(0.1)  # warmup counted at the end of the step: never exactly 0
    assert mults[9] == pytest.approx(1.0) and mults[49] == pytest.approx(1.0)
    assert mults[75] == pytest.approx(0.5)  # halfway through the warmdown
    assert mults[99] == pytest.approx(0.02)
    assert all(a >= b for a, b in zip(mults[10:], mults[11:]))


def test_cosine_and_constant_and_step_warmup():
    cos = _optim(schedule="cosine", warmup_steps=5, min_lr_frac=0.1)
    assert lr_multiplier(cos, 0, 0.0, 0.01) == pytest.approx(0.2)
    assert lr_multiplier(cos, 10, 0.5, 0.51) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(cos, 99, 1.0, 1.0) == pytest.approx(0.1)
    const = _optim(schedule="constant", warmup_frac=0.0)
    assert lr_multiplier(const, 50, 0.5, 0.51) == 1.0


def test_time_keyed_schedule_ends_annealed():
    # A wall-clock budget passes elapsed/budget as the fraction: at 95% of the time the lr is low,
    # whatever the step number is.
    cfg = _optim(schedule="wsd", warmdown_frac=0.3, min_lr_frac=0.0)
    assert lr_multiplier(cfg, 12345, 0.95, 0.951) == pytest.approx(0.05 / 0.3)
    assert lr_multiplier(cfg, 3, 0.95, 0.951) == pytest.approx(0.05 / 0.3)


def test_orthogonalize_pushes_singular_values_near_one():
    g = torch.randn(64, 24, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 100.0  # badly conditioned
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3
    assert orthogonalize(g).shape == g.shape


def test_param_roles_and_weight_decay_groups():
    from lumi.models import build_model

    model = build_model("llama", "nano", vocab_size=300)
    roles = param_roles(model, 300)
    names = {id(p): n for n, p in model.named_parameters()}
    emb = sorted(names[id(p)] for p in roles["embedding"])
    assert emb == ["embed.weight", "lm_head.weight"]
    assert all(p.ndim == 1 for p in roles["vector"]) and roles["vector"]
    assert all(p.ndim == 2 and 300 not in p.shape for p in roles["matrix"])
    assert sum(p.numel() for r in roles.values() for p in r) == sum(p.numel() for p in model.parameters())

    adamw = build_optimizer(model, _optim(name="adamw", weight_decay=0.1), 300, torch.device("cpu"))
    decay = {id(p) for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(p) for p in roles["matrix"] + roles["embedding"]}  # matrices only, norms never

    muon = build_optimizer(model, _optim(name="muon", muon_lr=0.02), 300, torch.device("cpu"))
    assert isinstance(muon.optimizers["muon"], Muon)
    assert {id(p) for g in muon.optimizers["muon"].param_groups for p in g["params"]} == \
        {id(p) for p in roles["matrix"]}
    muon.set_lr_multiplier(0.5)
    assert muon.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.01)


def test_muon_step_reduces_loss_on_a_matrix_problem():
    torch.manual_seed(0)
    target = torch.randn(16, 16)
    w = torch.nn.Parameter(torch.zeros(16, 16))
    opt = Muon([w], lr=0.1)
    losses = []
    for _ in range(40):
        loss = ((w - target) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.1 * losses[0]
    assert math.isfinite(losses[-1])

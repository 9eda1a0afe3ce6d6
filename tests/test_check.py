"""`lumi check` rejects leaky and broken models, names the failing check and position, and its
CLI registers plugins from files and reports bad input with exit code 2."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lumi.check import CHECKS, check_model, run_checks
from lumi.cli import main
from lumi.errors import LumiError
from lumi.models import LumiModel, load_model_file, registry
from lumi.models.llama import Llama, LlamaConfig

PLUGINS = Path(__file__).parent / "plugins"
REPO = Path(__file__).resolve().parents[1]
NANO = dict(n_layers=2, d_model=64, n_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture
def clean_registry(monkeypatch):
    """Plugins registered by a test vanish afterwards (other tests list the registry)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry._load_builtins()


def nano_llama(cls=Llama, **overrides) -> LumiModel:
    return cls(LlamaConfig(**{**NANO, **overrides}))


# -- the deliberately broken plugins ------------------------------------------------------------

def test_shifted_mask_is_rejected_at_position_0(clean_registry):
    assert load_model_file(PLUGINS / "leaky_shifted_mask.py") == ["leaky_shifted_mask"]
    report = run_checks("leaky_shifted_mask", "nano", only=["causality"])
    pert, grad = report.result("causality_perturbation"), report.result("causality_gradient")
    assert not report.passed and not pert.passed and not grad.passed
    assert pert.detail.startswith("LEAK at position 0: changing the tokens after position t=0 (T=32, init weights, "
                                  "eval mode, grad off, batch 31) changed the logits at position 0")
    # key t+1 is visible to every query, so every cut leaks at every probe length (256: a sample of 32 cuts)
    assert "31 of 31 cuts leak at T=32, 34 of 34 cuts leak at T=35, 32 of 32 cuts leak at T=256" in pert.detail
    assert grad.detail.startswith("LEAK at position 0: the gradient of the logits at positions <= 0 (T=32, init "
                                  "weights, eval mode, grad on, batch 31) w.r.t. the input embedding at future "
                                  "position 1")
    assert "causality_perturbation: LEAK at position 0" in report.summary()


def test_next_token_mixing_block_is_rejected(clean_registry):
    load_model_file(PLUGINS / "leaky_next_token_mix.py")
    report = run_checks("leaky_next_token_mix", "nano", only=["causality"])
    assert [r.passed for r in report.results] == [False, False, True]  # leaks in time, not across the batch
    assert report.result("causality_perturbation").detail.startswith("LEAK at position 0:")
    assert "future position 1 " in report.result("causality_gradient").detail


def test_own_patch_leak_is_caught_at_every_non_final_patch_position(clean_registry):
    load_model_file(PLUGINS / "leaky_patch.py")
    report = run_checks("leaky_patch", "nano", only=["causality"])
    pert = report.result("causality_perturbation")
    assert not pert.passed and pert.detail.startswith("LEAK at position 0:")
    # Patches of 4: only cuts at the last position of a patch (t = 3, 7, ...) are innocent.
    # T=32: 31 cuts, 7 innocent -> 24 leak; T=35: 34 cuts, 8 innocent -> 26 leak.
    assert "24 of 31 cuts leak at T=32, 26 of 34 cuts leak at T=35" in pert.detail
    assert "24 of 31 cuts leak at T=32, 26 of 34 cuts leak at T=35" in report.result("causality_gradient").detail


def test_epsilon_leak_hides_from_perturbation_but_not_from_the_gradient(clean_registry):
    load_model_file(PLUGINS / "leaky_epsilon.py")
    report = run_checks("leaky_epsilon", "nano", only=["causality"])
    pert, grad = report.result("causality_perturbation"), report.result("causality_gradient")
    assert pert.passed and pert.value < 1e-5  # below the float tolerance ...
    assert not grad.passed and grad.value > 0  # ... but the gradient is not exactly zero
    assert grad.detail.startswith("LEAK at position 0: the gradient of the logits at positions <= 0 (T=32, init "
                                  "weights")
    assert not report.passed


class LeakAtOnePosition(Llama):
    """Position 20 alone reads the embedding of position 21."""

    def hidden_states(self, tokens, cache=None):
        x = self.embed(tokens)
        if x.shape[1] > 21:
            x = torch.cat([x[:, :20], x[:, 20:21] + 0.5 * x[:, 21:22], x[:, 21:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def test_reported_position_is_the_leaking_one():
    report = check_model(lambda: nano_llama(LeakAtOnePosition), label="leak@20", only=["causality"])
    pert, grad = report.result("causality_perturbation"), report.result("causality_gradient")
    assert pert.detail.startswith("LEAK at position 20: changing the tokens after position t=20 (T=32, init "
                                  "weights, eval mode, grad off, batch 31) changed the logits at position 20")
    assert "1 of 31 cuts leak at T=32, 1 of 34 cuts leak at T=35" in pert.detail
    assert grad.detail.startswith("LEAK at position 20: the gradient of the logits at positions <= 20 (T=32, init "
                                  "weights, eval mode, grad on, batch 31) w.r.t. the input embedding at future "
                                  "position 21")


# -- every other check can fail, and says why --------------------------------------------------

class OneHotModel(LumiModel):
    """No nn.Embedding: one-hot inputs through a linear layer (causal: purely per position)."""

    config_class = LlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.vocab_size, config.vocab_size, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, tokens):
        return self.proj(F.one_hot(tokens, self.config.vocab_size).float())

    def flops_per_token(self, seq_len):
        # forward 2 V^2; backward only the weight gradient (the one-hot input needs none): 2 V^2
        return 4.0 * self.config.vocab_size**2


def test_model_without_embedding_gets_na_gradient_row():
    report = check_model(lambda: OneHotModel(LlamaConfig(**NANO)), label="onehot", only=["causality", "flops"])
    grad = report.result("causality_gradient")
    assert grad.skipped and grad.passed and grad.status == "n/a"
    assert grad.detail.startswith("n/a: model has no input embedding")
    assert report.result("causality_perturbation").passed
    assert report.result("flops").passed and report.result("flops").value == 0  # 4 V^2 exactly
    assert report.passed


def test_initial_loss_far_from_ln_v_fails():
    report = run_checks("llama", "nano", overrides={"init_std": 1.0}, only=["initial_loss"])
    r = report.result("initial_loss")
    assert not r.passed
    assert abs(r.value - math.log(256)) >= 0.25 * math.log(256)
    assert "must be within 0.25 x ln V" in r.detail


class UnigramModel(LumiModel):
    """Ignores its input: cannot memorise a batch of random tokens."""

    config_class = LlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, tokens):
        return self.bias.expand(*tokens.shape, -1)

    def flops_per_token(self, seq_len):
        return 0.0


def test_model_that_cannot_learn_fails_overfit_and_measures_no_flops():
    report = check_model(lambda: UnigramModel(LlamaConfig(**NANO)), label="unigram",
                         only=["initial_loss", "overfit", "flops"])
    assert report.result("initial_loss").passed  # uniform at init: exactly ln V
    assert report.result("initial_loss").value == pytest.approx(math.log(256), abs=1e-5)
    overfit = report.result("overfit")
    assert not overfit.passed and overfit.value > 0.3 * math.log(256)
    assert "must fall below 0.3 x ln V" in overfit.detail
    assert not report.result("flops").passed and "measured 0 FLOPs" in report.result("flops").detail


class WrongFlops(Llama):
    def flops_per_token(self, seq_len):
        return 6.0 * sum(p.numel() for p in self.parameters())  # 6N: ignores attention, counts embeddings


def test_wrong_flops_estimate_fails_with_both_numbers():
    report = check_model(lambda: nano_llama(WrongFlops), label="wrongflops", only=["flops"])
    r = report.result("flops")
    assert not r.passed and r.value > 0.05
    assert re.search(r"analytic [\d,]+ vs measured 933,888 training FLOPs/token at T=32", r.detail)


class NoisyForward(Llama):
    def forward(self, tokens, cache=None):
        return super().forward(tokens, cache) + 1e-3 * torch.randn(1)


def test_random_forward_fails_determinism():
    r = check_model(lambda: nano_llama(NoisyForward), label="noisy", only=["determinism"]).result("determinism")
    assert not r.passed and "two forwards of the same model on the same tokens differ" in r.detail


class HiddenState(Llama):
    """Keeps a random scale in a non-persistent buffer: lost in a safetensors round trip."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("scale", torch.rand(1) + 0.5, persistent=False)

    def forward(self, tokens, cache=None):
        return super().forward(tokens, cache) * self.scale


def test_state_outside_the_state_dict_fails_save_load():
    r = check_model(lambda: nano_llama(HiddenState), label="hidden", only=["save_load"]).result("save_load")
    assert not r.passed and "differ" in r.detail and r.value > 0


def test_tied_embeddings_survive_save_load():
    report = run_checks("llama", "nano", overrides={"tie_embeddings": True}, only=["save_load", "params"])
    assert report.passed, report.summary()


class NanGrad(Llama):
    def forward(self, tokens, cache=None):
        logits = super().forward(tokens, cache)
        return logits + (logits * 0).sqrt()  # forward unchanged, backward 0 * inf = NaN


def test_nan_gradients_fail_finite_grads():
    r = check_model(lambda: nano_llama(NanGrad), label="nangrad", only=["finite_grads"]).result("finite_grads")
    assert not r.passed and r.detail.startswith("non-finite gradients in")


class UnusedParam(Llama):
    def __init__(self, config):
        super().__init__(config)
        self.unused = nn.Parameter(torch.zeros(3))


def test_parameter_without_gradient_is_a_warning_not_a_failure():
    r = check_model(lambda: nano_llama(UnusedParam), label="unused", only=["finite_grads"]).result("finite_grads")
    assert r.passed and "warning: 1 parameters get no gradient: unused" in r.detail


class LyingCounts(Llama):
    def param_counts(self):
        c = super().param_counts()
        return type(c)(total=c.total + 1, non_embedding=c.non_embedding, active=c.total)


def test_param_counts_disagreeing_with_the_module_fail():
    r = check_model(lambda: nano_llama(LyingCounts), label="lying", only=["params"]).result("params")
    assert not r.passed and "param_counts().total = 164,161 but the module has 164,160" in r.detail


class WrongShape(Llama):
    def forward(self, tokens, cache=None):
        return super().forward(tokens, cache)[:, :-1]


def test_wrong_output_shape_fails_every_forward_check():
    report = check_model(lambda: nano_llama(WrongShape), label="shape", only=["shape", "causality", "overfit"])
    assert not any(r.passed for r in report.results)
    assert "forward returned logits of shape [2, 31, 256], expected [B, T, V] = [2, 32, 256]" in \
        report.result("shape").detail


def test_model_that_raises_on_build_gets_one_failing_row():
    def factory():
        raise RuntimeError("boom")

    report = check_model(factory, label="boom")
    assert [(r.name, r.passed) for r in report.results] == [("build", False)]
    assert "RuntimeError" in report.results[0].detail and "boom" in report.results[0].detail


def test_checks_leave_the_callers_rng_and_threads_alone():
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_checks("llama", "nano", only=["shape", "determinism"])
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_report_to_dict_is_json_ready():
    report = run_checks("llama", "nano", only=["shape", "params"])
    d = json.loads(json.dumps(report.to_dict()))
    assert d["model"] == "llama:nano" and d["preset"] == "nano" and d["passed"] is True
    assert [r["name"] for r in d["results"]] == ["shape", "params"]
    assert d["results"][1]["value"] == 164160 and d["results"][1]["status"] == "pass"


def test_unknown_check_name_is_a_user_error():
    with pytest.raises(LumiError, match=r"unknown check 'causalty'.*did you mean 'causality'"):
        run_checks("llama", "nano", only=["causalty"])
    assert list(CHECKS)[:3] == ["shape", "causality_perturbation", "causality_gradient"]


# -- the CLI -------------------------------------------------------------------------------------

def _lumi(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "lumi", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_cli_good_plugin_registers_from_a_file_and_passes():
    proc = _lumi("check", "shiftmix", "--model-file", str(PLUGINS / "shiftmix.py"), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["passed"] is True and out["model"] == "shiftmix"
    assert [r["model"] for r in out["reports"]] == ["shiftmix:nano"]  # the plugin's cpu_presets
    assert [r["name"] for r in out["reports"][0]["results"]] == list(CHECKS)
    assert out["tolerances"]["perturbation_atol_times_max_abs_logit"] == 1e-5
    assert out["tolerances"]["flops_rtol"] == 0.05


def test_cli_rejects_leaky_plugin_with_exit_code_1():
    proc = _lumi("check", "leaky_shifted_mask:nano", "--model-file", str(PLUGINS / "leaky_shifted_mask.py"),
                 "--only", "causality")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout
    assert "2 of 3 checks FAILED — causality_perturbation: LEAK at position 0: changing the tokens after " \
           "position t=0" in proc.stdout


def test_docs_plugin_is_the_tested_plugin():
    doc = (REPO / "docs" / "plugins.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert block.strip() == (PLUGINS / "shiftmix.py").read_text().strip()


@pytest.mark.parametrize(("argv", "message"), [
    (["check", "lama"], "unknown model 'lama' (did you mean 'llama'?)"),
    (["check", "llama", "--preset", "nanoo"], "unknown preset 'nanoo' for model 'llama' (did you mean 'nano'?)"),
    (["check", "llama:nano", "--set", "n_heads=3"], "n_heads=3 must divide d_model=64"),
    (["check", "llama:nano", "--set", "n_kv_heads=3"], "n_kv_heads=3 must divide n_heads=2"),
    (["check", "llama:nano", "--set", "mlp=relu"], "mlp must be one of swiglu, relu2, gelu, got 'relu'"),
    (["check", "llama:nano", "--set", "n_layer=3"], "unknown config field 'n_layer' for model 'llama' (did you mean"),
    (["check", "llama:nano", "--set", "n_layers=three"], "config field 'n_layers' of model 'llama' expects int"),
    (["check", "llama:nano", "--set", "n_layers"], "override 'n_layers' must look like FIELD=VALUE"),
    (["check", "llama:nano", "--only", "leaks"], "unknown check 'leaks'"),
    (["check", "llama:nano", "--seq-len", "2"], "--seq-len must be >= 4"),
    (["check", "llama:nano", "--seq-len", "32,x"], "--seq-len takes lengths separated by commas, e.g. 32 or 32,512"),
    (["check", "llama:nano", "--seq-len", "32,1"], "probe lengths must be >= 2, got 1"),
    (["check", "x", "--model-file", "no/such/plugin.py"], "model file 'no/such/plugin.py' does not exist"),
    (["models", "--model-file", "no/such/plugin.py"], "model file 'no/such/plugin.py' does not exist"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(argv, message, capsys, clean_registry):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lumi {argv[0]}: error: ") and message in err, err


def test_cli_plugin_raising_on_import_exits_2(tmp_path, capsys, clean_registry):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import torch\nraise ValueError('half-written architecture')\n")
    assert main(["check", "anything", "--model-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"model file '{bad}' raised on import: ValueError: half-written architecture" in err


def test_cli_models_lists_llama_presets_with_formula_counts(capsys, clean_registry):
    from lumi.models.llama import llama_param_formula
    from lumi.models.registry import make_config

    assert main(["models", "--json", "--model-file", str(PLUGINS / "shiftmix.py")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vocab_size"] == 4096
    models = {m["name"]: m for m in out["models"]}
    assert models["llama"]["source"] == "built-in"
    assert models["shiftmix"]["source"] == str(PLUGINS / "shiftmix.py")
    rows = {r["preset"]: r for r in models["llama"]["presets"]}
    for preset in ("nano", "micro", "tiny", "small", "base"):
        want = llama_param_formula(make_config("llama", preset, vocab_size=4096))
        assert (rows[preset]["params"], rows[preset]["non_embedding_params"]) == (want["total"], want["non_embedding"])
        assert rows[preset]["vocab_size"] == 4096
    assert rows["nano"]["cpu"] and not rows["base"]["cpu"]

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "vocab 4096" in text and "llama" in text and "nano*" in text

"""`lumi bench`: the figures, the HF twin, cache bytes, bad input; and greedy batch decoding."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lumi.bench.measure import Figure
from lumi.cli import main
from lumi.generate import decode_greedy, generate
from lumi.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--seq-len", "32", "--batch", "2", "--prompt-len", "8", "--new-tokens", "4", "--rounds", "2",
         "--train-steps", "1", "--vocab-size", "300"]


def test_figure_statistics():
    rate = Figure("tokens/s", values=[100.0, 120.0, 80.0])
    assert rate.median == 100.0 and rate.best == 120.0 and rate.spread == pytest.approx(0.4)
    time_ = Figure("s", higher_is_better=False, values=[0.5, 0.25, 1.0])
    assert time_.best == 0.25 and time_.median == 0.5
    empty = Figure("tokens/s").as_dict()
    assert empty["median"] is None and empty["best"] is None and empty["spread"] is None


def test_bench_json_with_hf_twin_and_cache_bytes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "llama:nano", "mla:nano", "bytepatch:nano", "--hf", *SMALL, "--out", str(out),
                 "--json", "--no-memory"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert printed["subjects"] == result["subjects"]
    rows = {r["name"]: r for r in result["subjects"]}
    assert list(rows) == ["llama:nano", "hf:llama:nano", "mla:nano", "bytepatch:nano"]
    for row in rows.values():
        figs = row["figures"]
        for key in ("train_tok_per_s", "mfu", "prefill_tok_per_s", "ttft_s", "decode_b1_tok_per_s"):
            assert len(figs[key]["rounds"]) == 2 and figs[key]["median"] > 0, (row["name"], key)
            assert figs[key]["spread"] >= 0
    # Cache bytes per token and sequence, by growth: K and V of every layer, float32.
    llama = build_model("llama", "nano")
    c = llama.config
    kv_bytes = 2 * c.n_layers * c.kv_heads * c.dim_head * 4
    assert rows["llama:nano"]["cache_bytes"] == {"per_token": kv_bytes, "fixed": 0.0}
    assert rows["hf:llama:nano"]["cache_bytes"]["per_token"] == kv_bytes  # HF's own DynamicCache
    mla = build_model("mla", "nano")
    assert rows["mla:nano"]["cache_bytes"]["per_token"] == 4 * mla.cache_numbers_per_token()
    assert rows["bytepatch:nano"]["has_cache"] is False
    assert rows["bytepatch:nano"]["cache_bytes"] == {"per_token": None, "fixed": None}
    # Same dims, same analytic FLOPs: the twin's MFU uses the Lumi model's count.
    assert rows["hf:llama:nano"]["params"] == rows["llama:nano"]["params"]
    assert rows["hf:llama:nano"]["flops_per_token"] == rows["llama:nano"]["flops_per_token"]
    (ratio,) = result["ratios"]
    assert ratio["lumi"] == "llama:nano" and ratio["hf"] == "hf:llama:nano"
    assert set(ratio["lumi_over_hf"]) >= {"train_tok_per_s", "decode_b1_tok_per_s", "ttft_speedup"}
    assert all(v > 0 and math.isfinite(v) for v in ratio["lumi_over_hf"].values())


def test_bench_table_memory_and_missing_cache(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "bytepatch:nano", *SMALL, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "(no cache)" in captured.out and "bytepatch:nano" in captured.out
    assert "no KV cache" in captured.err
    assert f"wrote {out}" in captured.out
    (row,) = json.loads(out.read_text())["subjects"]
    memory = row["memory"]  # measured in a fresh process
    assert memory["train_step_bytes"] > 0 and memory["decode_bytes"] > 0
    assert memory["param_bytes"] == 4 * row["params"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["mla:nano", "--hf"], "only a plain `llama` model"),
        (["llama:nano+mlp=relu2", "--hf"], "only a plain `llama` model"),
        (["llama:nano", "--seq-len", "1"], "--seq-len must be >= 2"),
        (["llama:nano", "llama:nano"], "named twice"),
        (["nosuchmodel"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    assert main(["bench", *args, "--no-memory", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("lumi bench: error:")


BOUNDED = """
from dataclasses import dataclass
import torch
from torch import nn
import lumi

@dataclass
class PosConfig(lumi.ModelConfig):
    d_model: int = 16
    max_len: int = 40

@lumi.register("posbench", description="learned positions", presets={"t": {}})
class Pos(lumi.LumiModel):
    config_class = PosConfig
    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)
    def forward(self, tokens):
        return self.head(self.embed(tokens) + self.pos.weight[: tokens.shape[1]])
    def max_context(self):
        return self.config.max_len
    def flops_per_token(self, seq_len):
        return 6.0 * self.config.d_model * self.config.vocab_size
"""


def test_sequence_beyond_the_models_context_is_refused(tmp_path, capsys):
    plugin = tmp_path / "posbench.py"
    plugin.write_text(BOUNDED)
    base = ["bench", "posbench:t", "--model-file", str(plugin), "--no-memory", "--out", str(tmp_path / "b.json")]
    assert main([*base, "--seq-len", "41"]) == 2
    assert "--seq-len = 41 is beyond the model's maximum context of 40 tokens" in capsys.readouterr().err
    assert main([*base, "--seq-len", "40", "--prompt-len", "30", "--new-tokens", "11"]) == 2
    assert "--prompt-len + --new-tokens = 41 is beyond" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["llama:nano", "mla:nano", "multiscale:nano"])
def test_decode_greedy_batch_matches_one_row_generate(model):
    name, preset = model.split(":")
    torch.manual_seed(0)
    m = build_model(name, preset).eval()
    prompt = torch.randint(0, m.config.vocab_size, (3, 7))
    cached, cache = decode_greedy(m, prompt, 6)
    uncached, none = decode_greedy(m, prompt, 6, use_cache=False)
    assert cache is not None and none is None
    assert torch.equal(cached, uncached)
    for row in range(3):  # the batch decodes each row as lumi generate would alone
        assert cached[row].tolist() == generate(m, prompt[row].tolist(), 6, temperature=0)


def test_training_after_decoding_past_the_rope_tables():
    """Decoding runs under inference_mode; RoPE tables it grows must still be usable by autograd."""
    torch.manual_seed(0)
    m = build_model("llama", "nano")
    decode_greedy(m.eval(), torch.zeros(1, 4, dtype=torch.long), 100)  # tables grow while decoding
    x = torch.randint(0, m.config.vocab_size, (2, 90))
    m.train()(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())

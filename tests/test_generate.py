"""`lumi generate`: cached == uncached greedy decoding, sampling filters, loading a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lumi.cli import main
from lumi.errors import LumiError
from lumi.generate import generate, sample_next
from lumi.run import load_run_model
from lumi.models import build_model, list_models

PLUGINS = Path(__file__).parent / "plugins"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def trained_llama(seed: int = 0, steps: int = 30, **overrides):
    """A nano llama fitted briefly to a repeating pattern, so greedy choices are clear-cut."""
    torch.manual_seed(seed)
    model = build_model("llama", "nano", overrides)
    pattern = torch.tensor([[5, 17, 42, 99, 7, 23, 61, 88, 3, 140, 200, 11]]).repeat(2, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = model(pattern)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 256), pattern[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("overrides", [{}, {"n_heads": 4, "n_kv_heads": 1, "qk_norm": True}])
def test_cached_and_uncached_greedy_generation_are_identical(overrides):
    model = trained_llama(**overrides)
    prompt = [5, 17, 42]
    cached = generate(model, prompt, 40, temperature=0, use_cache=True)
    uncached = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert cached == uncached
    assert len(cached) == 40
    assert cached[:9] == [99, 7, 23, 61, 88, 3, 140, 200, 11]  # it learned the pattern: the test is not vacuous


def test_untrained_model_cached_and_uncached_agree_too():
    torch.manual_seed(1)
    model = build_model("llama", "nano", {"init_std": 0.3})
    prompt = list(range(10, 20))
    assert generate(model, prompt, 30, temperature=0) == generate(model, prompt, 30, temperature=0, use_cache=False)


CACHED_MODELS = [(s.name, s.cpu_presets[0]) for s in list_models() if s.cls.supports_cache and s.cpu_presets]


@pytest.mark.parametrize(("name", "preset"), CACHED_MODELS, ids=[f"{n}:{p}" for n, p in CACHED_MODELS])
def test_every_zoo_model_with_a_cache_decodes_like_its_full_forward(name, preset):
    torch.manual_seed(2)
    model = build_model(name, preset).eval()
    v = model.config.vocab_size
    prompt = torch.randint(0, min(v, 256), (6,), generator=torch.Generator().manual_seed(3)).tolist()
    # Compare logits along a fixed continuation (robust to near-ties of an untrained model) ...
    cont = torch.randint(0, min(v, 256), (10,), generator=torch.Generator().manual_seed(4)).tolist()
    full_ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        full = model(full_ids)
        cache = model.new_cache()
        steps = [model(full_ids[:, :6], cache=cache)] + [model(full_ids[:, i:i + 1], cache=cache) for i in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    # ... and generation runs through the cache.
    assert len(generate(model, prompt, 5, temperature=0)) == 5


def test_model_without_a_cache_falls_back_to_full_forwards(monkeypatch):
    from lumi.models import load_model_file, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    load_model_file(PLUGINS / "shiftmix.py")
    torch.manual_seed(0)
    model = build_model("shiftmix", "nano")
    assert not model.supports_cache
    out = generate(model, [1, 2, 3], 8, temperature=0)
    # greedy by hand: argmax of the full forward, one token at a time
    ids = [1, 2, 3]
    for _ in range(8):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[3:]


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = trained_llama(steps=5)
    a = generate(model, [5, 17], 30, temperature=1.0, seed=7)
    b = generate(model, [5, 17], 30, temperature=1.0, seed=7)
    c = generate(model, [5, 17], 30, temperature=1.0, seed=8)
    assert a == b and a != c


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = trained_llama(steps=5)
    greedy = generate(model, [5, 17], 20, temperature=0)
    assert generate(model, [5, 17], 20, temperature=1.5, top_k=1, seed=3) == greedy
    assert generate(model, [5, 17], 20, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_top_k_and_top_p_restrict_the_support():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))
    assert {sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(300)} == {1, 2}
    # top_p 0.7: 0.5 alone is not enough, 0.5 + 0.3 reaches it -> tokens 1 and 2 only
    assert {sample_next(logits, 1.0, top_p=0.7, generator=g) for _ in range(300)} == {1, 2}
    # top_p 0.85 needs the third token too
    assert {sample_next(logits, 1.0, top_p=0.85, generator=g) for _ in range(400)} == {1, 2, 3}
    assert sample_next(logits, 0.0) == 1


def test_stop_ids_end_generation_early():
    model = trained_llama()
    out = generate(model, [5, 17, 42], 40, temperature=0, stop_ids=[88])
    assert out == [99, 7, 23, 61, 88]


@pytest.mark.parametrize("kwargs,message", [
    ({"prompt_ids": []}, "the prompt is empty"),
    ({"prompt_ids": [300]}, "prompt token id 300 is outside the model's vocabulary [0, 256)"),
    ({"max_new_tokens": -1}, "--max-new-tokens must be >= 0"),
    ({"temperature": -0.5}, "--temperature must be >= 0"),
    ({"top_k": 0}, "--top-k must be >= 1"),
    ({"top_p": 1.5}, "--top-p must be in (0, 1]"),
])
def test_invalid_generation_arguments_raise_lumi_error(kwargs, message):
    torch.manual_seed(0)
    model = build_model("llama", "nano")
    args = {"prompt_ids": [1, 2], "max_new_tokens": 3, **kwargs}
    with pytest.raises(LumiError) as info:
        generate(model, **args)
    assert message in str(info.value)


# -- run directories -----------------------------------------------------------------------------

def fake_run(tmp_path: Path, model, tokenizer: str = "bytes", data_dir: str | None = None) -> Path:
    """A run directory in the layout `lumi train` writes (config.yaml + checkpoints/latest/)."""
    from lumi.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "llama", "preset": "nano", "overrides": {}, "files": []},
        "data": {"corpus": "shakespeare", "tokenizer": tokenizer, "dir": data_dir},
    }))
    save_checkpoint(run / "checkpoints", model, {}, {"step": 1})
    return run


def test_load_run_model_restores_weights_and_tokenizer(tmp_path):
    torch.manual_seed(0)
    model = build_model("llama", "nano", vocab_size=257).eval()
    run = fake_run(tmp_path, model)
    for where in (run, run / "checkpoints" / "latest", run / "checkpoints" / "latest" / "model.safetensors"):
        loaded, tok = load_run_model(where)
        assert tok.vocab_size == 257 and tok.encode("hi") == [104, 105]
        x = torch.randint(0, 257, (1, 12))
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_load_run_model_uses_the_prepared_data_tokenizer(tmp_path, tiny_prepared):
    torch.manual_seed(0)
    model = build_model("llama", "nano", vocab_size=tiny_prepared.vocab_size)
    run = fake_run(tmp_path, model, tokenizer="bpe:999", data_dir=str(tiny_prepared.directory))
    _, tok = load_run_model(run)
    assert tok.fingerprint() == tiny_prepared.tokenizer.fingerprint()


def test_cli_generate_from_a_run_directory(tmp_path, capsys):
    model = trained_llama()
    # the trained pattern lives in ids < 256; give the model the bytes tokenizer's 257 ids
    big = build_model("llama", "nano", vocab_size=257)
    sd = model.state_dict()
    for k in ("embed.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.full((1, 64), -1.0)])  # the separator row: never chosen
    big.load_state_dict(sd)
    run = fake_run(tmp_path, big)
    prompt = bytes([5, 17, 42]).decode("latin-1")  # ids 5, 17, 42 are ASCII control bytes
    assert main(["generate", str(run), "--prompt", prompt, "--max-new-tokens", "6", "--temperature", "0",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == [256, 5, 17, 42]  # the document separator starts the prompt
    assert out["new_ids"] == generate(big, [256, 5, 17, 42], 6, temperature=0, use_cache=False)
    assert out["kv_cache"] is True and out["new_tokens"] == 6


def test_cli_generate_random_init_smoke_run(capsys):
    assert main(["generate", "--model", "llama:nano", "--prompt", "Hi", "--max-new-tokens", "4", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Hi")
    assert "-- 4 tokens from llama:nano (random init)" in captured.err


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("no_config", "is not a run directory: it has neither config.yaml nor model.safetensors"),
    ("no_checkpoint", "has no complete checkpoint under"),
    ("no_tokenizer", "cannot find the tokenizer of run"),
])
def test_cli_generate_bad_run_directory_exits_2(tmp_path, capsys, layout, message):
    run = tmp_path / "run"
    if layout != "missing":
        run.mkdir()
    if layout in ("no_checkpoint", "no_tokenizer"):
        (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "llama"},
                                                         "data": {"corpus": "nope", "tokenizer": "bpe:999",
                                                                  "dir": str(tmp_path / "gone")}}))
    if layout == "no_tokenizer":
        from lumi.train.checkpoint import save_checkpoint

        save_checkpoint(run / "checkpoints", build_model("llama", "nano", vocab_size=999), {}, {"step": 1})
    assert main(["generate", str(run), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumi generate: error: ") and message in err, err

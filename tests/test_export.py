"""`lumi export` (Hugging Face with parity, Lumi directories), `lumi pack` / `lumi unpack` (int8/6/4 artifacts)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lumi.cli import main
from lumi.errors import LumiError
from lumi.export import pack
from lumi.export.quant import BITS, dequantize, pack_codes, qmax, quantize, unpack_codes
from lumi.models import build_model, list_models
from lumi.run import Run, load_run_model
from lumi.train.checkpoint import save_checkpoint

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module", params=["bytes", "bpe:300"])
def trained_run(request, tiny_corpus_dir, tmp_path_factory) -> Path:
    """A real `lumi train` run of llama:nano (20 steps) on the tiny corpus, with each tokenizer kind."""
    out = tmp_path_factory.mktemp("export-run") / "run"
    code = main(["train", "llama:nano", "--corpus", f"files:{tiny_corpus_dir}/*.txt", "--tokenizer", request.param,
                 "--budget", "20steps", "--out", str(out), "--no-progress", "--json",
                 "--set", "train.seq_len=32", "--set", "train.batch_size=8", "--set", "train.eval_every_s=null",
                 "--set", "train.causality_preflight=false", "--set", "train.causality_audit=false"])
    assert code == 0
    return out


def fake_run(tmp_path: Path, model, name: str = "llama", files: list[str] | None = None) -> Path:
    """A run directory holding ``model`` as its checkpoint (bytes tokenizer: needs no prepared data)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": name, "preset": None, "overrides": {}, "files": files or []},
        "data": {"corpus": "shakespeare", "tokenizer": "bytes"},
    }))
    state = {"step": 1, "model_files": {}}
    if files:
        from lumi.models.registry import model_file_hashes

        state["model_files"] = model_file_hashes(files)
    save_checkpoint(run / "checkpoints", model, {}, state)
    return run


# -- Hugging Face ---------------------------------------------------------------------------------------


def test_hf_export_loads_in_transformers_with_the_same_logits_greedy_text_and_tokens(trained_run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    check = report["check"]
    assert check["max_abs_logit_diff"] <= 1e-4 and check["greedy_match"] and check["tokenizer_match"]
    assert check["tokenizer_roundtrip"]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    # Independently of the command's own check: load with the Auto classes and compare.
    model, tok = load_run_model(trained_run)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "ROMEO: a rose by any other name\nwould smell as sweet — ✓"
    ids = [tok.sep_id, *tok.encode(text)]
    assert hf_tok(text)["input_ids"] == ids  # the separator starts a document, as in Lumi
    assert hf_tok.decode(ids, skip_special_tokens=True) == text
    assert hf_tok("<|sep|>", add_special_tokens=False)["input_ids"] == tok.encode("<|sep|>")  # text, not a separator
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (model(x) - hf_model(x).logits).abs().max().item() <= 1e-4
    assert hf_model.config.eos_token_id == tok.sep_id and hf_model.config.vocab_size == tok.vocab_size


def test_lm_eval_hf_backend_opens_the_export_and_scores_like_lumi(trained_run, tmp_path):
    pytest.importorskip("accelerate")
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    out = tmp_path / "hf"
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(out), "--no-check"]) == 0
    lm = huggingface.HFLM(pretrained=str(out), device="cpu", batch_size=1)
    context, continuation = "To be, or not", " to be, that is the question."
    [(logprob, greedy)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    # Lumi's own number: log p(continuation | separator + context), the separator starting the document.
    model, tok = load_run_model(trained_run)
    ctx = [tok.sep_id, *tok.encode(context)]
    whole = [tok.sep_id, *tok.encode(context + continuation)]
    assert whole[: len(ctx)] == ctx
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0, :-1].double(), -1)
    targets = ids[0, len(ctx) :]
    scored = logp[len(ctx) - 1 :]
    assert logprob == pytest.approx(scored.gather(1, targets[:, None]).sum().item(), abs=1e-3)
    assert greedy == bool((scored.argmax(-1) == targets).all())


@pytest.mark.parametrize(("overrides", "switch"), [
    ({"mlp": "relu2"}, "mlp=relu2"),
    ({"qk_norm": True}, "qk_norm=true"),
    ({"logit_softcap": 15.0}, "logit_softcap=15.0"),
])
def test_hf_export_refuses_switches_llama_cannot_express(overrides, switch, tmp_path, capsys):
    run = fake_run(tmp_path, build_model("llama", "nano", overrides, vocab_size=257))
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert switch in err and "\n" not in err and not (tmp_path / "hf").exists()


def test_hf_export_of_another_family_says_which_formats_it_has(tmp_path, capsys):
    run = fake_run(tmp_path, build_model("multiscale", "nano", vocab_size=257), name="multiscale")
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face equivalent" in err and "--format lumi" in err and "lumi pack" in err


def test_export_refuses_an_existing_directory_and_a_run_without_checkpoint(tmp_path, capsys):
    run = fake_run(tmp_path, build_model("llama", "nano", vocab_size=257))
    (tmp_path / "taken").mkdir()
    assert main(["export", str(run), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "taken"), "--force"]) == 0
    assert (tmp_path / "taken" / "lumi_export.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["export", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_a_full_disk_during_export_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    run = fake_run(tmp_path, build_model("llama", "nano", vocab_size=257))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output, no temp directory


# -- Lumi directories -----------------------------------------------------------------------------------

ZOO = [(s.name, s.cpu_presets[0]) for s in list_models() if s.cpu_presets]


@pytest.mark.parametrize(("name", "preset"), ZOO, ids=[f"{n}:{p}" for n, p in ZOO])
def test_lumi_export_round_trips_every_zoo_model(name, preset, tmp_path):
    import lumi

    torch.manual_seed(0)
    model = build_model(name, preset, vocab_size=257).eval()
    run = fake_run(tmp_path, model, name=name)
    assert main(["export", str(run), "--format", "lumi", "--out", str(tmp_path / "exp")]) == 0
    loaded, tok = lumi.load(tmp_path / "exp")
    x = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert tok.spec == "bytes"


def test_lumi_export_of_a_plugin_needs_and_checks_its_file(tmp_path, monkeypatch, capsys):
    import lumi
    from lumi.models import load_model_file, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    plugin = str((PLUGINS / "shiftmix.py").resolve())
    load_model_file(plugin)
    model = build_model("shiftmix", "nano", vocab_size=257).eval()
    run = fake_run(tmp_path, model, name="shiftmix", files=[plugin])
    assert main(["export", str(run), "--out", str(tmp_path / "exp"), "--model-file", plugin]) == 0
    loaded, _ = lumi.load(tmp_path / "exp", model_files=[plugin])
    x = torch.randint(0, 257, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    manifest = json.loads((tmp_path / "exp" / "lumi_export.json").read_text())
    assert list(manifest["model_files"]) == [plugin]


# -- packing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
def test_bit_packing_is_exact_and_quantisation_error_is_at_most_half_a_step(bits):
    rng = np.random.default_rng(bits)
    for n in (1, 2, 3, 5, 7, 64, 1001):
        codes = rng.integers(0, 1 << bits, n).astype(np.uint8)
        assert np.array_equal(unpack_codes(pack_codes(codes, bits), bits, n), codes)
    w = torch.randn(13, 37) * torch.rand(13, 1) * 3
    w[4] = 0.0  # an all-zero row
    qm = quantize(w, bits)
    back = dequantize(qm)
    step = torch.from_numpy(qm.scales.astype(np.float32))[:, None]
    assert (back - w).abs().le(step / 2 + 1e-6).all() and back[4].eq(0).all()
    assert len(qm.codes) == {8: 13 * 37, 6: (13 * 37 + 3) // 4 * 3, 4: (13 * 37 + 1) // 2}[bits]
    assert qmax(bits) == {8: 127, 6: 31, 4: 7}[bits]


@pytest.mark.parametrize(("name", "preset"), ZOO, ids=[f"{n}:{p}" for n, p in ZOO])
def test_pack_round_trips_every_zoo_model(name, preset):
    torch.manual_seed(0)
    model = build_model(name, preset, vocab_size=257).eval()
    from lumi.data.tokenizers import BytesTokenizer

    packed = pack.pack_model(name, model, BytesTokenizer(), 8, {})
    header = pack.read_artifact(pack.compress(packed.payload, "zlib"), "test")
    restored, tok = pack.unpacked_model(header)
    original = model.state_dict()
    for key, value in restored.state_dict().items():
        if value.dim() < 2 or not value.is_floating_point():  # kept exactly (norms, biases, buffers)
            assert torch.equal(value, original[key]), key
        else:
            scale = original[key].abs().reshape(value.shape[0], -1).amax(1).clamp_min(1e-12)
            err = (value - original[key]).abs().reshape(value.shape[0], -1).amax(1)
            assert (err <= scale / 127 / 2 * 1.01 + 1e-7).all(), key
    x = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, 257), x[:, 1:].reshape(-1))
        ce_rt = torch.nn.functional.cross_entropy(restored(x)[:, :-1].reshape(-1, 257), x[:, 1:].reshape(-1))
    assert abs(ce_rt.item() - ce.item()) < 0.01 and tok.spec == "bytes"


def test_pack_a_trained_run_reports_bytes_code_and_delta_bpb(trained_run, tmp_path, capsys):
    artifact = tmp_path / "a.lumipack"
    assert main(["pack", str(trained_run), "--out", str(artifact), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    [row] = out["rows"]
    assert (row["bits"], row["codec"]) == (8, "zlib") and row["fits"] and out["limit_bytes"] == 16_000_000
    assert row["artifact_bytes"] == artifact.stat().st_size
    assert row["total_bytes"] == row["artifact_bytes"] + out["code_bytes"]
    assert {Path(f).name for f in out["code_files"]} >= {"llama.py", "layers.py", "quant.py", "pack.py"}
    assert abs(row["delta_bpb"]) <= 0.01  # int8 per row: the golf baseline pays ~0.007
    # unpack -> lumi.load gives the same model the pack scored
    import lumi

    assert main(["unpack", str(artifact), "--out", str(tmp_path / "unpacked")]) == 0
    model, _ = lumi.load(tmp_path / "unpacked")
    header = pack.read_artifact(artifact.read_bytes(), "a")
    direct, _ = pack.unpacked_model(header)
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(x), direct(x))


def test_pack_sweep_and_a_tight_limit(trained_run, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pack", str(trained_run), "--sweep", "--limit", "1kB", "--max-targets", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    codecs = [c for c in pack.CODECS if pack.codec_available(c)]
    assert [(r["bits"], r["codec"]) for r in out["rows"]] == [(b, c) for b in BITS for c in codecs]
    assert not any(r["fits"] for r in out["rows"])  # nothing fits in 1,000 bytes
    sizes = {r["bits"]: r["artifact_bytes"] for r in out["rows"] if r["codec"] == "zlib"}
    assert sizes[4] < sizes[6] < sizes[8]


def test_a_corrupted_or_foreign_pack_file_is_named(tmp_path, capsys):
    from lumi.data.tokenizers import BytesTokenizer

    model = build_model("llama", "nano", vocab_size=257)
    data = bytearray(pack.compress(pack.pack_model("llama", model, BytesTokenizer(), 4, {}).payload, "lzma"))
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.lumipack"
    bad.write_bytes(bytes(data))
    assert main(["unpack", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.lumipack is corrupted: checksum mismatch" in err and not (tmp_path / "o").exists()
    (tmp_path / "x.lumipack").write_text("hello")
    with pytest.raises(LumiError, match="not a Lumi pack file"):
        pack.read_artifact((tmp_path / "x.lumipack").read_bytes(), "x.lumipack")
    assert pack.parse_size("16MB") == 16_000_000 and pack.parse_size("16MiB") == 16 * 2**20
    with pytest.raises(LumiError, match="does not parse"):
        pack.parse_size("lots")


def test_run_summary_bpb_lands_in_the_manifest(trained_run, tmp_path):
    assert main(["export", str(trained_run), "--out", str(tmp_path / "e")]) == 0
    manifest = json.loads((tmp_path / "e" / "lumi_export.json").read_text())
    assert manifest["val_bpb"] == Run(trained_run).summary()["final_val_bpb"] and manifest["step"] == 20

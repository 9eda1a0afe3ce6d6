"""Run directories are data, never code; one writer per run; full disks and bad input end in one line.

Each test fails on the code before issue 13: a run's config.yaml could make generate/eval/resume import
a plugin, two `lumi train` could write one directory, ENOSPC escaped as tracebacks with `running` left
in summary.json, an edited config.yaml resumed silently, and the small items of the issue.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lumi.cli import main
from lumi.errors import LumiError
from lumi.models import registry
from lumi.train import checkpoint as ckpt
from lumi.train.config import load_config
from lumi.train.loop import train
from lumi.run import read_metrics

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).parent / "plugins"

pytestmark = pytest.mark.usefixtures("one_thread")

EVIL = """\
from pathlib import Path
Path(__file__).with_name("PWNED").write_text("imported")
"""


def tiny_args(corpus: Path) -> list[str]:
    """`lumi train` settings for a 4-step llama:nano run with no probes: about a second."""
    sets = ["train.seq_len=32", "train.batch_size=4", "train.log_every=2", "train.eval_every_s=null",
            "train.eval_tokens=64", "train.final_eval=subset", "train.checkpoint_every_s=null",
            "train.checkpoint_every_steps=2", "train.peak_flops=1e11", "train.threads=1",
            "train.causality_preflight=false", "train.causality_audit=false"]
    return [f"--corpus=files:{corpus}", "--tokenizer", "bytes", "--budget", "4steps", "--no-progress",
            *[a for s in sets for a in ("--set", s)]]


def tiny_config(corpus: Path, *overrides: str):
    return load_config(None, [
        "model.preset=nano", f"data.corpus=files:{corpus}", "data.tokenizer=bytes", "train.seq_len=32",
        "train.batch_size=4", "train.budget=4steps", "train.log_every=2", "train.eval_every_s=null",
        "train.eval_tokens=64", "train.final_eval=subset", "train.checkpoint_every_s=null",
        "train.checkpoint_every_steps=2", "train.peak_flops=1e11", "train.threads=1",
        "train.causality_preflight=false", "train.causality_audit=false", *overrides])


@pytest.fixture(scope="module")
def base_run(tiny_corpus_dir, tmp_path_factory) -> Path:
    """One completed llama:nano run; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("safety") / "base"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(tiny_config(tiny_corpus_dir), run, progress=False)["status"] == "completed"
    finally:
        torch.set_num_threads(old)
    return run


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Forget which plugin files this test process imported (the registry is process-wide)."""
    monkeypatch.setattr(registry, "_LOADED_FILES", {}, raising=False)


def one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lumi {verb}: error:"), err
    return err[0]


# -- 1. a run directory cannot execute code ----------------------------------------------------------

def _plant_evil_plugin(run: Path, relative: bool) -> None:
    (run / "evil.py").write_text(EVIL)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["files"] = ["evil.py" if relative else str(run / "evil.py")]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("argv", [["generate", "{run}", "--max-new-tokens", "2"], ["eval", "{run}"],
                                  ["train", "--resume", "{run}", "--no-progress"]])
def test_a_run_directory_never_imports_its_plugin_files(run_copy, fresh_plugins, capsys, argv, relative):
    _plant_evil_plugin(run_copy, relative)
    assert main([a.format(run=run_copy) for a in argv]) == 2
    line = one_line_error(capsys, argv[0])
    assert "evil.py" in line and "--model-file" in line and "does not import code named inside a run" in line
    assert not (run_copy / "PWNED").exists()


def test_a_plugin_run_needs_its_file_on_the_command_line(tiny_corpus_dir, tmp_path, fresh_plugins, capsys,
                                                         monkeypatch):
    plugin = tmp_path / "shiftmix.py"
    shutil.copy(PLUGINS / "shiftmix.py", plugin)
    run = tmp_path / "run"
    assert main(["train", "shiftmix:nano", "--model-file", str(plugin), "--out", str(run), "--json",
                 *tiny_args(tiny_corpus_dir)]) == 0
    capsys.readouterr()
    state = ckpt.load_state(ckpt.find_checkpoint(run / "checkpoints"))
    assert state["model_files"] == {str(plugin.resolve()): registry.file_sha256(plugin)}

    monkeypatch.setattr(registry, "_LOADED_FILES", {})
    for argv in (["generate", str(run), "--max-new-tokens", "2"], ["eval", str(run)],
                 ["train", "--resume", str(run), "--no-progress"]):
        assert main(argv) == 2
        line = one_line_error(capsys, argv[0])
        assert f"--model-file {plugin.resolve()}" in line

    # The same file passed again (here: a copy elsewhere, matched by content) is accepted.
    copy = tmp_path / "elsewhere" / "mine.py"
    copy.parent.mkdir()
    shutil.copy(plugin, copy)
    assert main(["generate", str(run), "--max-new-tokens", "3", "--model-file", str(copy), "--seed", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--model-file", str(copy), "--max-targets", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] > 0

    assert main(["train", "--resume", str(run), "--model-file", str(copy), "--no-progress"]) == 0
    assert "already complete" in capsys.readouterr().err

    # A plugin edited since the run was trained is refused by path.
    monkeypatch.setattr(registry, "_LOADED_FILES", {})
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    assert main(["train", "--resume", str(run), "--model-file", str(plugin), "--no-progress"]) == 2
    assert "changed since run" in one_line_error(capsys, "train")


def test_pickled_weights_and_optimizer_state_are_refused_in_one_line(run_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "x"))

    latest = run_copy / "checkpoints" / "latest"
    (latest / "model.safetensors").write_bytes(pickle.dumps({"w": Evil()}))
    assert main(["generate", str(run_copy), "--max-new-tokens", "2"]) == 2
    line = one_line_error(capsys, "generate")
    assert "not a valid safetensors file" in line and "model.safetensors" in line

    (latest / "optimizer.pt").write_bytes(pickle.dumps({"state": Evil()}))
    with pytest.raises(LumiError) as info:
        ckpt.load_optimizer_state(latest)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only=True" in msg and "weights_only=False" not in msg
    assert not marker.exists()


# -- 2. one writer per run directory ---------------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid(run_copy, tiny_corpus_dir, tmp_path, capsys):
    from lumi.lock import LOCK_NAME, acquire_directory_lock

    with acquire_directory_lock(run_copy):  # an open file description of our own, as another process would hold
        before = (run_copy / "metrics.jsonl").read_text()
        (run_copy / "summary.json").write_text(
            (run_copy / "summary.json").read_text().replace('"completed"', '"interrupted"'))
        assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
        line = one_line_error(capsys, "train")
        assert f"PID {os.getpid()}" in line and "in use" in line
        assert (run_copy / "metrics.jsonl").read_text() == before

        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with acquire_directory_lock(fresh):
            assert main(["train", "llama:nano", "--out", str(fresh), *tiny_args(tiny_corpus_dir)]) == 2
            assert f"PID {os.getpid()}" in one_line_error(capsys, "train")
        assert list(fresh.iterdir()) == []  # nothing written, lock file removed on release
    assert not (run_copy / LOCK_NAME).exists()


def test_a_killed_holder_releases_the_lock(tmp_path):
    from lumi.lock import acquire_directory_lock

    code = ("import sys, time; from lumi.lock import acquire_directory_lock; "
            "acquire_directory_lock(sys.argv[1]); print('locked', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LumiError, match=f"PID {proc.pid}"):
            acquire_directory_lock(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    acquire_directory_lock(tmp_path).release()  # SIGKILL released it


# -- 3. full disk and partial writes --------------------------------------------------------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _safetensors_enospc(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                          'message: "No space left on device" })')


@pytest.mark.parametrize("site", ["safetensors", "torch.save", "json", "os.replace", "fsync"])
def test_enospc_at_each_checkpoint_write_site(tmp_path, monkeypatch, site):
    import safetensors.torch

    from lumi.models import build_model

    model = build_model("llama", "nano", vocab_size=50)
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, model, {"adamw": {}}, {"step": 1})
    target = {"safetensors": (safetensors.torch, "save_model", _safetensors_enospc),
              "torch.save": (ckpt.torch, "save", _enospc),
              "json": (ckpt, "_write_text", _enospc),
              "os.replace": (ckpt.os, "replace", _enospc),
              "fsync": (ckpt, "_fsync_file", _enospc)}[site]
    monkeypatch.setattr(*target)
    with pytest.raises(LumiError) as info:
        ckpt.save_checkpoint(root, model, {"adamw": {}}, {"step": 2})
    msg = str(info.value)
    assert "\n" not in msg and "the disk is full" in msg and str(root) in msg and "latest is intact" in msg
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == ["latest"]  # temp directory removed
    assert ckpt.load_state(ckpt.find_checkpoint(root))["step"] == 1


def test_enospc_in_the_run_files(tmp_path, monkeypatch):
    from lumi.run import MetricsLog, Run

    run = Run(tmp_path)
    monkeypatch.setattr(Path, "write_bytes", _enospc)  # every atomic writer goes through bytes
    with pytest.raises(LumiError, match=r"cannot write .*summary\.json: the disk is full"):
        run.write_summary({"a": 1})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # no temp file left

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 5}) + "\n")
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    with pytest.raises(LumiError, match="the disk is full"):
        run.truncate_metrics(1)  # resuming while the disk is still full
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]

    log = MetricsLog(metrics)
    monkeypatch.setattr(log, "_f", type("Full", (), {"write": _enospc, "flush": _enospc, "close": lambda s: None})())
    with pytest.raises(LumiError, match=r"cannot append to .*metrics\.jsonl: the disk is full"):
        log.write({"step": 2})


def test_full_disk_during_training_fails_cleanly_and_resumes(tiny_corpus_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save = ckpt.torch.save
    calls = []

    def save_then_fill_the_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save_then_fill_the_disk)
    monkeypatch.setattr("shutil.disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    assert main(["train", "llama:nano", "--out", str(run), *tiny_args(tiny_corpus_dir)]) == 2
    line = one_line_error(capsys, "train")
    assert "the disk is full" in line and str(run / "checkpoints") in line
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "failed" and "the disk is full" in s["error"]
    assert ckpt.load_state(ckpt.find_checkpoint(run / "checkpoints"))["step"] == 2  # last good one kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest"]

    # A SIGKILLed writer's leftovers are removed when the run is next opened.
    (run / "checkpoints" / ".tmp-latest-999999999").mkdir()
    (run / ".summary.json.tmp999999999").write_text("{")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert not (run / "checkpoints" / ".tmp-latest-999999999").exists()
    assert not (run / ".summary.json.tmp999999999").exists()


# -- 4. an edited config.yaml is refused on resume --------------------------------------------------

@pytest.mark.parametrize("edit,key", [(("train", "seq_len", 16), "train.seq_len: 32 -> 16"),
                                      (("optim", "lr", 0.0123), "-> 0.0123")])
def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint(run_copy, capsys, edit, key):
    (run_copy / "summary.json").write_text(
        (run_copy / "summary.json").read_text().replace('"completed"', '"interrupted"'))
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg[edit[0]][edit[1]] = edit[2]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = (run_copy / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
    line = one_line_error(capsys, "train")
    assert "config.yaml was edited" in line and key in line
    assert (run_copy / "metrics.jsonl").read_text() == before


# -- 5. the smaller ones ----------------------------------------------------------------------------

def test_bad_train_input_is_one_line_exit_2(tiny_corpus_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_bytes(b"train:\n  seq_len: 32\n  budget: \xff\xfe10steps\n")
    base = tiny_args(tiny_corpus_dir)
    cases = [
        (["train", "llama:nano", *base, "--budget", ""], "budget '' does not parse"),
        (["train", "llama:nano", *base, "--set", "optim.lr=.inf"], "optim.lr must be a finite number"),
        (["train", "llama:nano", *base, "--set", "optim.lr=.nan"], "optim.lr must be a finite number"),
        (["train", "llama:nano", *base, "--set", "optim.warmup_frac=.nan"], "optim.warmup_frac must be a finite"),
        (["train", "llama:nano", *base, "--set", "train.eval_every_s=.inf"], "train.eval_every_s must be a finite"),
        (["train", "llama:nano", *base, "--name", "../../x"], "must be a plain directory name"),
        (["train", "llama:nano", *base, "--set", "name=a/../../b"], "must be a plain directory name"),
        (["train", "--config", str(bad_yaml)], "is not UTF-8"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in one_line_error(capsys, "train"), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
    assert not (tmp_path.parent / "x").exists()


def test_resuming_a_completed_run_does_nothing(run_copy, capsys):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run_copy), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.err and json.loads(captured.out)["status"] == "completed"
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before
    assert sum(1 for r in read_metrics(run_copy / "metrics.jsonl") if r.get("final")) == 1


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary


class _TestSigterm(Exception):
    pass


def _raise_test_sigterm(signum, frame):
    raise _TestSigterm


@pytest.fixture
def sigterm_raises():
    """A SIGTERM that no Lumi handler takes raises here instead of killing pytest."""
    old = signal.signal(signal.SIGTERM, _raise_test_sigterm)
    yield
    signal.signal(signal.SIGTERM, old)


def test_sigterm_during_setup_or_final_eval_leaves_interrupted(tiny_corpus_dir, tmp_path, monkeypatch, capsys,
                                                               sigterm_raises):
    import lumi.train.env
    from lumi.train.loop import _Trainer

    real_peak = lumi.train.env.peak_flops

    def peak_then_sigterm(*a, **k):  # after summary.json says `running`, before the step loop
        _kill_self(signal.SIGTERM)
        return real_peak(*a, **k)

    monkeypatch.setattr(lumi.train.env, "peak_flops", peak_then_sigterm)
    run = tmp_path / "setup"
    assert main(["train", "llama:nano", "--out", str(run), *tiny_args(tiny_corpus_dir)]) == 130
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and "SIGTERM" in s["error"]
    monkeypatch.undo()

    real_final = _Trainer._final_eval

    def final_eval_sigterm(self):
        _kill_self(signal.SIGTERM)
        return real_final(self)

    monkeypatch.setattr(_Trainer, "_final_eval", final_eval_sigterm)
    run = tmp_path / "final"
    assert main(["train", "llama:nano", "--out", str(run), *tiny_args(tiny_corpus_dir)]) == 130
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and "SIGTERM" in s["error"]
    assert signal.getsignal(signal.SIGTERM) is _raise_test_sigterm  # handlers restored
    capsys.readouterr()


def test_sigint_during_the_last_checkpoint_is_not_swallowed(tiny_corpus_dir, tmp_path, monkeypatch, capsys):
    real_save = ckpt.save_checkpoint

    def save_with_sigint_at_the_end(root, model, opt, state):
        if state["step"] == 4:  # the last step's checkpoint: the checkpoint completes, then the run stops
            _kill_self(signal.SIGINT)
        return real_save(root, model, opt, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_with_sigint_at_the_end)
    run = tmp_path / "run"
    assert main(["train", "llama:nano", "--out", str(run), *tiny_args(tiny_corpus_dir)]) == 130
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and "SIGINT" in s["error"] and s["final_val_bpb"] is None
    assert ckpt.load_state(ckpt.find_checkpoint(run / "checkpoints"))["step"] == 4
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress", "--json"]) == 0  # runs only the final eval
    s = json.loads(capsys.readouterr().out)
    assert s["status"] == "completed" and s["steps"] == 4 and s["final_val_bpb"] is not None
    assert sum(1 for r in read_metrics(run / "metrics.jsonl") if r.get("final")) == 1


def test_generate_streams_and_refuses_bad_numbers(run_copy, capsys, monkeypatch):
    import lumi.generate

    real_sample = lumi.generate.sample_next

    def sample_at_most_100(*a, **k):
        sample_at_most_100.calls += 1
        assert sample_at_most_100.calls <= 100, "sampled on although the arguments are invalid"
        return real_sample(*a, **k)

    sample_at_most_100.calls = 0
    monkeypatch.setattr(lumi.generate, "sample_next", sample_at_most_100)
    for argv, needle in [(["--max-new-tokens", "100000000"], "at most 1,000,000"),
                         (["--temperature", "nan"], "--temperature must be a finite number"),
                         (["--temperature", "inf"], "--temperature must be a finite number")]:
        assert main(["generate", str(run_copy), *argv]) == 2
        assert needle in one_line_error(capsys, "generate")
    assert sample_at_most_100.calls == 0
    monkeypatch.undo()

    class Recorder(io.StringIO):
        flushes = 0

        def flush(self):
            Recorder.flushes += 1

    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["generate", str(run_copy), "--prompt", "To", "--max-new-tokens", "8", "--seed", "0",
                 "--temperature", "0"]) == 0
    monkeypatch.undo()
    assert Recorder.flushes >= 8  # printed as generated, not once at the end
    from lumi.generate import generate
    from lumi.run import load_run_model

    model, tok = load_run_model(run_copy)
    assert out.getvalue() == "To" + tok.decode(generate(model, [tok.sep_id] + tok.encode("To"), 8,
                                                        temperature=0)) + "\n"


def test_eval_bad_input_is_one_line_exit_2(run_copy, tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    cases = [
        (["eval", str(tmp_path / "not-a-run")], "is not a run directory"),
        (["eval", str(tmp_path / "missing")], "does not exist"),
        (["eval", str(run_copy), "--max-targets", "0"], "--max-targets must be >= 1"),
        (["eval", str(run_copy), "--max-targets", "-3"], "--max-targets must be >= 1"),
        (["eval", str(run_copy), "--batch-size", "0"], "--batch-size must be >= 1"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        line = one_line_error(capsys, "eval")
        assert needle in line and "cannot resume" not in line, line

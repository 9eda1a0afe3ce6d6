"""Live logging (train.logger): TensorBoard and wandb get the same rows as metrics.jsonl, on every exit path
and across a resume; a missing package is a one-line error before training; compare tags its runs."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from lumi.errors import LumiError
from lumi.run import Run, read_metrics
from lumi.train import loop
from lumi.train.config import load_config
from lumi.train.loggers import scalars, wandb_mode

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

DOCS = {
    f"doc{i}.txt": f"Document {i}: the cat sat on the mat, and the dog ran after it. Line {i}.\n" * (20 + i)
    for i in range(6)
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("logger_corpus")
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


# 6 steps, a row every 1-2 steps, evals at 3 and 6, a checkpoint at 3: small, fast and deterministic.
SETTINGS = [
    "train.seq_len=32",
    "train.batch_size=4",
    "train.eval_every_s=null",
    "train.eval_every_steps=3",
    "train.eval_tokens=128",
    "train.checkpoint_every_s=null",
    "train.checkpoint_every_steps=3",
    "train.peak_flops=1e11",
    "train.threads=1",
    "train.causality_preflight=false",
    "train.causality_audit=false",
]


def cli_train(corpus: Path, out: Path, *sets: str, log_every: int = 2) -> int:
    from lumi.cli import main

    args = [
        "train",
        "llama:nano",
        "--corpus",
        f"files:{corpus}",
        "--tokenizer",
        "bytes",
        "--budget",
        "6steps",
    ]
    for item in [*SETTINGS, f"train.log_every={log_every}", *sets]:
        args += ["--set", item]
    return main([*args, "--out", str(out), "--no-progress"])


def config(corpus: Path, *sets: str):
    return load_config(
        None,
        [
            "model.preset=nano",
            f"data.corpus=files:{corpus}",
            "data.tokenizer=bytes",
            "train.budget=6steps",
            "train.log_every=1",
            *SETTINGS,
            *sets,
        ],
    )


def fail_after_step(monkeypatch, step: int) -> Any:
    """The session dies right after writing the train row of ``step`` (after the checkpoint at 3); returns
    the undo."""
    original = loop._Trainer._train_row

    def train_row(self, *args: Any) -> None:
        original(self, *args)
        if self.state.step == step:
            raise RuntimeError("the machine caught fire")

    monkeypatch.setattr(loop._Trainer, "_train_row", train_row)
    return lambda: monkeypatch.setattr(loop._Trainer, "_train_row", original)


def expected(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] a logger must have recorded for these metrics rows."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in scalars(row).items():
            out.setdefault(tag, []).append((row["step"], value))
    return out


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same(got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]]) -> None:
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


# -- names and settings ----------------------------------------------------------------------------


def test_scalar_names_follow_the_row_kind():
    train = {"kind": "train", "step": 4, "tokens": 512, "loss": 3.5, "mfu": None, "lr": 1e-3}
    assert scalars(train) == {"train/tokens": 512.0, "train/loss": 3.5, "train/lr": 1e-3}
    periodic = {"kind": "eval", "step": 6, "val_bpb": 2.5, "final": False, "protocol": {"subset": "x"}}
    assert scalars(periodic) == {"eval/val_bpb": 2.5}
    assert scalars({**periodic, "final": True}) == {"final/val_bpb": 2.5}
    assert scalars({"kind": "diverged", "step": 3, "loss": float("inf")}) == {"diverged/loss": float("inf")}


def test_config_validates_logger_and_tags():
    cfg = load_config(None, [])
    assert cfg.train.logger == "none" and cfg.train.logger_tags == []
    assert load_config(None, ["train.logger_tags=a,seed-1"]).train.logger_tags == ["a", "seed-1"]
    with pytest.raises(LumiError, match=r"train\.logger must be one of none, tensorboard, wandb; got "
                       r"'tensorbord'.*did you mean 'tensorboard'"):  # fmt: skip
        load_config(None, ["train.logger=tensorbord"])
    with pytest.raises(LumiError, match=r"train\.logger_tags must be a list of non-empty strings"):
        load_config(None, ["train.logger_tags=[1, 2]"])


def test_wandb_mode_is_offline_without_an_api_key(tmp_path):
    empty = tmp_path / "netrc"
    empty.write_text("")
    keyed = tmp_path / "netrc-keyed"
    keyed.write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    keyed.chmod(0o600)
    assert wandb_mode({}, str(empty)) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "0123456789abcdef"}, str(empty)) == "online"
    assert wandb_mode({}, str(keyed)) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled"}, str(keyed)) == "disabled"
    with pytest.raises(LumiError, match="WANDB_MODE='offlin' is not a wandb mode"):
        wandb_mode({"WANDB_MODE": "offlin"}, str(empty))


@pytest.mark.parametrize("logger, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_missing_logger_package_is_one_line_before_training(
    corpus, tmp_path, monkeypatch, capsys, logger, module
):
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now fails as if it were not installed
    run = tmp_path / "run"
    assert cli_train(corpus, run, f"train.logger={logger}") == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"lumi train: error: train.logger={logger} needs the {logger} package")
    assert "pip install 'lumi-lab[loggers]'" in lines[0]
    assert not run.exists()  # refused before anything was prepared or written


# -- TensorBoard ------------------------------------------------------------------------------------


def test_tensorboard_gets_the_metrics_rows(corpus, tmp_path):
    run = tmp_path / "run"
    assert cli_train(corpus, run, "train.logger=tensorboard") == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6]
    assert [(r["step"], r["final"]) for r in rows if r["kind"] == "eval"] == [
        (3, False),
        (6, False),
        (6, True),
    ]
    got = tensorboard_scalars(Run(run).tensorboard_dir)
    assert_same(got, expected(rows))
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert got["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train_rows]
    final = next(r for r in rows if r.get("final"))
    assert got["final/val_bpb"] == [(6, pytest.approx(final["val_bpb"], rel=1e-6))]
    assert json.loads((run / "summary.json").read_text())["final_val_bpb"] == pytest.approx(final["val_bpb"])


def test_tensorboard_resume_hides_what_the_failed_session_logged_after_its_checkpoint(
    corpus, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    cfg = config(corpus, "train.logger=tensorboard")
    restore = fail_after_step(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="caught fire"):
        loop.train(cfg, run, progress=False)
    assert Run(run).status() == "failed"
    first = tensorboard_scalars(Run(run).tensorboard_dir)
    assert [s for s, _ in first["train/loss"]] == [1, 2, 3, 4, 5]  # closed on failure: every row is there
    restore()

    summary = loop.train(cfg, run, resume=True, progress=False)
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 3
    assert len(list(Run(run).tensorboard_dir.iterdir())) == 2  # one event file per session, same directory
    rows = read_metrics(run / "metrics.jsonl")  # steps 4 and 5 of the failed session were dropped ...
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert_same(tensorboard_scalars(Run(run).tensorboard_dir), expected(rows))  # ... and purged from TB


def test_resume_may_turn_live_logging_on(corpus, tmp_path, monkeypatch):
    from lumi.cli import main

    run = tmp_path / "run"
    restore = fail_after_step(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="caught fire"):
        loop.train(config(corpus), run, progress=False)
    restore()
    assert not Run(run).tensorboard_dir.exists()
    code = main(["train", "--resume", str(run), "--set", "train.logger=tensorboard", "--no-progress"])
    assert code == 0
    assert Run(run).config.train.logger == "tensorboard"  # config.yaml records how the run is logged now
    rows = [r for r in read_metrics(run / "metrics.jsonl") if r["step"] > 3]
    assert_same(tensorboard_scalars(Run(run).tensorboard_dir), expected(rows))
    with pytest.raises(LumiError, match=r"optim\.lr: 0\.003 -> 0\.01"):  # training keys still may not change
        loop.check_run_dir(config(corpus, "train.logger=tensorboard", "optim.lr=0.01"), run, resume=True)


# -- wandb ------------------------------------------------------------------------------------------


class FakeRun:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.logged: list[tuple[dict[str, float], int]] = []
        self.summary: dict[str, Any] = {}
        self.exit_code: int | str | None = "still open"

    def log(self, data: dict[str, float], step: int | None = None) -> None:
        assert step is not None
        self.logged.append((dict(data), step))

    def finish(self, exit_code: int | None = None) -> None:
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    runs: list[FakeRun] = []

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    module.init = init  # type: ignore[attr-defined]
    module.Settings = lambda **kw: {"settings": kw}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return runs


def test_wandb_logs_exactly_the_metrics_rows(corpus, tmp_path, fake_wandb):
    run = tmp_path / "run"
    assert (
        cli_train(corpus, run, "train.logger=wandb", "train.logger_tags=[mine, seed-0]", "name=my-run") == 0
    )
    assert len(fake_wandb) == 1
    w = fake_wandb[0]
    stored = json.loads((run / "loggers.json").read_text())["wandb_id"]
    assert w.kwargs["id"] == stored and w.kwargs["resume"] == "allow"
    assert (w.kwargs["project"], w.kwargs["name"], w.kwargs["mode"]) == ("lumi", "my-run", "offline")
    assert w.kwargs["dir"] == str(run) and w.kwargs["tags"] == ["mine", "seed-0"]
    assert w.kwargs["config"]["train"]["logger"] == "wandb" and w.kwargs["config"]["model"]["name"] == "llama"
    rows = read_metrics(run / "metrics.jsonl")
    assert w.logged == [(scalars(r), r["step"]) for r in rows]
    assert [step for _, step in w.logged] == [2, 3, 4, 6, 6, 6]  # train, eval, train, train, eval, final
    assert w.logged[0][0]["train/loss"] == rows[0]["loss"]
    assert w.exit_code == 0 and w.summary["status"] == "completed"


def test_wandb_is_closed_on_failure_and_a_resume_continues_the_same_run(
    corpus, tmp_path, fake_wandb, monkeypatch
):
    run = tmp_path / "run"
    cfg = config(corpus, "train.logger=wandb")
    restore = fail_after_step(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="caught fire"):
        loop.train(cfg, run, progress=False)
    first = fake_wandb[0]
    assert first.exit_code == 1 and first.summary["status"] == "failed"
    assert [step for _, step in first.logged] == [1, 2, 3, 3, 4, 5]
    restore()
    assert loop.train(cfg, run, resume=True, progress=False)["status"] == "completed"
    second = fake_wandb[-1]
    assert second.kwargs["id"] == first.kwargs["id"] and second.kwargs["resume"] == "allow"
    resumed_rows = [r for r in read_metrics(run / "metrics.jsonl") if r["step"] > 3]
    assert second.logged == [(scalars(r), r["step"]) for r in resumed_rows]
    assert second.exit_code == 0


def test_a_failing_logger_does_not_stop_training(corpus, tmp_path, fake_wandb, monkeypatch, capsys):
    def broken_log(self, data, step=None):
        raise ConnectionError("wandb went away\nsecond line")

    monkeypatch.setattr(FakeRun, "log", broken_log)
    assert (
        loop.train(config(corpus, "train.logger=wandb"), tmp_path / "run", progress=False)["status"]
        == "completed"
    )
    err = capsys.readouterr().err
    assert "warning: wandb logging stopped at step 1 (ConnectionError: wandb went away); metrics.jsonl" in err
    assert err.count("warning:") == 1  # dropped after the first failure
    assert len(fake_wandb) == 1 and fake_wandb[0].exit_code == 1  # closed when it failed, while running


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a .wandb file: a 7-byte header (':W&B', magic, version), then the LevelDB log
    format (32 KiB blocks of records: crc32c, length, type; FULL=1, FIRST=2, MIDDLE=3, LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_real_wandb_offline_writes_the_run_into_the_run_directory(corpus, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, sub in [("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")]:  # fmt: skip
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert cli_train(corpus, run, "train.logger=wandb") == 0
    wandb_id = json.loads((run / "loggers.json").read_text())["wandb_id"]
    [offline] = list((run / "wandb").glob(f"offline-run-*-{wandb_id}"))
    log = offline / f"run-{wandb_id}.wandb"
    raw = log.read_bytes()
    for tag in ("train/loss", "train/lr", "eval/val_bpb", "final/val_bpb"):
        assert tag.encode() in raw, tag
    history: dict[str, list[tuple[int, float]]] = {}
    for record in _wandb_records(log):
        if record.WhichOneof("record_type") == "history":
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    history.setdefault(key, []).append((step, json.loads(item.value_json)))
    assert_same(history, expected(read_metrics(run / "metrics.jsonl")))


# -- lumi compare -------------------------------------------------------------------------------------


def compare_spec(**train: Any):
    from lumi.compare.spec import spec_from_dict

    raw = {
        "name": "cmp",
        "arms": ["base=llama:nano", "llama:nano+mlp=relu2"],
        "budget": "10steps",
        "seeds": 2,
    }
    return spec_from_dict({**raw, "train": train}, "test")


def test_compare_tags_each_run_and_reuses_runs_whatever_the_logger(tmp_path):
    from lumi.compare.comparison import _run_defining, needs_training, new_counts, run_config
    from lumi.compare.plan import ArmPlan
    from lumi.compare.runner import RunJob

    plan = ArmPlan("base", "10steps", 10, None, None)
    logged = compare_spec(logger="tensorboard", logger_tags=["mine"])
    arm = logged.arms[0]
    cfg = run_config(logged, arm, 1, plan, tmp_path, threads=1)
    assert cfg["train"]["logger"] == "tensorboard"
    assert cfg["train"]["logger_tags"] == ["mine", "base", "seed-1", "cmp"]
    plain = run_config(compare_spec(), arm, 1, plan, tmp_path, threads=1)
    assert plain["train"]["logger"] == "none" and plain["train"]["logger_tags"] == []
    assert _run_defining(logged.to_dict()) == _run_defining(compare_spec().to_dict())  # same comparison

    # A finished run trained without logging is reused when the comparison now logs (and vice versa).
    run_dir = tmp_path / "runs" / "base" / "seed-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(plain))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    job = RunJob("base", 1, run_dir, tmp_path / "configs" / "seed-1.yaml", tmp_path / "log")
    counts = new_counts()
    assert needs_training(job, cfg, False, counts, lambda msg: None) is False and counts["reused"] == 1
    # A resumed child logs as this invocation asks (lumi train --resume accepts logging keys).
    job.resume = True
    command = job.command()
    assert command[command.index("--resume") + 2 :] == [
        "--set",
        "train.logger=tensorboard",
        "--set",
        'train.logger_tags=["mine", "base", "seed-1", "cmp"]',
    ]

    other = run_config(compare_spec(logger="wandb", seq_len=64), arm, 1, plan, tmp_path, threads=1)
    with pytest.raises(LumiError, match=r"train\.seq_len: 128 -> 64"):
        needs_training(job, other, False, new_counts(), lambda msg: None)


def test_compare_refuses_a_missing_logger_before_any_work(tmp_path, monkeypatch, capsys):
    from lumi.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "cmp"
    code = main(["compare", "llama:nano", "llama:nano+mlp=relu2", "--seeds", "1", "--budget", "4steps",
                 "--set", "train.logger=wandb", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lumi-lab[loggers]'" in err[0], err
    assert not out.exists()

"""Run `lumi train` processes, N at a time, so a crashing arm fails alone.

Each run is its own process in its own session: a terminal Ctrl-C reaches only `lumi compare`, which
forwards exactly one SIGINT to every running child (a second SIGINT would make a child abort without
its checkpoint), waits for them to checkpoint and exit, then re-raises KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 300.0  # a child finishing its step + checkpoint after SIGINT; then it is terminated


@dataclass
class RunJob:
    label: str
    seed: int
    run_dir: Path
    config_path: Path
    log_path: Path
    resume: bool = False
    returncode: int | None = None
    started: float | None = None
    ended: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.label} seed {self.seed}"

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "lumi", "train", "--no-progress"]
        if self.resume:
            # `lumi train --resume` never imports plugins named in the run directory: pass the user's files,
            # read from the config compare has just written from the user's spec (not from the run).
            return [
                *base,
                "--resume",
                str(self.run_dir),
                *self.logging_overrides(),
                *[a for f in self.plugin_files() for a in ("--model-file", f)],
            ]
        return [*base, "--config", str(self.config_path), "--out", str(self.run_dir)]

    def logging_overrides(self) -> list[str]:
        """--set train.logger / train.logger_tags from the config compare has just written: a resumed run
        logs as this invocation asks (they change no training, so `lumi train --resume` accepts them)."""
        import json

        from lumi.errors import LumiError
        from lumi.io import read_yaml

        try:
            train = (read_yaml(self.config_path, "run config") or {}).get("train") or {}
        except (LumiError, AttributeError):
            return []
        if "logger" not in train:
            return []
        tags = json.dumps([str(t) for t in train.get("logger_tags") or []])
        return ["--set", f"train.logger={train['logger']}", "--set", f"train.logger_tags={tags}"]

    def plugin_files(self) -> list[str]:
        from lumi.errors import LumiError
        from lumi.io import read_yaml

        try:
            cfg = read_yaml(self.config_path, "run config") or {}
        except LumiError:
            return []
        return [str(f) for f in (cfg.get("model") or {}).get("files") or []]


def run_jobs(
    jobs: list[RunJob],
    parallel: int,
    on_start: Callable[[RunJob], None],
    on_end: Callable[[RunJob], None],
    on_tick: Callable[[list[RunJob]], None],
    tick_s: float = 0.5,
) -> None:
    """Run ``jobs`` in order, ``parallel`` at a time. KeyboardInterrupt (Ctrl-C or SIGTERM) stops them cleanly."""
    pending = list(jobs)
    running: list[RunJob] = []
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                while pending and len(running) < parallel:
                    job = pending.pop(0)
                    running.append(job)  # before it starts: an interrupt during the start still stops it
                    _start(job)
                    on_start(job)
                for job in list(running):
                    if job.process is not None and job.process.poll() is not None:
                        _finish(job)
                        running.remove(job)
                        on_end(job)
                on_tick(running)
                if running:
                    time.sleep(tick_s)
        except BaseException:  # Ctrl-C, SIGTERM, or a bug here: never leave children running unattended
            _stop_all(running)
            for job in running:
                on_end(job)
            raise


def _start(job: RunJob) -> None:
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(job.log_path, "a")
    log.write(f"\n$ {' '.join(job.command())}\n")
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    job.started = time.time()
    job.process = subprocess.Popen(
        job.command(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log.close()  # the child holds its own descriptor


def _finish(job: RunJob) -> None:
    job.returncode = job.process.returncode if job.process is not None else None
    job.ended = time.time()


def _stop_all(running: list[RunJob]) -> None:
    """One SIGINT to each child (it checkpoints and exits 130); terminate stragglers after a grace period."""
    for job in running:
        if job.process is not None and job.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                job.process.send_signal(signal.SIGINT)
    deadline = time.time() + STOP_GRACE_S
    try:
        for job in running:
            if job.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    job.process.wait(timeout=max(0.1, deadline - time.time()))
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
        pass
    for job in running:
        if job.process is not None and job.process.poll() is None:
            job.process.kill()
            job.process.wait()
        _finish(job)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM to `lumi compare` stops the comparison the same way as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)

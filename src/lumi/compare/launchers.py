"""Where a comparison's runs execute: the local process pool, or one cluster job per run through submitit.

``local`` (the default) is lumi.compare.runner's pool: N ``lumi train`` processes at a time on this machine.
``slurm`` submits every run still to do as one task of a Slurm job array (``executor.batch()``); each task
runs the very ``lumi train`` command the local pool would run (RunJob.command) with its log in the same
place, so run directories, reuse and resume behave exactly as they do locally. The cluster needs the same
Python environment and a file system shared with this machine (the comparison directory, the data).

Nothing submitted is lost track of: before ``sbatch`` runs, the ledger (``COMP/launcher/jobs.json``, written
atomically) records the runs and the job name being submitted; after it, their job ids. A re-run of
``lumi compare`` first waits for jobs an earlier invocation left queued or running (Ctrl-C while waiting
leaves them running and says so), then schedules as usual: finished runs are reused, interrupted ones (a
Slurm time limit sends SIGTERM, so the run checkpoints) resumed, failed ones resubmitted with --retry-failed.

``launcher.cluster: local`` runs the same submitit path with submitit's LocalExecutor on this machine (real
processes, no scheduler): what the tests use, and a dry run of a Slurm setup.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lumi.compare.runner import RunJob, run_jobs
from lumi.errors import LumiError, closest

LAUNCHERS = ("local", "slurm")
CLUSTERS = ("slurm", "local")  # the submitit executor behind `slurm`; local = submitit's LocalExecutor
LAUNCHER_KEYS = (
    "kind",
    "cluster",
    "partition",
    "gpus_per_run",
    "cpus_per_run",
    "mem_gb",
    "time_limit_min",
    "max_parallel",
    "sbatch",
)
# Scheduler states after which a job will not run again; anything else (PENDING, RUNNING, ...) is alive.
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "PREEMPTED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "FINISHED",
    "INTERRUPTED",
    "NO PROCESS AND NO RESULT",
)
# Ended by the scheduler rather than by the run: recorded as interrupted, so a re-run resumes the run.
SCHEDULER_STOPS = ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "INTERRUPTED")
INSTALL_HINT = "pip install 'lumi-lab[slurm]'"


@dataclass
class LauncherSettings:
    """The spec's ``launcher:`` section (``lumi compare --launcher`` overrides ``kind``)."""

    kind: str = "local"
    cluster: str = "slurm"
    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    time_limit_min: int = 60
    max_parallel: int | None = None  # Slurm array throttle (%N); None: as many as the scheduler allows
    sbatch: dict[str, Any] = field(
        default_factory=dict
    )  # extra sbatch options, e.g. {account: lab, qos: high}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def launcher_section(value: Any, where: str) -> LauncherSettings:
    """Validate the ``launcher:`` mapping of a spec (or None: local); LumiError naming the field."""
    if value is None:
        return LauncherSettings()
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise LumiError(f"{where}: launcher must be a mapping (kind: slurm, partition: ...), got {value!r}")
    for key in value:
        if key not in LAUNCHER_KEYS:
            raise LumiError(
                f"{where}: unknown key launcher.{key}{closest(str(key), list(LAUNCHER_KEYS))}; "
                f"launcher keys: {', '.join(LAUNCHER_KEYS)}"
            )
    s = LauncherSettings(**{k: v for k, v in value.items() if v is not None})  # null: the default
    s.kind = _choice(s.kind, LAUNCHERS, f"{where}: launcher.kind")
    s.cluster = _choice(s.cluster, CLUSTERS, f"{where}: launcher.cluster")
    for key, low in (("gpus_per_run", 0), ("cpus_per_run", 1), ("time_limit_min", 1), ("max_parallel", 1)):
        v = getattr(s, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise LumiError(f"{where}: launcher.{key} must be a whole number >= {low}, got {v!r}")
    if s.mem_gb is not None and (
        isinstance(s.mem_gb, bool) or not isinstance(s.mem_gb, (int, float)) or s.mem_gb <= 0
    ):
        raise LumiError(f"{where}: launcher.mem_gb must be a number > 0, got {s.mem_gb!r}")
    if s.partition is not None and not isinstance(s.partition, str):
        raise LumiError(f"{where}: launcher.partition must be a partition name, got {s.partition!r}")
    if not isinstance(s.sbatch, dict):
        raise LumiError(
            f"{where}: launcher.sbatch must be a mapping of sbatch options (account: lab, qos: high), "
            f"got {s.sbatch!r}"
        )
    return s


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise LumiError(
            f"{what} must be one of {', '.join(allowed)}, got {value!r}{closest(str(value), list(allowed))}"
        )
    return str(value)


class Launcher(Protocol):
    def wait_for_earlier(self, log: Callable[[str], None]) -> None: ...

    def run(
        self,
        jobs: list[RunJob],
        parallel: int,
        on_start: Callable[[RunJob], None],
        on_end: Callable[[RunJob], None],
        on_tick: Callable[[list[RunJob]], None],
    ) -> None: ...


class LocalLauncher:
    """The local process pool (lumi.compare.runner): nothing outlives ``lumi compare``."""

    def wait_for_earlier(self, log: Callable[[str], None]) -> None:
        return None

    def run(
        self,
        jobs: list[RunJob],
        parallel: int,
        on_start: Callable[[RunJob], None],
        on_end: Callable[[RunJob], None],
        on_tick: Callable[[list[RunJob]], None],
    ) -> None:
        run_jobs(jobs, parallel, on_start, on_end, on_tick)


def make_launcher(settings: LauncherSettings, comp_dir: Path) -> Launcher:
    if settings.kind == "local":
        return LocalLauncher()
    return SubmititLauncher(settings, comp_dir)


# -- the job each cluster task runs -----------------------------------------------------------------


def run_train_command(command: list[str], log_path: str) -> int:
    """Run one ``lumi train`` command, its output appended to ``log_path``; its exit code (never raises on
    a failing run: the run directory records why, and the comparison decides what to do with it).

    SIGTERM / SIGUSR2 (Slurm's time-limit and preemption warnings) are passed on to the run, which then
    checkpoints and ends ``interrupted``; a re-run of ``lumi compare`` resumes it."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# -- submitit ---------------------------------------------------------------------------------------


class SubmititLauncher:
    """Every run to do as one task of a job array; a ledger of job ids in ``COMP/launcher/jobs.json``."""

    def __init__(self, settings: LauncherSettings, comp_dir: Path, poll_s: float | None = None) -> None:
        self.settings = settings
        self.comp_dir = Path(comp_dir)
        self.folder = self.comp_dir / "launcher" / "submitit"
        self.ledger_path = self.comp_dir / "launcher" / "jobs.json"
        # Slurm states come from sacct, which submitit's watcher throttles anyway; local ones from a poll().
        self.poll_s = poll_s if poll_s is not None else (5.0 if settings.cluster == "slurm" else 0.2)
        self.submitit = _import_submitit()
        if settings.cluster == "slurm" and shutil.which("srun") is None:  # now, before any work
            raise LumiError(
                "cannot use the slurm launcher: srun is not on PATH (is this a Slurm login node?); "
                "use --launcher local, or launcher.cluster: local for a dry run on this machine"
            )

    # -- the ledger --------------------------------------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        from lumi.io import read_json

        if not self.ledger_path.is_file():
            return {"runs": {}, "submitting": None}
        data = read_json(self.ledger_path, "launcher ledger")
        if not isinstance(data, dict):
            raise LumiError(
                f"launcher ledger {self.ledger_path} must be a JSON object; move it away to reset it"
            )
        data.setdefault("runs", {})
        data.setdefault("submitting", None)
        return data

    def _write_ledger(self, data: dict[str, Any]) -> None:
        from lumi.io import write_json  # atomic: a temporary file renamed over the old ledger

        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.ledger_path, data)

    def _key(self, job: RunJob) -> str:
        return (
            str(job.run_dir.relative_to(self.comp_dir))
            if job.run_dir.is_relative_to(self.comp_dir)
            else str(job.run_dir)
        )

    # -- executor ---------------------------------------------------------------------------------
    def _executor(self) -> Any:
        s = self.settings
        try:
            executor = self.submitit.AutoExecutor(folder=self.folder, cluster=s.cluster)
            params: dict[str, Any] = {
                "name": f"lumi-{self.comp_dir.name}",
                "timeout_min": s.time_limit_min,
                "gpus_per_node": s.gpus_per_run,
                "tasks_per_node": 1,
                "nodes": 1,
            }
            if s.cpus_per_run is not None:
                params["cpus_per_task"] = s.cpus_per_run
            if s.mem_gb is not None:
                params["mem_gb"] = s.mem_gb
            if s.cluster == "slurm":
                if s.partition:
                    params["slurm_partition"] = s.partition
                if s.max_parallel is not None:
                    params["slurm_array_parallelism"] = s.max_parallel
                if s.sbatch:
                    params["slurm_additional_parameters"] = {str(k): v for k, v in s.sbatch.items()}
            executor.update_parameters(**params)
        except (RuntimeError, ValueError, NameError, OSError) as e:
            raise LumiError(f"cannot use the {s.cluster} launcher: {_first_line(e)}") from None
        return executor

    def _job(self, job_id: str) -> Any:
        """A handle on a job submitted earlier (possibly by another `lumi compare` process)."""
        if self.settings.cluster == "slurm":
            from submitit.slurm.slurm import SlurmJob

            return SlurmJob(folder=self.folder, job_id=job_id)
        from submitit.local.local import LocalJob

        return LocalJob(folder=self.folder, job_id=job_id)

    # -- collecting jobs left by an earlier invocation --------------------------------------------
    def wait_for_earlier(self, log: Callable[[str], None]) -> None:
        data = self.ledger()
        pending = data.get("submitting")
        if pending:
            log(
                f"an earlier lumi compare was stopped while submitting job array {pending.get('name')!r} "
                f"({len(pending.get('runs', []))} runs) at {pending.get('time')}; if the scheduler accepted it, "
                f"find it with `squeue --name {pending.get('name')}` and cancel it before its runs are trained twice"
            )
            data["submitting"] = None
            self._write_ledger(data)
        alive = {key: rec for key, rec in data["runs"].items() if rec.get("state") not in FINAL_STATES}
        if not alive:
            return
        handles = {key: self._job(rec["job_id"]) for key, rec in alive.items()}
        waiting = [k for k, h in handles.items() if _state(h) not in FINAL_STATES]
        if waiting:
            ids = ", ".join(str(alive[k]["job_id"]) for k in waiting)
            log(f"waiting for {len(waiting)} cluster jobs an earlier lumi compare submitted ({ids}) ...")
        try:
            while True:
                states = {k: _state(h) for k, h in handles.items()}
                if all(s in FINAL_STATES for s in states.values()):
                    break
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            log(
                f"stopped waiting; jobs {', '.join(str(alive[k]['job_id']) for k in waiting)} keep running on "
                f"the cluster: re-run the same command to collect them (or scancel them)"
            )
            raise
        for key, state in states.items():
            data["runs"][key]["state"] = state
        self._write_ledger(data)

    # -- submitting and waiting -------------------------------------------------------------------
    def run(
        self,
        jobs: list[RunJob],
        parallel: int,
        on_start: Callable[[RunJob], None],
        on_end: Callable[[RunJob], None],
        on_tick: Callable[[list[RunJob]], None],
    ) -> None:
        if not jobs:
            return
        executor = self._executor()
        data = self.ledger()
        name = f"lumi-{self.comp_dir.name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        executor.update_parameters(name=name)
        data["submitting"] = {"name": name, "runs": [self._key(j) for j in jobs], "time": _now()}
        self._write_ledger(data)  # before sbatch: a crash in between still says what may have been submitted
        for job in jobs:
            job.log_path.parent.mkdir(parents=True, exist_ok=True)
        handles: list[Any] = []
        try:
            with executor.batch():
                for job in jobs:
                    handles.append(executor.submit(run_train_command, job.command(), str(job.log_path)))
        except Exception as e:
            data["submitting"] = None  # the scheduler refused the whole array: nothing was submitted
            self._write_ledger(data)
            raise LumiError(
                f"submitting {len(jobs)} runs to {self.settings.cluster} failed: {_scheduler_message(e)}"
            ) from None
        for job, handle in zip(jobs, handles, strict=True):
            data["runs"][self._key(job)] = {
                "job_id": str(handle.job_id),
                "cluster": self.settings.cluster,
                "state": "SUBMITTED",
                "submitted": _now(),
                "log": str(job.log_path),
                "stdout": str(handle.paths.stdout),
            }
        data["submitting"] = None
        self._write_ledger(data)
        for job in jobs:
            job.started = time.time()
            on_start(job)
        running = list(zip(jobs, handles, strict=True))
        try:
            while running:
                for job, handle in list(running):
                    if handle.done():
                        job.returncode = _returncode(handle, job.log_path)
                        job.ended = time.time()
                        data["runs"][self._key(job)]["state"] = _state(handle)
                        self._write_ledger(data)
                        running.remove((job, handle))
                        on_end(job)
                on_tick([j for j, _ in running])
                if running:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            # The jobs belong to the scheduler now: leave them running, recorded in the ledger.
            ids = ", ".join(str(h.job_id) for _, h in running)
            print(
                f"[compare] {len(running)} cluster jobs keep running ({ids}); re-run the same command to "
                f"collect them, or scancel them",
                file=sys.stderr,
                flush=True,
            )
            raise


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise LumiError(
            f"the slurm launcher needs submitit, which is not installed: {INSTALL_HINT}"
        ) from None
    return submitit


def _state(handle: Any) -> str:
    try:
        return str(handle.state).upper()
    except Exception:  # a scheduler query can fail transiently; ask again next time
        return "UNKNOWN"


def _returncode(handle: Any, log_path: Path) -> int:
    """The ``lumi train`` exit code, or how the scheduler ended the task: SIGTERM-like for a time limit,
    preemption or cancellation (the run resumes on a re-run), 1 when the task itself failed. When the task
    gave no exit code, why goes into the run's log, where the comparison's error message points."""
    try:
        return int(handle.result())
    except Exception as e:
        state = _state(handle)
        with contextlib.suppress(OSError), open(log_path, "a") as log:
            log.write(
                f"\n[launcher] job {handle.job_id} ended {state} without an exit code: {_first_line(e)} "
                f"(submitit's logs: {handle.paths.stdout}, {handle.paths.stderr})\n"
            )
        if any(state.startswith(s) for s in SCHEDULER_STOPS):
            return -signal.SIGTERM
        return 1


def _scheduler_message(e: BaseException) -> str:
    """The scheduler's own words (sbatch's stderr) from submitit's exception, on one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "error" in ln.lower() or "sbatch" in ln.lower()]
    text = "; ".join(useful or lines[:3]) or type(e).__name__
    if isinstance(e, FileNotFoundError):
        text = f"{e.filename or 'sbatch'} not found (is this a Slurm login node?)"
    return text[:500]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

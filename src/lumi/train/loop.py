"""The training loop: one model, one budget, one run directory.

    summary = train(config, run_dir)             # fresh run
    summary = train(config, run_dir, resume=True)  # continue from checkpoints/latest

Order of work in every optimizer step s (0-based; rows record the number of completed steps):
lr for the budget fraction -> batch for (data_seed, s) -> forward/backward over grad_accum
micro-batches -> all-reduce loss and stop flag -> stop if non-finite -> clip, optimizer step ->
train row / periodic eval / checkpoint as due. Everything a resumed run needs (weights, optimizer,
RNG, step, token/FLOP counters, loss EMA) is in the checkpoint, and the data order depends only on
the step, so kill + resume reproduces an uninterrupted run exactly.

Live logging (``train.logger``, lumi.train.loggers): rank 0 passes every metrics.jsonl row to TensorBoard
or wandb as well, and closes the logger however the session ends.

Safety: one process writes a run directory (an OS lock on ``RUN/.lock``, see lumi.lock); a resume
imports no plugin file the run directory names (the caller passes them: ``model_files``) and refuses
a config.yaml edited since the checkpoint (the checkpoint stores the config it was trained with).
Signals: SIGINT/SIGTERM during the loop finish the step and checkpoint; anywhere else in ``train``
(setup, final eval, audit) they stop at once. Either way the run ends ``interrupted``, never
``running``; a signal during the last checkpoint lets it complete, then the run is ``interrupted``
before its final eval (``--resume`` runs only that).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from lumi.errors import LumiError
from lumi.io import json_safe
from lumi.lock import DirectoryLock
from lumi.run import MetricsLog, Run, training_differences
from lumi.train import checkpoint as ckpt
from lumi.train.allocator import keep_freed_memory
from lumi.train.batches import step_batch
from lumi.train.config import Budget, TrainConfig
from lumi.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_,
    barrier,
    broadcast_object,
    setup_distributed,
)
from lumi.train.fsdp import ShardedModel, require_processes
from lumi.train.loggers import Logger, NullLogger, open_logger, require_logger, warn
from lumi.train.optim import build_optimizer
from lumi.train.runtime import autocast_context, load_data, resolve_autocast, resolve_device, set_threads
from lumi.train.schedule import lr_multiplier

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from lumi.models.base import LumiModel

EMA_BETA = 0.9


@dataclass
class RunState:
    """Counters that survive a checkpoint (saved in state.json)."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    elapsed_s: float = 0.0  # training time only (excludes evals, checkpoints, setup)
    wall_s: float = 0.0  # total wall time of all finished sessions
    last_step_s: float = 0.0
    ema: float = 0.0
    ema_n: int = 0
    last_eval_elapsed_s: float = 0.0

    @property
    def loss_ema(self) -> float | None:
        return self.ema / (1.0 - EMA_BETA**self.ema_n) if self.ema_n else None

    def update_ema(self, loss: float) -> None:
        self.ema = EMA_BETA * self.ema + (1.0 - EMA_BETA) * loss
        self.ema_n += 1


class Stopped(KeyboardInterrupt):
    """SIGINT / SIGTERM outside the step loop: stop at once (the run is marked interrupted, exit 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignal:
    """SIGINT / SIGTERM handling for the whole of ``train``.

    ``graceful`` (the step loop): remember the signal; the loop finishes the step, checkpoints and marks
    the run interrupted. A second Ctrl-C while the first is being handled aborts immediately.
    Otherwise (setup, final eval, audit): raise ``Stopped`` at once — SIGTERM's default action would
    kill the process with its summary still saying ``running``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.graceful = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.graceful or (self.received is not None and signum == signal.SIGINT):
            self.received = signum
            raise Stopped(signum)
        self.received = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    config: TrainConfig,
    run_dir: Path | str,
    resume: bool = False,
    progress: bool = True,
    model_files: Sequence[str | Path] = (),
    info: DistInfo | None = None,
    announce: Callable[[dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` and return the summary (also written to summary.json).

    ``model_files``: plugin files to import for a resumed run (a fresh run imports ``config.model.files``,
    which the caller chose); a resumed run never imports the files its run directory names.
    ``info``: the distributed context the caller set up (default: set up here). ``announce`` is called on
    rank 0 once the directory has been checked, with the summary of a run that is already complete (then
    nothing is trained and that summary is returned) or None.
    """
    run = Run(run_dir)
    info = info if info is not None else setup_distributed(config.train.device)
    lock = None
    trainer: _Trainer | None = None
    with StopSignal() as stop:  # from the start: a signal during setup must not leave the status `running`
        try:
            check_run_dir(config, run.path, resume, model_files)
            require_processes(config.train.parallel, info)
            if resume and info.is_main:
                lock = run.lock()
            done = broadcast_object(info, run.completed_summary() if resume and info.is_main else None)
            if announce is not None and info.is_main:
                announce(done)
            if done is not None:
                return done  # nothing to do: a second final eval would only append a duplicate row
            barrier(info)  # every rank has checked the directory before rank 0 creates it
            trainer = _Trainer(config, run, resume, progress, info, lock)
            return trainer.run(stop)
        except Stopped as e:
            if trainer is None and lock is not None:  # resumed, stopped in setup: the old status is stale now
                with contextlib.suppress(LumiError):
                    run.mark("interrupted", f"{e}; continue with --resume {run.path}", only_if=("running",))
            raise
        finally:
            held = trainer.lock if trainer is not None else lock
            if held is not None:
                held.release()


def check_run_dir(
    config: TrainConfig, run_dir: Path, resume: bool, model_files: Sequence[str | Path] = ()
) -> None:
    """LumiError unless the model resolves and ``run_dir`` can take this run: new and empty, or (resume)
    trained with this config, its config.yaml unedited since the checkpoint, and every plugin file it
    needs passed in ``model_files``. Cheap: runs before any data is prepared or anything is written."""
    from lumi.models.registry import load_model_file, make_config, require_model_files

    config.validate()
    require_logger(config.train.logger)  # a missing TensorBoard / wandb fails here, before any work
    for f in model_files:  # named by the caller (the command line): these may be imported
        load_model_file(f)
    if not resume:
        for f in config.model.files:  # a fresh run's config comes from the caller (--config / --model-file)
            load_model_file(f)
    else:
        run = Run(run_dir)
        if not run.config_path.is_file():
            raise LumiError(
                f"cannot resume {str(run_dir)!r}: it has no config.yaml (not a lumi train run directory)"
            )
        saved = run.config
        found = run.latest_checkpoint()
        state = run.checkpoint_state(found)
        require_model_files(list(saved.model.files), state.get("model_files"), run_dir, saved.model.name)
    overrides = {k: v for k, v in config.model.overrides.items() if k != "vocab_size"}
    make_config(config.model.name, config.model.preset, overrides)  # unknown model / preset / field
    if not resume:
        Run(run_dir).ensure_new()
        return
    # train.logger / logger_tags may change: they change how the run is watched, not what it trains.
    diffs = training_differences(saved.to_dict(), config.to_dict())
    if diffs:
        raise LumiError(
            f"cannot resume {str(run_dir)!r}: its config.yaml differs from the requested config "
            f"({'; '.join(diffs[:5])}{' ...' if len(diffs) > 5 else ''}); resume without changes, "
            f"or start a new run with --out"
        )
    stored = state.get("config")
    if isinstance(stored, dict):  # config.yaml edited by hand since the checkpoint was written
        diffs = training_differences(_plain(stored), _plain(saved.to_dict()))
        if diffs:
            raise LumiError(
                f"cannot resume {str(run_dir)!r}: its config.yaml was edited after checkpoint {found} "
                f"was written ({'; '.join(diffs[:5])}{' ...' if len(diffs) > 5 else ''}; checkpoint -> "
                f"config.yaml); restore config.yaml, or start a new run with --out"
            )


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a config dict, so one read from YAML and one from state.json compare equal."""
    import json

    return json.loads(json.dumps(json_safe(d)))


class _Trainer:
    """One training session of one run: built from the config, then ``run()`` once."""

    def __init__(
        self,
        config: TrainConfig,
        run: Run,
        resume: bool,
        progress: bool,
        info: DistInfo,
        lock: DirectoryLock | None = None,
    ) -> None:
        self.config, self.rundir, self.resume, self.info = config, run, resume, info
        self.run_dir = run.path
        self.show_progress = progress and info.is_main
        self.session_start = time.perf_counter()
        t = config.train
        set_threads(t.threads, info)
        self.device = resolve_device(t.device, info)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.autocast_dtype = resolve_autocast(t.precision, self.device)
        from lumi.models.registry import build_model, model_file_hashes

        self.lock = lock  # the run directory's writer lock (rank 0), released by train()
        # Plugins were imported by check_run_dir (never from the run directory); their content hashes go into
        # every checkpoint so a resume can check it gets the same code. A resume keeps the recorded ones.
        self.model_file_hashes = model_file_hashes(list(config.model.files))
        self.data = load_data(config, self.show_progress, info)
        vocab = int(self.data.vocab_size)
        overrides = dict(config.model.overrides)
        if "vocab_size" in overrides and int(overrides.pop("vocab_size")) != vocab:
            raise LumiError(
                f"model.overrides.vocab_size={config.model.overrides['vocab_size']} does not match the "
                f"prepared data's vocabulary ({vocab} tokens, tokenizer {self.data.tokenizer.spec!r}); "
                f"drop the override or prepare data with a matching tokenizer"
            )
        self.vocab_size = vocab
        torch.manual_seed(t.resolved_init_seed)
        self.model = build_model(config.model.name, config.model.preset, overrides, vocab_size=vocab).to(
            self.device
        )
        self.model.train()
        if info.enabled:  # dropout streams differ per rank; init above is identical everywhere
            torch.manual_seed(t.resolved_init_seed * 1_000_003 + info.rank)
        self.train_tokens = self.data.tokens("train")
        self.val_tokens = self.data.tokens("val")
        self.val_bytes = self.data.target_bytes("val")
        self.train_mixture = self.data.train_mixture()  # a corpus mixture: (token ranges, weights); else None
        if len(self.train_tokens) < t.seq_len + 1:
            raise LumiError(
                f"the train split of {self.data.directory} has {len(self.train_tokens)} tokens, "
                f"fewer than train.seq_len + 1 = {t.seq_len + 1}; lower train.seq_len or use more data"
            )
        if len(self.val_tokens) < 2:
            raise LumiError(f"the val split of {self.data.directory} has no targets to evaluate")
        if t.batch_size % (info.world_size * t.grad_accum):
            raise LumiError(
                f"train.batch_size={t.batch_size} must be divisible by processes x grad_accum = "
                f"{info.world_size} x {t.grad_accum}"
            )
        self.micro = t.batch_size // (info.world_size * t.grad_accum)
        self.budget: Budget = t.parsed_budget()
        self.flops_per_token = float(self.model.flops_per_token(t.seq_len))
        self.tokens_per_step = t.batch_size * t.seq_len
        self.total_steps = self.budget.steps(self.tokens_per_step, self.flops_per_token)
        self.optimizer = build_optimizer(self.model, config.optim, vocab, self.device)
        self.state = RunState()
        self.resumed_from: int | None = None
        # Session state, set as training goes (run(), _setup_speed(), evals, the audit).
        self.status: str = "running"
        self.error: str | None = None
        self.diverged_at: int | None = None
        self.final_eval: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_row: dict[str, Any] = {}
        self.metrics = MetricsLog(run.metrics_path, enabled=False)  # opened by run()
        self.logger: Logger = NullLogger()  # train.logger on rank 0, opened by run() next to the metrics
        self.progress: Any = None  # a lumi.progress.ProgressLine when showing progress
        self.train_model: torch.nn.Module = self.model
        self.sharded: ShardedModel | None = None  # train.parallel=fsdp: the copy that trains (_setup_speed)
        self.peak: float = 0.0
        self.peak_source: str = ""
        self.unigram: float | None = None
        self.audit: dict[str, Any] | None = None
        self.preflight: dict[str, Any] | None = None
        if t.causality_preflight and not resume:
            self.preflight = self._probe_before_training()

    # -- causality ---------------------------------------------------------------------------------
    def _probe_before_training(self) -> dict[str, Any]:
        """Probe the initialised model and a randomised copy at the training length before anything is
        written: a leak is refused here (unless train.allow_leaky) instead of being trained for minutes."""
        from lumi.check.audit import PREFLIGHT_TOKENS, audit_causality, randomised_copy

        t = self.config.train
        # Probe copies: train-mode forwards may update state the run owns (BatchNorm statistics, counters).
        weights: dict[str, torch.nn.Module] = {"init": copy.deepcopy(self.model)}
        randomised = randomised_copy(self.model, self.vocab_size, t.seq_len, seed=t.resolved_init_seed)
        if randomised is not None:
            weights["randomised"] = randomised
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            result = audit_causality(
                weights,
                self.vocab_size,
                [t.seq_len],
                self.device,
                seed=t.resolved_init_seed,
                tokens=PREFLIGHT_TOKENS,
            )
        if not result.passed and not t.allow_leaky:
            m = self.config.model
            raise LumiError(
                f"{m.name}:{m.preset or 'custom'} leaks before any training: {result.detail}. A model that "
                f"sees the future has a meaningless BPB, so nothing was trained; run `lumi check "
                f"{m.name}` to see more, fix the model, or pass --allow-leaky (train.allow_leaky=true) "
                f"to train it anyway (the run is then marked LEAK)"
            )
        return result.to_dict()

    def _audit_final_weights(self) -> None:
        """Probe the trained weights at the training (= evaluation) length; the result goes into summary.json."""
        from lumi.check.audit import audit_causality

        t = self.config.train
        if not (t.causality_audit and self.info.is_main):
            return
        result = audit_causality(
            {"trained": copy.deepcopy(self.model)},
            self.vocab_size,
            [t.seq_len],
            self.device,
            seed=t.resolved_init_seed,
        )
        self.audit = result.to_dict()
        if self.show_progress:
            verdict = "passed" if result.passed else "LEAK"
            print(
                f"causality audit of the trained weights: {verdict} ({result.seconds:.1f}s)"
                + ("" if result.passed else f" — {result.detail}"),
                file=sys.stderr,
                flush=True,
            )

    def leak_reason(self) -> str | None:
        """Why this run is marked LEAK (a failed pre-training probe trained anyway, or a failed audit)."""
        pre = self.preflight
        if pre and not pre.get("passed", True):
            return f"pre-training probe: {pre.get('detail')}"
        if self.audit and not self.audit.get("passed", True):
            return f"audit of the trained weights: {self.audit.get('detail')}"
        return None

    # -- setup ---------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """Fresh run: create the directory and write config/env. Resume: restore the checkpoint."""
        run = self.rundir
        if self.resume:
            if self.info.is_main and self.lock is None:
                self.lock = run.lock()
            found = run.latest_checkpoint()
            if found is not None:
                self._restore(found)
            if self.info.is_main:
                if run.config.to_dict() != self.config.to_dict():  # only logging keys (check_run_dir)
                    run.write_config(self.config)
                run.truncate_metrics(self.state.step)
                env = run.env()
                env.setdefault("resumes", []).append(
                    {"time": _now(), "from_step": self.state.step, "hostname": socket.gethostname()}
                )
                run.write_env(env)
        elif self.info.is_main:
            from lumi.train.env import env_info

            run.create()
            self.lock = run.lock()
            run.ensure_new()  # again, under the lock: another process may have started it meanwhile
            run.write_config(self.config)
            run.write_env(env_info(self.device, self.info.world_size, self.precision_name))
        barrier(self.info)

    def _restore(self, ckpt_dir: Path) -> None:
        saved_cfg = self.rundir.model_values(ckpt_dir)
        if int(saved_cfg.get("vocab_size", self.vocab_size)) != self.vocab_size:
            raise LumiError(
                f"checkpoint {ckpt_dir} has vocab_size {saved_cfg.get('vocab_size')} but the prepared data "
                f"has {self.vocab_size}; the data changed since this run started"
            )
        state = ckpt.load_state(ckpt_dir)
        if state.get("data_fingerprint") not in (None, self.data.fingerprint()):
            raise LumiError(
                f"cannot resume from {ckpt_dir}: the prepared data changed since the run started "
                f"(fingerprint {state['data_fingerprint'][:12]} != {self.data.fingerprint()[:12]})"
            )
        ckpt.load_model_weights(ckpt_dir, self.model, self.device)
        self.optimizer.load_state_dict(ckpt.load_optimizer_state(ckpt_dir, self.device))
        rngs = state.get("rng") or []
        if rngs:
            ckpt.set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        fields = {k: v for k, v in state.get("counters", {}).items() if k in RunState.__dataclass_fields__}
        self.state = RunState(**fields)
        if isinstance(state.get("model_files"), dict):
            self.model_file_hashes = state["model_files"]
        self.resumed_from = self.state.step

    @property
    def precision_name(self) -> str:
        return "bf16 autocast" if self.autocast_dtype == torch.bfloat16 else "fp32"

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: StopSignal | None = None) -> dict[str, Any]:
        stop = stop if stop is not None else StopSignal()
        self._prepare_run_dir()
        info, run = self.info, self.rundir
        self.metrics = run.metrics_log(enabled=info.is_main)
        if info.is_main:
            self.unigram = _unigram(self.data)
            run.write_summary(self.summary())
        try:
            if info.is_main:
                self.logger = open_logger(self.config, run, self.state.step if self.resume else None)
            self._setup_speed()
            stop.graceful = True
            try:
                self._loop(stop)
            finally:
                stop.graceful = False
            if self.status == "completed" and stop.received:  # arrived during the last step or its checkpoint
                name = signal.Signals(stop.received).name
                self.status = "interrupted"
                self.error = (
                    f"stopped by {name} after the last step {self.state.step} (checkpoint written) before "
                    f"the final evaluation; finish it with --resume {self.run_dir}"
                )
            if self.status == "completed":
                self._gather_weights()  # the final eval and the audit score the plain model
                self._final_eval()
                self._audit_final_weights()
        except BaseException as e:
            if self.status in ("running", "completed"):
                self.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                if isinstance(e, Stopped):
                    self.error = f"{e} at step {self.state.step}; continue with --resume {self.run_dir}"
                elif isinstance(e, LumiError):
                    self.error = str(e)  # already one line that says what and where (e.g. the disk is full)
                else:
                    self.error = f"{type(e).__name__}: {e}"
            if info.is_main:
                with contextlib.suppress(LumiError):  # e.g. the disk is full: the original error matters more
                    run.write_summary(self.summary())
            raise
        finally:
            self.metrics.close()
            self._close_logger()
            if self.progress is not None:
                self.progress.close()
        summary = self.summary()
        if info.is_main:
            run.write_summary(summary)
        return summary

    def _setup_speed(self) -> None:
        from lumi.train.env import peak_flops

        t = self.config.train
        if t.parallel == "fsdp":  # after _restore, so the sharded copy starts from the restored state
            mixed = self.autocast_dtype if self.device.type == "cuda" else None
            self.sharded = ShardedModel(self.model, self.info, mixed)
            self.optimizer = self.sharded.adopt_optimizer(
                self.optimizer.state_dict(),
                lambda module: build_optimizer(module, self.config.optim, self.vocab_size, self.device),
            )
            self.train_model = self.sharded.module
        if t.compile:
            # Compiling a Module gives an OptimizedModule, itself a Module (the stub says only Callable).
            self.train_model = cast(torch.nn.Module, torch.compile(self.train_model))
        if self.info.enabled and self.sharded is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        compute_dtype = self.autocast_dtype or torch.float32
        self.peak, self.peak_source = (
            peak_flops(self.device, compute_dtype, t.peak_flops)
            if self.info.is_main
            else (float(t.peak_flops or 0.0), "")
        )
        if self.show_progress:
            from lumi.progress import ProgressLine

            total = self.total_steps if self.total_steps is not None else self.budget.value
            self.progress = ProgressLine(self.run_dir.name, total, plain_every_s=10.0)

    def _forward_module(self) -> LumiModel:
        """The model whose forward runs in training: the sharded copy under FSDP, else the model itself."""
        return self.sharded.module if self.sharded is not None else self.model

    def _gather_weights(self) -> None:
        """FSDP: copy the trained weights into the plain model that evaluations, checkpoints and the audit
        use (every rank; a collective). Without FSDP the plain model is the one that trains."""
        if self.sharded is not None:
            self.sharded.copy_weights_to(self.model)

    def _done(self) -> bool:
        if self.total_steps is not None:
            return self.state.step >= self.total_steps
        return self.state.elapsed_s >= self.budget.value

    def _fractions(self) -> tuple[float, float]:
        s = self.state
        if self.total_steps is not None:
            return s.step / self.total_steps, (s.step + 1) / self.total_steps
        return s.elapsed_s / self.budget.value, (s.elapsed_s + s.last_step_s) / self.budget.value

    def _loop(self, stop: StopSignal) -> None:
        t, info, s = self.config.train, self.info, self.state
        last_ckpt_elapsed = s.elapsed_s
        row_tokens, row_time = 0, 0.0
        while not self._done():
            frac_start, frac_end = self._fractions()
            mult = lr_multiplier(self.config.optim, s.step, frac_start, frac_end)
            self.optimizer.set_lr_multiplier(mult)
            t0 = time.perf_counter()
            ce, aux = self._forward_backward(s.step)
            # One collective for the global loss and "did any rank get SIGINT/SIGTERM".
            flags = torch.tensor(
                [ce, aux, 1.0 if stop.received else 0.0], dtype=torch.float64, device=self.device
            )
            all_reduce_(info, flags)
            ce, aux = float(flags[0]) / info.world_size, float(flags[1]) / info.world_size
            stop_requested = float(flags[2]) > 0
            grad_norm = self._clip_grads()
            if not (math.isfinite(ce) and math.isfinite(aux) and math.isfinite(grad_norm)):
                self._diverged(s.step + 1, ce + aux, grad_norm)
                return
            self.optimizer.step()
            self.optimizer.zero_grad()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            if info.enabled:  # every rank must agree on elapsed time: it drives budget, evals, checkpoints
                dt = float(
                    all_reduce_(info, torch.tensor([dt], dtype=torch.float64, device=self.device), "max")[0]
                )
            s.step += 1
            s.tokens += self.tokens_per_step
            s.flops += self.tokens_per_step * self.flops_per_token
            s.elapsed_s += dt
            s.last_step_s = dt
            s.update_ema(ce)
            row_tokens += self.tokens_per_step
            row_time += dt
            finished = self._done()
            if s.step % t.log_every == 0 or finished or stop_requested:
                self._train_row(ce, aux, mult, grad_norm, row_tokens / max(row_time, 1e-9))
                row_tokens, row_time = 0, 0.0
            if finished or self._eval_due():
                self._periodic_eval()
            if self.progress is not None:
                self._show_progress()
            if stop_requested:
                name = signal.Signals(stop.received).name if stop.received else "a signal on another rank"
                self.status = "interrupted"
                self.error = f"stopped by {name} after step {s.step}; continue with --resume {self.run_dir}"
                self._checkpoint()
                return
            due_steps = t.checkpoint_every_steps and s.step % t.checkpoint_every_steps == 0
            due_time = t.checkpoint_every_s and s.elapsed_s - last_ckpt_elapsed >= t.checkpoint_every_s
            if finished or due_steps or due_time:
                self._checkpoint()
                last_ckpt_elapsed = s.elapsed_s
        self.status = "completed"

    def _forward_backward(self, step: int) -> tuple[float, float]:
        t, info = self.config.train, self.info
        x_all, y_all = step_batch(
            self.train_tokens,
            t.resolved_data_seed,
            step,
            t.seq_len,
            t.batch_size,
            info.rank,
            info.world_size,
            mixture=self.train_mixture,
        )
        ce_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)
        for i in range(t.grad_accum):
            x = x_all[i * self.micro : (i + 1) * self.micro].to(self.device, non_blocking=True)
            y = y_all[i * self.micro : (i + 1) * self.micro].to(self.device, non_blocking=True)
            last = i == t.grad_accum - 1
            if self.sharded is not None:
                self.sharded.set_gradient_sync(last)
            sync = (
                cast("DistributedDataParallel", self.train_model).no_sync()  # wrapped in DDP when enabled
                if info.enabled and not last and self.sharded is None
                else contextlib.nullcontext()
            )
            with sync:
                with self._autocast():
                    logits = self.train_model(x)
                    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                    aux_losses = self._forward_module().aux_losses()
                    aux = sum(aux_losses.values()) if aux_losses else torch.zeros((), device=self.device)
                ((ce + aux) / t.grad_accum).backward()
            ce_sum += ce.detach()
            aux_sum += aux.detach().float() if torch.is_tensor(aux) else float(aux)
        return float(ce_sum) / t.grad_accum, float(aux_sum) / t.grad_accum

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    def _clip_grads(self) -> float:
        clip = self.config.optim.grad_clip
        params = [p for p in self._forward_module().parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"), foreach=True)
        return float(norm)

    def _diverged(self, step: int, loss: float, grad_norm: float) -> None:
        self.status, self.diverged_at = "diverged", step
        found = self.rundir.latest_checkpoint()
        kept = (
            f"last good checkpoint: step {ckpt.load_state(found)['counters']['step']} ({found})"
            if found
            else "no checkpoint was written before it"
        )
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        self.error = f"{what} at step {step}: training stopped; {kept}"
        self._write(
            {
                "step": self.state.step,
                "kind": "diverged",
                "diverged_at_step": step,
                "loss": loss,
                "grad_norm": grad_norm,
            }
        )

    # -- logging, evals, checkpoints ---------------------------------------------------------------
    def _write(self, row: dict[str, Any]) -> None:
        """One metrics row: metrics.jsonl (the record), then the live logger. A logger that fails is
        dropped with a warning: watching the run must not end it."""
        self.metrics.write(row)
        if isinstance(self.logger, NullLogger):
            return
        try:
            self.logger.log(row, int(row["step"]))
        except Exception as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            warn(
                f"{self.logger.kind} logging stopped at step {row['step']} ({type(e).__name__}: {reason}); "
                f"metrics.jsonl has every row"
            )
            self._close_logger()

    def _close_logger(self) -> None:
        logger, self.logger = self.logger, NullLogger()
        try:
            logger.close(self.status)
        except Exception as e:  # the run's own outcome (or error) matters more
            warn(f"closing the {logger.kind} logger failed: {type(e).__name__}: {e}")

    def _train_row(self, ce: float, aux: float, mult: float, grad_norm: float, tok_per_s: float) -> None:
        s = self.state
        flops_per_s = tok_per_s * self.flops_per_token
        row: dict[str, Any] = {
            "kind": "train",
            "step": s.step,
            "tokens": s.tokens,
            "loss": ce,
            "loss_ema": s.loss_ema,
            "lr": self.optimizer.param_groups[0]["lr"],
            "lr_mult": mult,
            "grad_norm": grad_norm,
            "tok_per_s": tok_per_s,
            "flops": s.flops,
            "elapsed_s": s.elapsed_s,
            "mfu": flops_per_s / (self.peak * self.info.world_size) if self.peak else None,
        }
        if aux:
            row["aux_loss"] = aux
        for key, value in (self._forward_module().stats() or {}).items():
            row[key if key not in row else f"model_{key}"] = float(value)
        self._write(row)
        self.last_row = row

    def _eval_due(self) -> bool:
        t, s = self.config.train, self.state
        if t.eval_every_steps and s.step % t.eval_every_steps == 0:
            return True
        if not t.eval_every_s:
            return False
        return s.elapsed_s - s.last_eval_elapsed_s >= t.eval_every_s

    def _evaluate(self, max_targets: int | None) -> dict[str, Any]:
        from lumi.metrics.evaluate import evaluate_bpb, evaluate_bpb_by_corpus

        t = self.config.train
        common: dict[str, Any] = {
            "max_targets": max_targets,
            "autocast_dtype": self.autocast_dtype,
            "rank": self.info.rank,
            "world_size": self.info.world_size,
        }
        batch = max(1, t.batch_size // t.grad_accum // self.info.world_size)
        if self.train_mixture is not None:  # BPB per corpus and the byte-weighted total
            ranges = self.data.corpus_ranges("val")
            return evaluate_bpb_by_corpus(
                self.model, self.val_tokens, self.val_bytes, ranges, t.seq_len, batch, self.device, **common
            )
        return evaluate_bpb(
            self.model, self.val_tokens, self.val_bytes, t.seq_len, batch, self.device, **common
        )

    def _eval_row(self, result: dict[str, Any], final: bool) -> dict[str, Any]:
        s = self.state
        row = {
            "kind": "eval",
            "step": s.step,
            "tokens": s.tokens,
            "flops": s.flops,
            "elapsed_s": s.elapsed_s,
            "val_bpb": result["bpb"],
            "val_loss": result["loss"],
            **{f"val_bpb/{name}": r["bpb"] for name, r in (result.get("by_corpus") or {}).items()},
            "train_loss_ema": s.loss_ema,
            "final": final,
            "protocol": result["protocol"],
        }
        self._write(row)
        return row

    def _periodic_eval(self) -> None:
        self._gather_weights()
        self.last_eval = self._evaluate(self.config.train.eval_tokens)
        self.state.last_eval_elapsed_s = self.state.elapsed_s
        self._eval_row(self.last_eval, final=False)

    def _final_eval(self) -> None:
        mode = self.config.train.final_eval
        if mode == "none":
            return
        covers_all = self.config.train.eval_tokens >= len(self.val_tokens) - 1
        if self.last_eval is not None and (mode == "subset" or covers_all):
            self.final_eval = self.last_eval  # the last periodic eval already scored this at this step
        else:
            self.final_eval = self._evaluate(None if mode == "full" else self.config.train.eval_tokens)
        self._eval_row(self.final_eval, final=True)
        if self.progress is not None:
            self.progress.close(
                f"final val_bpb {self.final_eval['bpb']:.4f} ({self.final_eval['protocol']['subset']})"
            )

    def _checkpoint(self) -> None:
        s = self.state
        rngs = all_gather_object(self.info, ckpt.rng_state())
        self._gather_weights()
        # FSDP: every rank takes part in gathering the optimizer state; rank 0 gets it in the plain format.
        if self.sharded is not None:
            optimizer_state = self.sharded.full_optimizer_state(self.optimizer)
        else:
            optimizer_state = self.optimizer.state_dict() if self.info.is_main else {}
        if not self.info.is_main:
            barrier(self.info)
            return
        t = self.config.train
        state = {
            "counters": {k: getattr(s, k) for k in RunState.__dataclass_fields__},
            "step": s.step,
            "tokens": s.tokens,
            "flops": s.flops,
            "elapsed_s": s.elapsed_s,
            "wall_s": s.wall_s + (time.perf_counter() - self.session_start),
            "rng": rngs,
            "data": {
                "sampler": "random windows; numpy PCG64(SeedSequence([data_seed, step]))",
                "data_seed": t.resolved_data_seed,
                "next_step": s.step,
                "seq_len": t.seq_len,
                "batch_size": t.batch_size,
            },
            "data_fingerprint": self.data.fingerprint(),
            # what a resume checks: the config this was trained with, and the plugin code (sha256 by path)
            "config": json_safe(self.config.to_dict()),
            "model_files": self.model_file_hashes,
            "saved_at": _now(),
        }
        state["counters"]["wall_s"] = state["wall_s"]
        try:
            ckpt.save_checkpoint(self.rundir.checkpoints_dir, self.model, optimizer_state, state)
        finally:
            barrier(self.info)

    def _show_progress(self) -> None:
        s = self.state
        done = s.step if self.total_steps is not None else s.elapsed_s
        parts = [f"step {s.step}" + (f"/{self.total_steps}" if self.total_steps else "")]
        if s.loss_ema is not None:
            parts.append(f"loss {s.loss_ema:.3f}")
        if self.last_eval is not None:
            parts.append(f"val {self.last_eval['bpb']:.3f} bpb")
        rate = self.last_row.get("tok_per_s")
        if rate:
            parts.append(f"{rate:,.0f} tok/s")
        self.progress.update(done, "  ".join(parts))

    # -- summary -----------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        s, t, m = self.state, self.config.train, self.config.model
        counts = self.model.param_counts()
        wall = s.wall_s + (time.perf_counter() - self.session_start)
        fe = self.final_eval
        return {
            "name": self.config.name or self.run_dir.name,
            "run_dir": str(self.run_dir),
            "model": m.name,
            "preset": m.preset,
            "params": counts.total,
            "non_embedding_params": counts.non_embedding,
            "active_params": counts.active if counts.active is not None else counts.total,
            "flops_per_token": self.flops_per_token,
            "vocab_size": self.vocab_size,
            "seq_len": t.seq_len,
            "batch_size": t.batch_size,
            "budget": t.budget,
            "seed": t.seed,
            "init_seed": t.resolved_init_seed,
            "data_seed": t.resolved_data_seed,
            "optimizer": self.config.optim.name,
            "steps": s.step,
            "tokens": s.tokens,
            "flops": s.flops,
            "train_s": s.elapsed_s,
            "wall_s": wall,
            "tok_per_s": s.tokens / s.elapsed_s if s.elapsed_s > 0 else None,
            "mfu": (
                s.tokens / s.elapsed_s * self.flops_per_token / (self.peak * self.info.world_size)
                if s.elapsed_s > 0 and self.peak
                else None
            ),
            "peak_flops": self.peak or None,
            "final_train_loss_ema": s.loss_ema,
            "final_val_bpb": fe["bpb"] if fe else None,
            "final_val_loss": fe["loss"] if fe else None,
            "final_val_protocol": fe["protocol"] if fe else None,
            **{f"final_val_bpb/{n}": r["bpb"] for n, r in ((fe or {}).get("by_corpus") or {}).items()},
            "unigram_val_bpb": self.unigram,
            "data": str(self.data.directory),
            "tokenizer": self.data.tokenizer.spec,
            "device": str(self.device),
            "precision": self.precision_name,
            "world_size": self.info.world_size,
            "status": self.status,
            "error": self.error,
            "diverged_at_step": self.diverged_at,
            "resumed_from_step": self.resumed_from,
            "causality_preflight": self.preflight,
            "causality_audit": self.audit,
            "leak": self.leak_reason(),
        }


# -- helpers ---------------------------------------------------------------------------------------


def _unigram(data: Any) -> float | None:
    from lumi.metrics.evaluate import unigram_bpb

    try:
        return unigram_bpb(data)["bpb"]
    except ValueError:
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

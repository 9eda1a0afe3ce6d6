"""Live logging of a run's metrics rows to TensorBoard or Weights & Biases (``train.logger``).

metrics.jsonl stays the record; a logger shows the same rows while the run goes. The trainer (rank 0
only) opens one next to its MetricsLog, passes it every row it appends, and closes it on every exit
path (completed, diverged, failed, interrupted):

    logger = open_logger(config, run, resumed_from=None)
    logger.log(row, row["step"])       # once per metrics.jsonl row
    logger.close("completed")          # the run's final status

Names: each numeric field of a row becomes one scalar, ``<group>/<field>``, at the row's ``step``: group
``train`` for train rows (train/loss, train/lr, train/tok_per_s ...), ``eval`` for periodic evaluations
(eval/val_bpb, eval/val_loss ...), ``final`` for the final evaluation on the whole validation split
(final/val_bpb: another protocol than the periodic prefix, so not on the same curve) and ``diverged`` for
a divergence row. Non-numbers (kind, protocol) and booleans are left out.

TensorBoard writes RUN/tensorboard/; a resumed session writes a new event file there with purge_step =
the checkpoint's step + 1, so rows the killed session logged after its checkpoint are hidden, as they
were dropped from metrics.jsonl. wandb logs into RUN/wandb/ under a stable id kept in the run directory
(lumi.run.Run.wandb_run_id) with resume="allow", so every session of a run is one wandb run; its mode is
$WANDB_MODE, else online when an API key is configured ($WANDB_API_KEY or a netrc entry for the wandb
host) and offline otherwise (`wandb sync RUN/wandb/offline-run-*` uploads it later).
"""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lumi.errors import LumiError

if TYPE_CHECKING:
    from lumi.run import Run
    from lumi.train.config import TrainConfig

INSTALL_HINT = "pip install 'lumi-lab[loggers]'"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
WANDB_PROJECT = "lumi"
WANDB_TAG_MAX = 64  # wandb refuses longer tags
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # dryrun = offline, run = online


class Logger:
    """Where the rows go besides metrics.jsonl; this base class drops them (train.logger=none)."""

    kind = "none"

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Record one metrics.jsonl row at ``step`` (the row's own step)."""

    def close(self, status: str | None = None) -> None:
        """Flush and release; ``status`` is the run's status at the end (completed, failed, ...)."""


class NullLogger(Logger):
    """train.logger=none, and every rank but 0."""


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The scalars a logger records for one metrics row: {'train/loss': 3.1, 'train/lr': 0.003, ...}."""
    kind = str(row.get("kind") or "metrics")
    group = "final" if kind == "eval" and row.get("final") else kind
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("kind", "step", "final") or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            out[f"{group}/{key}"] = float(value)
    return out


def require_logger(kind: str) -> None:
    """LumiError (one line, naming the extra that installs it) unless ``kind``'s package imports."""
    if kind == "none":
        return
    if kind not in PACKAGES:
        raise LumiError(f"train.logger must be one of none, {', '.join(PACKAGES)}; got {kind!r}")
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        else:
            import wandb  # noqa: F401
    except Exception as e:  # ImportError when missing; anything else from a broken install
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LumiError(
            f"train.logger={kind} needs the {PACKAGES[kind]} package, which cannot be imported here "
            f"({reason}); install it with {INSTALL_HINT}, or set train.logger=none"
        ) from None
    if kind == "wandb":
        wandb_mode()  # a WANDB_MODE wandb does not know fails now too


def open_logger(
    config: TrainConfig, run: Run, resumed_from: int | None = None, tags: Sequence[str] = ()
) -> Logger:
    """The logger ``config.train.logger`` names, for ``run`` (a session resumed from step ``resumed_from``
    continues the same TensorBoard directory / wandb run). ``tags`` are added to train.logger_tags."""
    kind = config.train.logger
    if kind == "none":
        return NullLogger()
    require_logger(kind)
    if kind == "tensorboard":
        return TensorBoardLogger(
            run.tensorboard_dir,
            purge_step=None if resumed_from is None else resumed_from + 1,
            config_yaml=None if resumed_from is not None else config.to_yaml(),
        )
    return WandbLogger(
        run.path,
        run_id=run.wandb_run_id(),
        name=config.name or run.path.name,
        config=config.to_dict(),
        tags=[*config.train.logger_tags, *tags],
        mode=wandb_mode(),
    )


class TensorBoardLogger(Logger):
    """torch.utils.tensorboard.SummaryWriter into ``log_dir`` (RUN/tensorboard/)."""

    kind = "tensorboard"

    def __init__(self, log_dir: Path, purge_step: int | None = None, config_yaml: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        try:
            self.writer: Any = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=10)
        except OSError as e:
            raise LumiError(f"cannot write TensorBoard logs to {log_dir}: {e.strerror or e}") from None
        if config_yaml is not None:  # the Text tab shows what the run trains (indented: Markdown code)
            self.writer.add_text("config", "    " + config_yaml.rstrip().replace("\n", "\n    "), 0)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # live: the row is on disk when the step is

    def close(self, status: str | None = None) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """One wandb run per lumi run: ``run_id`` is stable across sessions (resume="allow"), files go to
    ``run_dir``/wandb."""

    kind = "wandb"

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        name: str,
        config: dict[str, Any],
        tags: Sequence[str] = (),
        mode: str = "offline",
    ) -> None:
        import wandb

        self.mode = mode
        unique = list(dict.fromkeys(str(t)[:WANDB_TAG_MAX] for t in tags if str(t).strip()))
        try:
            self.run: Any = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
                name=name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                mode=cast(Any, mode),  # checked against WANDB_MODES by wandb_mode()
                tags=unique,
                config={**config, "run_dir": str(run_dir)},
                settings=wandb.Settings(console="off"),  # the trainer's progress line is not a log
            )
        except Exception as e:  # network, login or settings errors; the message's first line says which
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LumiError(
                f"wandb could not start ({mode} mode): {type(e).__name__}: {reason}; set WANDB_MODE=offline "
                f"to log without a network (wandb sync uploads it later), or train.logger=none"
            ) from None

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.run.log(scalars(row), step=step)

    def close(self, status: str | None = None) -> None:
        if status is not None:
            self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in (None, "completed") else 1)


def wandb_mode(environ: Mapping[str, str] | None = None, netrc_file: str | None = None) -> str:
    """$WANDB_MODE when set; else online when an API key is configured, offline otherwise."""
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE", "").strip()
    if mode:
        if mode not in WANDB_MODES:
            raise LumiError(
                f"WANDB_MODE={mode!r} is not a wandb mode; use one of {', '.join(WANDB_MODES[:4])} "
                f"(or unset it: offline unless an API key is configured)"
            )
        return mode
    return "online" if _wandb_key_configured(env, netrc_file) else "offline"


def _wandb_key_configured(env: Mapping[str, str], netrc_file: str | None = None) -> bool:
    """Whether wandb would find an API key: $WANDB_API_KEY, or a netrc entry for the wandb host (where
    `wandb login` puts it). Only checks that one is there."""
    import netrc
    from urllib.parse import urlparse

    if env.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(netrc_file or env.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)

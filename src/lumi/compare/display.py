"""What `lumi compare` shows while it runs: which runs are done, running (step, loss, val BPB), pending.

On a terminal a live rich table redraws in place; otherwise (CI, logs, --no-progress) plain lines
are printed when a run starts or ends and every ``PLAIN_EVERY_S`` seconds for the running ones.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from lumi.compare.runner import RunJob
from lumi.run import Run

PLAIN_EVERY_S = 30.0


class CompareDisplay:
    def __init__(
        self,
        jobs: list[RunJob],
        total_steps: dict[str, int | None],
        reused: int,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.jobs = jobs
        self.total_steps = total_steps  # label -> planned steps (None for a time budget)
        self.reused = reused
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.ended: dict[str, str] = {}
        self.live = None
        self._last_plain = time.time()
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self.live.start()

    # -- events from the runner ---------------------------------------------------------------------
    def started(self, job: RunJob) -> None:
        if self.live is None:
            verb = "resuming" if job.resume else "training"
            self._plain(f"{verb} {job.key} -> {job.run_dir} (log: {job.log_path})")

    def finished(self, job: RunJob) -> None:
        status = Run(job.run_dir).status() or "unknown"
        self.ended[job.key] = status
        if self.live is None:
            m = Run(job.run_dir).latest_metrics()
            extra = f", val BPB {m['val_bpb']:.4f}" if m.get("val_bpb") is not None else ""
            took = f" in {job.ended - job.started:.0f}s" if job.started and job.ended else ""
            done = len(self.ended) + self.reused
            self._plain(f"[{done}/{len(self.jobs) + self.reused}] {job.key}: {status}{took}{extra}")

    def tick(self, running: list[RunJob]) -> None:
        if self.live is not None:
            self.live.update(self._table(running))
        elif running and time.time() - self._last_plain >= PLAIN_EVERY_S:
            self._plain("running: " + "; ".join(f"{j.key} {self._progress_text(j)}" for j in running))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- rendering -----------------------------------------------------------------------------------
    def _progress_text(self, job: RunJob) -> str:
        m = Run(job.run_dir).latest_metrics()
        total = self.total_steps.get(job.label)
        parts = [f"step {m.get('step', 0)}" + (f"/{total}" if total else "")]
        if m.get("loss") is not None:
            parts.append(f"loss {m['loss']:.3f}")
        if m.get("val_bpb") is not None:
            parts.append(f"val {m['val_bpb']:.3f} bpb")
        return ", ".join(parts)

    def _table(self, running: list[RunJob]):
        from rich.table import Table

        table = Table(
            title=f"lumi compare: {len(self.ended) + self.reused} done, {len(running)} running, "
            f"{len(self.jobs) - len(self.ended) - len(running)} pending"
            + (f" ({self.reused} reused)" if self.reused else ""),
            title_justify="left",
        )
        for col in ("run", "state", "progress"):
            table.add_column(col)
        running_keys = {j.key for j in running}
        for job in self.jobs:
            if job.key in self.ended:
                table.add_row(job.key, self.ended[job.key], "")
            elif job.key in running_keys:
                table.add_row(job.key, "resuming" if job.resume else "running", self._progress_text(job))
            else:
                table.add_row(job.key, "pending", "")
        return table

    def _plain(self, text: str) -> None:
        if self.enabled:
            print(f"[compare] {text}", file=self.stream, flush=True)
            self._last_plain = time.time()

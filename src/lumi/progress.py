"""Progress display for long work: a live rich bar on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class ProgressLine:
    """Reports progress of `total` units with a custom status text.

    On a TTY it redraws one line in place (rich); otherwise it prints a plain line at most
    every `plain_every_s` seconds, so logs and CI output stay readable.
    """

    def __init__(
        self,
        description: str,
        total: float,
        unit: str = "",
        plain_every_s: float = 10.0,
        stream=None,
        enabled: bool = True,
    ) -> None:
        self.description = description
        self.total = max(float(total), 1e-12)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.is_tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.plain_every_s = plain_every_s
        self.start = time.perf_counter()
        self._last_plain = 0.0
        self._done = 0.0
        self._live = None
        if self.is_tty:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream)
            self._live = Live(console=self._console, refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, done: float, status: str = "") -> None:
        self._done = done
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        frac = min(max(done / self.total, 0.0), 1.0)
        eta = (elapsed / frac - elapsed) if frac > 0 else float("nan")
        text = (
            f"{self.description} {100 * frac:5.1f}% {status} elapsed {format_duration(elapsed)} "
            f"eta {format_duration(eta)}"
        )
        if self._live is not None:
            width = 24
            filled = int(width * frac)
            from rich.markup import escape

            bar = escape(f"[{'#' * filled}{'.' * (width - filled)}]")
            self._live.update(
                f"[bold]{escape(self.description)}[/] {bar} "
                f"{100 * frac:5.1f}% {escape(status)} eta {format_duration(eta)}"
            )
        elif now - self._last_plain >= self.plain_every_s or frac >= 1.0:
            self._last_plain = now
            print(text, file=self.stream, flush=True)

    def close(self, final_status: str = "") -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if final_status and self.enabled:
            print(f"{self.description}: {final_status}", file=self.stream, flush=True)

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_count(x: float) -> str:
    """3 significant digits with k/M/G/T: 500, 1k, 6.4k, 19.2M, 3.1T."""
    r = float(f"{float(x):.3g}")  # round first, so 999.7k becomes 1M and not 1e+03k
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(r) >= scale:
            if abs(r) >= 1000 * scale:  # beyond 999T
                return f"{r:.3g}"
            return f"{r / scale:.3g}{suffix}"
    return f"{r:.3g}"


def format_duration(s: float) -> str:
    """'13s', '4m05s', '1h02m' ('?' when unknown)."""
    if s != s or s == float("inf"):
        return "?"
    s = round(float(s))  # an int (also for a numpy scalar)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def iterate(
    items,
    description: str,
    total: int | None = None,
    enabled: bool = True,
    status: Callable[[int], str] | None = None,
):
    """Wrap an iterable with a ProgressLine."""
    total = total if total is not None else len(items)
    bar = ProgressLine(description, total, enabled=enabled)
    try:
        for i, item in enumerate(items):
            yield item
            bar.update(i + 1, status(i + 1) if status else f"{i + 1}/{total}")
    finally:
        bar.close()

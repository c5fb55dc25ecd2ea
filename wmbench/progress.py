"""Progress of a long loop: a tqdm bar on a terminal, plain log lines elsewhere.

DVC's and CI's logs are not terminals, so there a loop prints one line per
epoch (``embed: epoch 3/30  loss 0.412  test_acc 0.912  wm_acc 0.990  12s,
~1m48s left``), at most one every ``WMBENCH_PROGRESS_SECONDS`` seconds
(default 5; 0 = every epoch; the first and last epochs always), and, inside
an epoch that runs longer than ``MID_EPOCH_SECONDS``, a line with the share
of its batches done. The fields are the ones the bar shows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

MID_EPOCH_SECONDS = 30.0  # inside a long epoch, a line at most this often


def log_interval() -> float:
    """Seconds between log lines: ``WMBENCH_PROGRESS_SECONDS`` (default 5; 0 = every epoch)."""
    try:
        return max(0.0, float(os.environ.get("WMBENCH_PROGRESS_SECONDS", "5")))
    except ValueError:
        return 5.0


class Progress:
    """Report ``total`` units of work (epochs, rounds) named ``name``, on ``stream`` (default stderr)."""

    def __init__(self, total: int, name: str, unit: str = "epoch", stream: TextIO | None = None,
                 interval: float | None = None) -> None:
        self.total, self.name, self.unit = total, name, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = log_interval() if interval is None else interval
        self.done = self.reported = 0
        self.fields: dict[str, str] = {}
        self.start = self.last_line = time.monotonic()
        self.bar = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit=unit, leave=False, file=self.stream)

    def update(self, fields: Mapping[str, Any]) -> None:
        """One unit done, with its figures (loss, accuracies, ...)."""
        self.done += 1
        self.fields = {k: _format(v) for k, v in fields.items() if k not in ("epoch", "round")}
        if self.bar is not None:
            self.bar.set_postfix(self.fields)
            self.bar.update()
            return
        now = time.monotonic()
        if self.done in (1, self.total) or now - self.last_line >= self.interval:
            self._epoch_line(now)

    def within(self, share: float) -> None:
        """Inside a long unit: ``share`` (0..1) of it done; a line only when nothing was said for a while."""
        if self.bar is not None:
            return
        now = time.monotonic()
        if now - self.last_line >= MID_EPOCH_SECONDS:
            self._line(f"{self.unit} {self.done + 1}/{self.total}  {100 * share:.0f}% of its batches", now)

    def close(self) -> None:
        """Close the bar; in a log, report the last unit if it was not (e.g. a search that stopped early)."""
        if self.bar is not None:
            self.bar.close()
        elif self.done and self.reported != self.done:
            self._epoch_line(time.monotonic())

    def _epoch_line(self, now: float) -> None:
        self.reported = self.done
        fields = "  ".join(f"{k} {v}" for k, v in self.fields.items())
        self._line(f"{self.unit} {self.done}/{self.total}  {fields}", now)

    def _line(self, text: str, now: float) -> None:
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done and self.reported < self.total else None
        timing = f"{_duration(elapsed)}" + (f", ~{_duration(left)} left" if left else "")
        print(f"{self.name}: {text}  {timing}", file=self.stream, flush=True)
        self.last_line = now


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"

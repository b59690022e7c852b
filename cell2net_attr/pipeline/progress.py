"""Progress on stderr: a rich bar in a terminal, plain periodic lines otherwise (SLURM logs)."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    """Told how much work there is (in ``unit``: cells, or cell x peak pairs) and how much is done."""

    def start(self, total: int, label: str, unit: str = "cells") -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


class NullProgress:
    """Reports nothing (``--quiet``, notebooks)."""

    def start(self, total: int, label: str, unit: str = "cells") -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def stop(self) -> None:
        pass


class LineProgress:
    """One line every ``interval`` seconds and one at the end: cells done, cells/s, ETA."""

    def __init__(self, stream: TextIO, interval: float = 30.0) -> None:
        self.stream, self.interval = stream, interval

    def start(self, total: int, label: str, unit: str = "cells") -> None:
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.t0 = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def stop(self) -> None:
        if self.done >= self.total:  # a failed run ends with its error, not a progress line
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = f"{(self.total - self.done) / rate:.0f}s" if rate > 0 else "-"
        pct = 100.0 * self.done / max(self.total, 1)
        print(f"[{self.label}] {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s, "
              f"elapsed {elapsed:.0f}s, ETA {eta}", file=self.stream, flush=True)


class RichProgress:
    """A rich progress bar on stderr."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} {task.fields[unit]}/s"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream),
                        transient=False)

    def start(self, total: int, label: str, unit: str = "cells") -> None:
        self.t0 = time.monotonic()
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, rate="-", unit=unit)
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        self._bar.update(self._task, advance=n, rate=f"{rate:.1f}")

    def stop(self) -> None:
        self._bar.stop()


def make_progress(quiet: bool = False, stream: TextIO | None = None, interval: float = 30.0) -> Progress:
    """Rich in a terminal, plain lines when stderr is a file or pipe, nothing when quiet."""
    stream = stream or sys.stderr
    if quiet:
        return NullProgress()
    if stream.isatty():
        return RichProgress(stream)
    return LineProgress(stream, interval)

"""Progress on stderr: a Rich bar in a terminal, one plain line per finished step elsewhere (CI, SLURM, nohup).

stdout stays clean for data either way. A step is a case of a sweep (``done`` gets its row) or
a step of a calibration (``done`` gets nothing and the started label is reported).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, TextIO

__all__ = ["Progress", "progress", "step_hook"]


class Progress(Protocol):
    def start(self, label: str) -> None:
        """A step is starting (its label shows in the bar)."""

    def done(self, row: dict[str, Any] | None = None) -> None:
        """A step finished; ``row`` is the case's result row, when the step is a case."""


class _Silent:
    def start(self, label: str) -> None:
        pass

    def done(self, row: dict[str, Any] | None = None) -> None:
        pass


def _row_label(row: dict[str, Any]) -> str:
    from flashbench.core.cases import Case

    try:
        return Case.from_dict(row).label()
    except (KeyError, TypeError, ValueError):
        return str(row.get("backend", "?"))


class _Lines:
    """``[  3/16]  12.4 s  ok        0.123 ms  triton fwd B1 H4/2 N64 D64 fp32``, flushed at once."""

    def __init__(self, total: int, stream: TextIO):
        self._total, self._stream = total, stream
        self._count = 0
        self._label = ""
        self._started = time.monotonic()

    def start(self, label: str) -> None:
        self._label = label

    def done(self, row: dict[str, Any] | None = None) -> None:
        self._count += 1
        width = len(str(self._total))
        head = f"[{self._count:>{width}}/{self._total}] {time.monotonic() - self._started:7.1f} s"
        if row is None:
            line = f"{head}  done  {self._label}"
        else:
            median = row.get("median_ms")
            timing = f"{median:10.4g} ms" if isinstance(median, (int, float)) else " " * 13
            line = f"{head}  {row.get('status', '?'):<11} {timing}  {_row_label(row)}"
        print(line, file=self._stream, flush=True)


class _Bar:
    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            console=Console(stderr=True))
        self._task = self.bar.add_task("starting", total=total)

    def start(self, label: str) -> None:
        self.bar.update(self._task, description=label)

    def done(self, row: dict[str, Any] | None = None) -> None:
        self.bar.advance(self._task)


@contextmanager
def progress(enabled: bool, total: int, stream: TextIO | None = None) -> Iterator[Progress]:
    """Progress of ``total`` steps on stderr: a bar in a terminal, lines elsewhere, or nothing."""
    stream = stream or sys.stderr
    if not enabled:
        yield _Silent()
    elif not stream.isatty():
        yield _Lines(total, stream)
    else:
        bar = _Bar(total)
        with bar.bar:
            yield bar


def step_hook(shown: Progress) -> tuple[Callable[[str], None], Callable[[], None]]:
    """For work that announces each step as it starts (calibration): ``step(label)`` and
    ``finish()``, counting a step done when the next one starts, and the last at ``finish``."""
    started: list[str] = []

    def step(label: str) -> None:
        if started:
            shown.done()
        started.append(label)
        shown.start(label)

    def finish() -> None:
        if started:
            shown.done()

    return step, finish

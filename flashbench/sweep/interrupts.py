"""Ctrl-C and SIGTERM during a sweep: stop after the current shape's backends, or abandon them at once."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["Interrupt"]


class Interrupt:
    """The user's wish to stop, as flags the sweep reads between cases and while it waits.

    The first Ctrl-C asks to stop after the current comparison group (the backends of one
    shape, timed together); a second Ctrl-C, SIGTERM (a job
    scheduler's "stop now") or SIGHUP (the terminal went away) abandons the current case. With
    ``raise_on_abandon`` (cases that run in this process, which no flag can reach) abandoning
    raises KeyboardInterrupt instead.
    Handlers are installed only in the main thread, where Python delivers signals.
    """

    def __init__(self, *, raise_on_abandon: bool = False):
        self.stop = False
        self.abandon = False
        self._raise = raise_on_abandon
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            # SIGHUP (the terminal or the ssh session closed) ends a sweep as SIGTERM does:
            # rows kept, the run marked interrupted, resumable.
            for sig, handler in ((signal.SIGINT, self._on_sigint),
                                 (signal.SIGTERM, self._on_sigterm),
                                 (signal.SIGHUP, self._on_sigterm)):
                self._previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _say(self, text: str) -> None:
        # os.write, not print: a handler may run while the main thread is inside a print.
        try:
            os.write(2, f"\n{text}\n".encode())
        except OSError:
            pass

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stop:
            self._abandon("interrupted again: abandoning the current case")
            return
        self.stop = True
        self._say("interrupted: stopping after the current shape's backends (Ctrl-C again "
                  "abandons them)")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self._abandon("terminated: abandoning the current case")

    def _abandon(self, text: str) -> None:
        self.abandon = True
        self._say(text)
        if self._raise:
            raise KeyboardInterrupt

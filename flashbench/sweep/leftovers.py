"""What a case left running in the worker: Python threads and processes it started and did not end.

A busy thread slows every later case in the same worker (it takes the GIL and a core), and a
child process may hold memory or the device; neither is the next case's to pay for. The worker
takes a ``snapshot()`` before each case and asks ``left_since`` after it; anything new and still
running makes the worker replace itself, which also kills its process group. Processes count
when they are the worker's children or in its process group (a daemon that forked away but
did not leave the group); one that started its own session escapes this, and the kill too.
Zombies do not count: they hold nothing. Threads are Python's (``threading.enumerate()``), not
the native pools of torch or OpenMP.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Snapshot", "left_since", "snapshot"]

_GRACE_S = 0.5  # a thread or a process that is just ending is not left behind


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[threading.Thread]  # held, so that no new thread can take an old one's id
    processes: frozenset[tuple[int, str]]  # (pid, start time): a reused pid is another process


def _processes() -> dict[tuple[int, str], str]:
    """The live processes that are this one's children or in its group: (pid, start) -> name."""
    me, group = os.getpid(), os.getpgrp()
    found = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc (not Linux): nothing to check
        return {}
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        name, _, rest = stat.partition(" (")[2].rpartition(") ")
        fields = rest.split()
        state, ppid, pgrp, start = fields[0], int(fields[1]), int(fields[2]), fields[19]
        if state not in ("Z", "X") and (ppid == me or pgrp == group):
            found[(int(entry), start)] = name
    return found


def snapshot() -> Snapshot:
    return Snapshot(frozenset(threading.enumerate()),
                    frozenset(_processes()))


def _new(before: Snapshot) -> tuple[list[threading.Thread], dict[tuple[int, str], str]]:
    threads = [t for t in threading.enumerate() if t not in before.threads and t.is_alive()]
    processes = {k: v for k, v in _processes().items() if k not in before.processes}
    return threads, processes


def left_since(before: Snapshot) -> list[str]:
    """One warning per kind of thing started since ``before`` and still running; [] if none."""
    threads, processes = _new(before)
    deadline = time.monotonic() + _GRACE_S
    while (threads or processes) and time.monotonic() < deadline:
        time.sleep(0.05)
        threads, processes = _new(before)
    warnings = []
    if threads:
        names = ", ".join(t.name for t in threads[:5])
        warnings.append(f"left {len(threads)} thread{'s' * (len(threads) > 1)} running "
                        f"({names}); worker replaced")
    if processes:
        names = ", ".join(f"pid {pid}: {name}" for (pid, _), name in list(processes.items())[:5])
        warnings.append(f"left {len(processes)} process{'es' * (len(processes) > 1)} running "
                        f"({names}); worker replaced")
    return warnings

"""How busy the machine was around a sweep: load averages before and after, and whether they
make its timings suspect.

The rule (``busy_note``): a sweep keeps ``threads`` CPUs busy (a CPU worker its torch threads,
a GPU worker the one thread that launches kernels), which leaves ``cpus - threads`` to
everything else. Other work beyond that takes CPU time from the sweep's threads. The 1-minute
load average before the sweep is that other work; after it, the sweep's own threads are in it
too, at most ``threads`` of it, so they are taken off (for a sweep shorter than a minute this
takes off more than they added, and errs towards no warning). An idle machine's load average
sits at a few tenths (daemons, flashbench's own parent process), hence half a CPU of slack.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["BUSY_SLACK", "busy_note", "load_average", "sweep_threads"]

BUSY_SLACK = 0.5  # CPUs of other load tolerated beyond those the sweep leaves free


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages now, or None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no getloadavg; a container may refuse it
        return None


def sweep_threads(meta: dict[str, Any]) -> int:
    """The CPUs a run's workers keep busy while they measure."""
    env = meta.get("environment") or {}
    workers = len(meta["devices"]) if isinstance(meta.get("devices"), list) else 1
    threads = env.get("torch_threads") if str(env.get("device", "")).startswith("cpu") else 1
    return workers * (threads if isinstance(threads, int) and threads > 0 else 1)


def _first(load: Any) -> float | None:
    if isinstance(load, list) and load and isinstance(load[0], (int, float)):
        return float(load[0])
    return None


def busy_note(meta: dict[str, Any], session: dict[str, Any] | None = None) -> str | None:
    """One line saying the timings may be unreliable and why, when the machine was busy
    before or during the sweep (the module's rule); None otherwise, or without load figures.

    ``session`` is where the figures are (a resumed session's entry); the run's meta by default.
    """
    where = meta if session is None else session
    before, after = _first(where.get("load_before")), _first(where.get("load_after"))
    env = meta.get("environment") or {}
    cpus = env.get("cpu_count") if isinstance(env.get("cpu_count"), int) else os.cpu_count()
    if not cpus:
        return None
    threads = sweep_threads(meta)
    spare = cpus - threads
    others = [x for x in (before, None if after is None else after - threads) if x is not None]
    if not others or max(others) <= spare + BUSY_SLACK:
        return None
    figures = ", ".join(f"{x:g} {when}" for x, when in ((before, "before the sweep"),
                                                       (after, "after it")) if x is not None)
    return (f"warning: timings may be unreliable: the machine was busy (1-minute load average "
            f"{figures}, on {cpus} CPUs of which the sweep's threads take {threads})")

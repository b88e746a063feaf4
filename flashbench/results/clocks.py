"""What a run's rows say about the card's clocks: the run's median SM clock, and which cases strayed from it."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["CLOCK_DEVIATION", "off_clock", "run_clock", "telemetry_notes"]

# A case whose median SM clock differs from the run's median clock by more than this share is
# marked: its time is not comparable with its neighbours' (a boost that ended, a power cap).
CLOCK_DEVIATION = 0.03


def run_clock(rows: list[dict[str, Any]]) -> float | None:
    """The median SM clock of a run's cases, or None without telemetry."""
    clocks = [r["sm_clock_mhz"] for r in rows if r.get("sm_clock_mhz")]
    return statistics.median(clocks) if clocks else None


def off_clock(row: dict[str, Any], clock: float | None) -> bool:
    """Whether a case throttled or ran at a clock more than CLOCK_DEVIATION from ``clock``."""
    if row.get("throttle"):
        return True
    sm = row.get("sm_clock_mhz")
    return bool(sm and clock and abs(sm - clock) / clock > CLOCK_DEVIATION)


def telemetry_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per throttle reason seen and one for clocks off the run's median, if any."""
    clock = run_clock(rows)
    notes: list[str] = []
    reasons: dict[str, int] = {}
    for r in rows:
        for name in filter(None, (r.get("throttle") or "").split(";")):
            reasons[name] = reasons.get(name, 0) + 1
    notes += [f"telemetry: {n} case(s) saw {name}" for name, n in sorted(reasons.items())]
    stray = [r for r in rows if not r.get("throttle") and off_clock(r, clock)]
    if stray:
        clocks = sorted(r["sm_clock_mhz"] for r in stray)
        notes.append(f"telemetry: {len(stray)} case(s) ran at an SM clock more than "
                     f"{CLOCK_DEVIATION:.0%} off the run's median {clock:.0f} MHz "
                     f"({clocks[0]:.0f}–{clocks[-1]:.0f} MHz)")
    return notes

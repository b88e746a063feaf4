"""What a run's rows say about the card's clocks: the run's median SM clock, and which cases strayed from it."""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["CLOCK_DEVIATION", "clock_moved", "clocks_differ", "off_clock", "run_clock",
           "telemetry_notes"]

# A case whose median SM clock differs from the run's median clock by more than this share, or
# whose clock moved by more than this share while it was sampled, is marked: its time is not
# comparable with its neighbours' (a boost that ended, a power cap biting mid-case).
CLOCK_DEVIATION = 0.03
# Reasons that slow a card beyond what its clock reading shows (or that are faults); the power
# cap is not among them: a card at its cap runs at the clock NVML reports, which is checked.
_SLOWING = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
            "hw_power_brake_slowdown")


def run_clock(rows: list[dict[str, Any]]) -> float | None:
    """The median SM clock of a run's cases, or None without telemetry."""
    clocks = [r["sm_clock_mhz"] for r in rows if r.get("sm_clock_mhz")]
    return statistics.median(clocks) if clocks else None


def clock_moved(row: dict[str, Any]) -> bool:
    """Whether the SM clock moved by more than CLOCK_DEVIATION while the case was sampled."""
    low, high = row.get("sm_clock_min_mhz"), row.get("sm_clock_max_mhz")
    return bool(low and high and (high - low) / high > CLOCK_DEVIATION)


def clocks_differ(base_mhz: float | None, current_mhz: float | None) -> bool:
    """Whether two cases' median SM clocks differ by more than CLOCK_DEVIATION (of the higher,
    as clock_moved measures a range); False when either is unknown (no telemetry)."""
    if not (base_mhz and current_mhz):
        return False
    return abs(current_mhz - base_mhz) / max(base_mhz, current_mhz) > CLOCK_DEVIATION


def off_clock(row: dict[str, Any], clock: float | None) -> bool:
    """Whether a case's timing is suspect by its clock: a thermal or hardware slowdown, its
    clock moving while sampled, or its median clock more than CLOCK_DEVIATION from ``clock``."""
    reasons = (row.get("throttle") or "").split(";")
    if any(r in _SLOWING or r.startswith("unknown") for r in reasons):
        return True
    if clock_moved(row):
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
    moved = [r for r in rows if clock_moved(r)]
    if moved:
        notes.append(f"telemetry: {len(moved)} case(s) saw the SM clock move by more than "
                     f"{CLOCK_DEVIATION:.0%} while sampled (marked !)")
    stray = [r for r in rows if not clock_moved(r) and r.get("sm_clock_mhz") and clock
             and abs(r["sm_clock_mhz"] - clock) / clock > CLOCK_DEVIATION]
    if stray:
        clocks = sorted(r["sm_clock_mhz"] for r in stray)
        notes.append(f"telemetry: {len(stray)} case(s) ran at an SM clock more than "
                     f"{CLOCK_DEVIATION:.0%} off the run's median {clock:.0f} MHz "
                     f"({clocks[0]:.0f}–{clocks[-1]:.0f} MHz)")
    return notes

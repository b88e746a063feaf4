"""A finished (or stopped) sweep as the user reads it: the table, the notes, the last line, the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashbench.core.cases import FAILED, RunStatus
from flashbench.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from flashbench.core.load import busy_note
from flashbench.output.fit import Grid
from flashbench.output.tables import failure_notes, sweep_table
from flashbench.results.clocks import telemetry_notes

__all__ = ["SweepSummary", "summarize_sweep"]


@dataclass
class SweepSummary:
    table: Grid | None  # for stdout
    notes: list[str] = field(default_factory=list)  # for stderr, in order
    exit_code: int = EXIT_OK


def summarize_sweep(run_dir: Any, rows: list[dict[str, Any]], meta: dict[str, Any],
                    measured: int, *, strict: bool, resumed: bool) -> SweepSummary:
    """What ``flashbench run`` prints after a sweep, and the exit code the README promises."""
    env = meta["environment"]
    where = env.get("gpu_name") or f"CPU ({env.get('cpu')})"
    name = meta["config"].get("name", "custom")
    table = sweep_table(rows, title=f"flashbench {name} on {where}") if rows else None
    notes = failure_notes(rows) + telemetry_notes(rows)
    # This session's load (a resumed session's figures are in its own entry); a resume that
    # measured nothing has none.
    busy = busy_note(meta, meta["resumed"][-1] if resumed and meta.get("resumed") else None)
    if busy and measured:
        notes.append(busy)
    if env.get("gpu_uuid") and not env.get("ceilings"):
        notes.append("note: this GPU is not calibrated; `flashbench calibrate` measures its "
                     "ceilings, and later runs report pct_peak_flops and pct_peak_bw")
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no rows"
    if meta["status"] == RunStatus.INTERRUPTED:
        left = meta["n_cases"] - len(rows)
        notes.append(f"results: {run_dir} ({tally}); interrupted with {left} case(s) to go: "
                     f"flashbench run --resume {run_dir}")
        return SweepSummary(table, notes, EXIT_INTERRUPTED)
    if resumed and measured == 0:
        notes.append(f"nothing to resume: every case of {run_dir} has a row")
    notes.append(f"results: {run_dir} ({tally})")
    failed = strict and any(r["status"] in FAILED for r in rows)
    return SweepSummary(table, notes, EXIT_FAILED if failed else EXIT_OK)

"""``compare`` and ``check`` as the user reads them: backends side by side, or two runs side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flashbench.core.errors import UserError
from flashbench.output.fit import Grid
from flashbench.output.report import render_comparison
from flashbench.output.tables import (backends_display, fixed_shape, legend, runs_display,
                                      to_grid)
from flashbench.results.check import CheckResult, parse_threshold
from flashbench.results.compare import compare_backends, compare_runs
from flashbench.results.modes import mixed_notes
from flashbench.results.reading import load_run

__all__ = ["Comparison", "check_grid", "comparison"]


@dataclass
class Comparison:
    frame: pd.DataFrame  # the numbers (CSV and JSON give these)
    display: pd.DataFrame  # the same as display strings (tables and Markdown)
    title: str
    caption: str
    by_backend: bool  # backends side by side (grouped columns) rather than two runs
    notes: list[str] = field(default_factory=list)  # also in the caption; stderr for CSV, JSON
    # Markdown has room for more columns than a terminal: its own display and caption.
    markdown: tuple[pd.DataFrame, str] | None = None

    def grid(self) -> Grid:
        return to_grid(self.display, self.title, self.caption, by_backend=self.by_backend)

    def text(self, fmt: str) -> str:
        display, caption = self.markdown or (self.display, self.caption)
        return render_comparison(self.frame, display, self.title, caption, fmt)


def comparison(runs: list[str], root: Path, *, baseline_backend: str | None = None,
               threshold: str = "5%", allow_mixed: bool = False) -> Comparison:
    """One run (or the latest under ``root``): its backends side by side, with speedups over
    the baseline. Two runs: the same cases side by side, with ratios and verdicts; runs timed
    differently (timer, L2 mode, matmul precision) are refused unless ``allow_mixed``."""
    if len(runs) > 2:
        raise UserError(f"compare takes one or two runs, got {len(runs)}")
    if len(runs) == 2:
        (a_rows, _, a_path), (b_rows, _, b_path) = (load_run(r, root) for r in runs)
        limit = parse_threshold(threshold)
        notes = mixed_notes(a_rows, b_rows, allow_mixed=allow_mixed)
        frame = compare_runs(a_rows, b_rows, threshold=limit)
        caption = " · ".join(["verdicts as in flashbench check",
                              *(f"{n} (compared anyway: --allow-mixed)" for n in notes)])
        return Comparison(frame, runs_display(frame),
                          f"{b_path} against {a_path} (ratio = B/A, >1: B slower)",
                          caption, by_backend=False, notes=notes)
    rows, _, path = load_run(runs[0] if runs else None, root)
    present = sorted({r["backend"] for r in rows})
    if baseline_backend is not None and baseline_backend not in present:
        raise UserError(f"--baseline-backend: {baseline_backend!r} is not in {path}; "
                        f"backends there: {', '.join(present)}")
    frame = compare_backends(rows, baseline_backend)
    display = backends_display(frame)
    wide = backends_display(frame, intervals=True)
    return Comparison(frame, display, f"{path}: {fixed_shape(frame)}", legend(display),
                      by_backend=True, markdown=(wide, legend(wide)))


def check_grid(result: CheckResult) -> Grid | None:
    """The cases whose verdict is not ``unchanged``, as a table; None when there are none."""
    notable = result.frame[result.frame["verdict"] != "unchanged"]
    if notable.empty:
        return None
    return to_grid(runs_display(notable), f"{result.current} against {result.baseline}")

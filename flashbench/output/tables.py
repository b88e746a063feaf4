"""Rows as tables: a flat pandas frame, and the Rich sweep table (cases down, backends across)."""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
from rich.text import Text

from flashbench.core.cases import CASE_FIELDS
from flashbench.output.fit import Column, Grid
from flashbench.measure.telemetry import off_clock, run_clock

__all__ = ["failure_notes", "format_bytes", "format_ms", "format_number", "results_frame",
           "shape_label", "sweep_table", "varying_shape_fields"]

_SHAPE_FIELDS = tuple(f for f in CASE_FIELDS if f != "backend")
_STATUS_MARK = {"unsupported": ("n/a", "dim"), "oom": ("OOM", "bold red"),
                "error": ("error", "bold red"), "timeout": ("timeout", "bold red"),
                "crash": ("crash", "bold red")}


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per result, every field flat (raw samples as a ';'-joined string)."""
    frame = pd.DataFrame(list(rows))
    if "samples_ms" in frame:
        frame["samples_ms"] = frame["samples_ms"].map(
            lambda s: ";".join(f"{x:.6g}" for x in s) if isinstance(s, list) else s)
    return frame


def format_bytes(n: float | None) -> str:
    """Compact binary units for table cells: 512K, 16.5M, 74.3G."""
    if n is None or pd.isna(n):
        return "–"
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


def format_number(value: float | None) -> str:
    """Three significant digits, grouped thousands: 612, 45.3, 0.0123."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def shape_label(field: str, value: Any) -> str:
    """A shape value as a table shows it (causal as causal/full)."""
    if field == "causal":
        return "causal" if value else "full"
    return str(value)


def varying_shape_fields(rows: list[dict[str, Any]]) -> list[str]:
    """Shape fields that differ between rows; kv_len and kv_heads only where they differ
    from seq_len and heads (otherwise they repeat those columns)."""
    varying = [f for f in _SHAPE_FIELDS if len({r[f] for r in rows}) > 1]
    for derived, base in (("kv_len", "seq_len"), ("kv_heads", "heads")):
        if derived in varying and all(r[derived] == r[base] for r in rows):
            varying.remove(derived)
    return varying


def sweep_table(rows: list[dict[str, Any]], title: str = "flashbench") -> Grid:
    """Cases down, backends across (median ms, TFLOP/s, GB/s, peak memory); fastest marked *."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fixed = [f for f in _SHAPE_FIELDS if len({r[f] for r in rows}) == 1]
    varying = varying_shape_fields(rows)
    # Peak memory is a CUDA allocator figure: no column where no row has it (a CPU run).
    metrics = [("ms", None), ("TFLOP/s", "tflops"), ("GB/s", "gbps"), ("mem", "peak_alloc_bytes")]
    metrics = [(label, key) for label, key in metrics
               if key is None or any(r.get(key) is not None for r in rows)]
    subtitle = " ".join(f"{f}={shape_label(f, rows[0][f])}" for f in fixed)

    clock = run_clock(rows)
    by_shape: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_shape.setdefault(tuple(r[f] for f in _SHAPE_FIELDS), {})[r["backend"]] = r
    keys = [Column(f, [], style="cyan") for f in varying]
    groups = [(b, [Column(label, []) for label, _ in metrics]) for b in backends]
    seen = set()
    for key, cells in by_shape.items():
        shape = dict(zip(_SHAPE_FIELDS, key))
        timed = [r["median_ms"] for r in cells.values() if r["status"] == "ok"]
        # The fastest is marked only where there is a choice.
        fastest = min(timed) if len(timed) > 1 else None
        for col, f in zip(keys, varying):
            col.cells.append(shape_label(f, shape[f]))
        for b, cols in groups:
            r = cells.get(b)
            line: list[Text | str] = [""] * len(metrics)
            if r is not None and r["status"] in ("ok", "mismatch"):
                marks = ("*" if r["median_ms"] == fastest else "") \
                    + ("!" if off_clock(r, clock) else "") \
                    + (" ✗" if r["status"] == "mismatch" else "")
                seen.update(m for m in ("*", "!", "✗") if m in marks)
                style = "bold red" if r["status"] == "mismatch" else \
                    "bold green" if r["median_ms"] == fastest else ""
                values = {"tflops": format_number(r["tflops"]), "gbps": format_number(r["gbps"]),
                          "peak_alloc_bytes": format_bytes(r["peak_alloc_bytes"])}
                line = [Text(format_ms(r["median_ms"]) + marks, style=style),
                        *(values[k] for _, k in metrics[1:])]
            elif r is not None:
                text, style = _STATUS_MARK.get(r["status"], (r["status"], "red"))
                line[0] = Text(text, style=style)
            for col, cell in zip(cols, line):
                col.cells.append(cell)
    legend = ["ms: median latency"]
    if any(label == "mem" for label, _ in metrics):
        legend.append("mem: peak allocated beyond the inputs (binary units)")
    legend += [text for mark, text in (("*", "* fastest"), ("✗", "✗ result outside tolerance"),
                                       ("!", "! throttled or SM clock off the run's median"))
               if mark in seen]
    return Grid(f"{title}\n{subtitle}" if subtitle else title, keys, groups,
                caption=" · ".join(legend))


def failure_notes(rows: list[dict[str, Any]], limit: int = 12) -> list[str]:
    """One line per distinct (backend, status, reason) of rows that did not pass."""
    seen: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if r["status"] != "ok":
            key = (r["backend"], r["status"], r.get("error") or "")
            seen[key] = seen.get(key, 0) + 1
    notes = [f"{b} {s} ×{n}: {e[:160]}" for (b, s, e), n in seen.items()]
    return notes[:limit] + ([f"… and {len(notes) - limit} more"] if len(notes) > limit else [])

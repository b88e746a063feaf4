"""Rows as tables: the flat frame, the sweep table, the comparison tables, and Markdown.

Every table is built as data here (a ``Grid``, or a frame of display strings); flashbench.output.fit
fits a Grid to the terminal. Cells carry the same marks everywhere: ``*`` fastest, ``~`` noisy,
``!`` throttled or off the run's clock, ``†`` fp32 multiplied in TF32, ``✗`` result outside
tolerance; a speedup, ``±`` when its interval is wide.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
from rich.text import Text

from flashbench.core.cases import NEWER_CASE_FIELDS, SHAPE_FIELDS, Status
from flashbench.core.rows import by_shape
from flashbench.output.fit import Column, Grid
from flashbench.output.formats import (binary_size, is_missing, milliseconds, number,
                                       shape_value, slowdown, speedup)
from flashbench.results.clocks import off_clock, run_clock
from flashbench.results.compare import WIDE_SPEEDUP_INTERVAL

__all__ = ["SHAPE_FIELDS", "backends_display", "failure_notes", "fixed_shape", "key_columns",
           "legend", "markdown_table", "results_frame", "runs_display", "sweep_table",
           "to_grid", "varying_shape_fields"]

FASTEST, NOISY, THROTTLED, TF32, MISMATCH, WIDE = "*", "~", "!", "†", "✗", "±"
# A TF32 row's error is 2-3 orders above an IEEE fp32 one's, and its time is a tensor-core
# time: a reader comparing fp32 cells must see which were which.
_MARK_TEXT = ((FASTEST, "* fastest"), (NOISY, "~ noisy (IQR/median > 5%)"),
              (THROTTLED, "! throttled or SM clock off the run's median"),
              (TF32, "† fp32 products in TF32 (relative error ~1e-3)"),
              (MISMATCH, "✗ result outside tolerance"),
              (WIDE, f"± speedup's 95% interval wider than {WIDE_SPEEDUP_INTERVAL:.0%} of it"))
_STATUS_MARK = {Status.UNSUPPORTED: ("n/a", "dim"), Status.OOM: ("OOM", "bold red"),
                Status.ERROR: ("error", "bold red"), Status.TIMEOUT: ("timeout", "bold red"),
                Status.CRASH: ("crash", "bold red")}
_VERDICT_STYLE = {"regression": "bold red", "status-regression": "bold red", "missing": "red",
                  "improvement": "bold green", "status-improvement": "green", "new": "cyan",
                  "undetectable": "yellow"}


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per result, every field flat (raw samples, warnings as joined strings)."""
    frame = pd.DataFrame(list(rows))
    if "samples_ms" in frame:
        frame["samples_ms"] = frame["samples_ms"].map(
            lambda s: ";".join(f"{x:.6g}" for x in s) if isinstance(s, list) else s)
    if "warnings" in frame:
        frame["warnings"] = frame["warnings"].map(
            lambda w: "; ".join(w) if isinstance(w, list) else w)
    return frame


def varying_shape_fields(rows: list[dict[str, Any]]) -> list[str]:
    """Shape fields that differ between rows; kv_len and kv_heads only where they differ
    from seq_len and heads (otherwise they repeat those columns)."""
    varying = [f for f in SHAPE_FIELDS
               if len({None if is_missing(r.get(f)) else r.get(f) for r in rows}) > 1]
    for derived, base in (("kv_len", "seq_len"), ("kv_heads", "heads")):
        if derived in varying and all(r[derived] == r[base] for r in rows):
            varying.remove(derived)
    return varying


def _legend(marks: Iterable[str], extra: Iterable[str] = ()) -> str:
    shown = set(marks)
    return " · ".join([*extra, *(text for mark, text in _MARK_TEXT if mark in shown)])


def _ms_cell(median: float, marks: str) -> Text:
    style = "bold red" if MISMATCH in marks else "bold green" if FASTEST in marks else ""
    return Text(milliseconds(median) + marks.replace(MISMATCH, f" {MISMATCH}"), style=style)


def _sweep_cells(r: dict[str, Any] | None, fastest: float | None, clock: float | None,
                 metrics: list[tuple[str, str | None]], seen: set[str]) -> list[Text | str]:
    """One backend's cells of one case: ms with its marks, then the rates."""
    line: list[Text | str] = [""] * len(metrics)
    if r is None:
        return line
    if r["status"] not in (Status.OK, Status.MISMATCH):
        text, style = _STATUS_MARK.get(r["status"], (r["status"], "red"))
        line[0] = Text(text, style=style)
        return line
    marks = (FASTEST if r["median_ms"] == fastest else "") \
        + (THROTTLED if off_clock(r, clock) else "") \
        + (TF32 if r.get("matmul_precision") == "tf32" else "") \
        + (MISMATCH if r["status"] == Status.MISMATCH else "")
    seen.update(marks)
    values = {"tflops": number(r["tflops"], missing="–"),
              "gbps": number(r["gbps"], missing="–"),
              "peak_alloc_bytes": binary_size(r["peak_alloc_bytes"], compact=True, missing="–")}
    return [_ms_cell(r["median_ms"], marks), *(values[k] for _, k in metrics[1:] if k)]


def sweep_table(rows: list[dict[str, Any]], title: str = "flashbench") -> Grid:
    """Cases down, backends across (median ms, TFLOP/s, GB/s, peak memory); fastest marked *."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    varying = varying_shape_fields(rows)
    # Peak memory is a CUDA allocator figure: no column where no row has it (a CPU run).
    metrics = [(label, key) for label, key in (("ms", None), ("TFLOP/s", "tflops"),
                                               ("GB/s", "gbps"), ("mem", "peak_alloc_bytes"))
               if key is None or any(r.get(key) is not None for r in rows)]
    clock = run_clock(rows)
    keys = [Column(f, [], style="cyan") for f in varying]
    groups = [(b, [Column(label, []) for label, _ in metrics]) for b in backends]
    seen: set[str] = set()
    for key, cells in by_shape(rows).items():
        shape = dict(zip(SHAPE_FIELDS, key))
        timed = [r["median_ms"] for r in cells.values() if r["status"] == Status.OK]
        fastest = min(timed) if len(timed) > 1 else None  # marked only where there is a choice
        for col, f in zip(keys, varying):
            col.cells.append(shape_value(f, shape[f]))
        for b, cols in groups:
            for col, cell in zip(cols, _sweep_cells(cells.get(b), fastest, clock, metrics, seen)):
                col.cells.append(cell)
    fixed = " ".join(f"{f}={shape_value(f, rows[0].get(f))}" for f in SHAPE_FIELDS
                     if len({r.get(f) for r in rows}) == 1 and not is_missing(rows[0].get(f)))
    memory = ["mem: peak allocated beyond the inputs (binary units)"] \
        if any(label == "mem" for label, _ in metrics) else []
    return Grid(f"{title}\n{fixed}" if fixed else title, keys, groups,
                caption=_legend(seen, ["ms: median latency", *memory]))


def failure_notes(rows: list[dict[str, Any]], limit: int = 12) -> list[str]:
    """One line per distinct (backend, status, reason) of rows that did not pass."""
    seen: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if r["status"] != Status.OK:
            key = (r["backend"], str(r["status"]), r.get("error") or "")
            seen[key] = seen.get(key, 0) + 1
    notes = [f"{b} {s} ×{n}: {e[:160]}" for (b, s, e), n in seen.items()]
    return notes[:limit] + ([f"… and {len(notes) - limit} more"] if len(notes) > limit else [])


def _shape_cell(field: str, value: Any) -> str:
    return shape_value(field, value) if field in _TEXT_FIELDS else number(value)


# Shape fields shown as words, not numbers: the mask, and the fields a dense case leaves unset.
_TEXT_FIELDS = ("causal", *NEWER_CASE_FIELDS)


def _varying_shape(frame: pd.DataFrame) -> list[str]:
    fields = [f for f in SHAPE_FIELDS if f in frame]
    return varying_shape_fields(frame[fields].to_dict("records")) or ["seq_len"]


def fixed_shape(frame: pd.DataFrame) -> str:
    """The shape fields that are the same in every row, as one line (a mask or layout field
    no row sets is left out)."""
    return " ".join(f"{f}={shape_value(f, frame[f].iloc[0])}" for f in SHAPE_FIELDS
                    if f in frame and frame[f].nunique() == 1
                    and not is_missing(frame[f].iloc[0]))


def _backend_ms(r: pd.Series, b: str) -> str:
    status, median = r[f"{b}:status"], r[f"{b}:median_ms"]
    if is_missing(status):
        return ""
    if is_missing(median):
        return str(status)
    marks = (FASTEST if r["fastest"] == b else "") + (NOISY if r[f"{b}:noisy"] else "") \
        + (THROTTLED if r[f"{b}:throttled"] else "") + (TF32 if r.get(f"{b}:tf32") else "")
    return milliseconds(median) + marks + (f" {MISMATCH}" if status == Status.MISMATCH else "")


def _speedup_cell(r: pd.Series, b: str) -> str:
    value = r[f"{b}:speedup"]
    return speedup(value) + (WIDE if not is_missing(value) and r.get(f"{b}:wide") else "")


def _interval_cell(r: pd.Series, b: str) -> str:
    low, high = r.get(f"{b}:speedup_low"), r.get(f"{b}:speedup_high")
    return "" if is_missing(low) or is_missing(high) else f"[{speedup(low)}, {speedup(high)}]"


def backends_display(frame: pd.DataFrame, *, intervals: bool = False) -> pd.DataFrame:
    """compare_backends' frame as strings: per backend ms (with marks), TFLOP/s and speedup
    (``±`` where its interval is wide), and with ``intervals`` the speedup's 95% interval."""
    backends = [c.removesuffix(":status") for c in frame.columns if c.endswith(":status")]
    out = pd.DataFrame({f: frame[f].map(lambda v, f=f: _shape_cell(f, v))
                        for f in _varying_shape(frame)})
    baselines = frame["baseline"].fillna("")
    if baselines.nunique() > 1:  # one baseline for every case is said once, in the caption
        out["baseline"] = baselines
    else:
        out.attrs["baseline"] = baselines.iloc[0] if len(baselines) else ""
    for b in backends:
        out[f"{b} ms"] = [_backend_ms(r, b) for _, r in frame.iterrows()]
        out[f"{b} TFLOP/s"] = frame[f"{b}:tflops"].map(number)
        out[f"{b} ×"] = [_speedup_cell(r, b) for _, r in frame.iterrows()]
        if intervals:
            out[f"{b} × 95%"] = [_interval_cell(r, b) for _, r in frame.iterrows()]
    return out


def legend(display: pd.DataFrame) -> str:
    """The caption of a backends_display frame: the marks it uses, and the speedup column."""
    cells = [str(v).split(" ")[0] for c in display.columns if c.endswith(" ms")
             for v in display[c]]
    marks = {m for m, _ in _MARK_TEXT if m != WIDE and any(m in c for c in cells)}
    if any(str(v).endswith(WIDE) for c in display.columns if c.endswith(" ×")
           for v in display[c]):
        marks.add(WIDE)
    if any(str(v).endswith(MISMATCH) for c in display.columns if c.endswith(" ms")
           for v in display[c]):
        marks.add(MISMATCH)
    baseline = display.attrs.get("baseline")
    tail = f"×: speedup over {baseline} (higher is faster)" if baseline else \
        "×: speedup over the baseline (higher is faster)" if "baseline" in display else \
        "×: no baseline ran"
    interval = "× 95%: the speedup's bootstrap interval, paired by round where the sweep " \
        "interleaved the backends" if any(c.endswith(" × 95%") for c in display.columns) else ""
    return " · ".join(filter(None, [_legend(marks), tail, interval]))


def runs_display(frame: pd.DataFrame) -> pd.DataFrame:
    """compare_runs' frame as strings: medians, ratio with its interval, verdict."""
    cols = [f for f in ("backend", *_varying_shape(frame)) if f in frame]
    out = pd.DataFrame({f: frame[f].map(lambda v, f=f: _shape_cell(f, v))
                        for f in dict.fromkeys(cols)})
    out["baseline ms"] = frame["base_median_ms"].map(milliseconds)
    out["current ms"] = frame["current_median_ms"].map(milliseconds)
    out["ratio [99% CI]"] = [
        "" if is_missing(r) else f"{r:.3f} [{lo:.3f}, {hi:.3f}]"
        for r, lo, hi in zip(frame["ratio"], frame["ci_low"], frame["ci_high"])]
    out["detectable"] = frame["detectable"].map(slowdown)
    out["samples"] = ["" if is_missing(d) else f"{a}/{b}" for d, a, b in
                      zip(frame["detectable"], frame["base_n"], frame["current_n"])]
    out["status"] = [a if a == b else f"{a} → {b}" for a, b in
                     zip(frame["base_status"].fillna("—"), frame["current_status"].fillna("—"))]
    out["verdict"] = frame["verdict"]
    return out


def _styled(col: str, value: Any) -> Text:
    text = str(value)
    style = ""
    if col == "verdict":
        style = _VERDICT_STYLE.get(text, "")
    elif col.endswith("ms") and MISMATCH in text:
        style = "bold red"
    elif col.endswith("ms") and text.split(" ")[0].rstrip(NOISY + THROTTLED + TF32).endswith(
            FASTEST):
        style = "bold green"
    elif col.endswith("ms") and text and not text[0].isdigit():
        style = "dim" if text == Status.UNSUPPORTED else "red"
    return Text(text, style=style)


def key_columns(display: pd.DataFrame) -> int:
    """How many leading columns of a display frame name the case (backend, shape, baseline)."""
    keys = 0
    for name in display.columns:
        if name not in ("backend", "baseline", *SHAPE_FIELDS):
            break
        keys += 1
    return keys


def to_grid(display: pd.DataFrame, title: str, caption: str = "", *,
            by_backend: bool = False) -> Grid:
    """A display frame as a Grid: its leading case columns are the keys; the rest are values,
    grouped per backend (columns named ``"<backend> <metric>"``) when ``by_backend``."""
    def column(name: str, header: str) -> Column:
        return Column(header, [_styled(name, v) for v in display[name]])

    names = list(display.columns)
    keys = key_columns(display)
    groups: list[tuple[str, list[Column]]] = []
    for name in names[keys:]:
        # Two-word headers on two lines ("baseline" over "ms"): narrower columns.
        group, header = name.split(" ", 1) if by_backend else ("", name.replace(" ", "\n", 1))
        if not groups or groups[-1][0] != group:
            groups.append((group, []))
        groups[-1][1].append(column(name, header))
    return Grid(title, [column(n, n) for n in names[:keys]], groups, caption=caption)


def markdown_table(display: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in display.columns) + " |"
    rule = "| " + " | ".join("---" for _ in display.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in display.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"

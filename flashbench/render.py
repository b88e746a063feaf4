"""Comparison frames as text: Rich tables for a terminal, Markdown for CI summaries and reports."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from flashbench.compare import SHAPE_FIELDS
from flashbench.table import shape_label, varying_shape_fields

__all__ = ["LEGEND", "backends_display", "fixed_shape", "format_cell", "markdown_table",
           "runs_display", "to_rich"]

# Cell marks, explained in every table's caption.
FASTEST, NOISY, THROTTLED = "*", "~", "!"
LEGEND = (f"{FASTEST} fastest · {NOISY} noisy (IQR/median > 5%) · {THROTTLED} throttled or "
          "clock off the run's median · ×: speedup over the baseline (higher is faster)")


def format_cell(x: Any, digits: int = 3) -> str:
    """A table cell: empty for missing, grouped thousands from 1000, else ``digits`` significant."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return ""
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
    return str(x)


def _shape_cell(field: str, value: Any) -> str:
    return shape_label(field, value) if field == "causal" else format_cell(value)


def _varying_shape(frame: pd.DataFrame) -> list[str]:
    fields = [f for f in SHAPE_FIELDS if f in frame]
    return varying_shape_fields(frame[fields].to_dict("records")) or ["seq_len"]


def fixed_shape(frame: pd.DataFrame) -> str:
    """The shape fields that are the same in every row, as one line."""
    return " ".join(f"{f}={frame[f].iloc[0]}" for f in SHAPE_FIELDS
                    if f in frame and frame[f].nunique() == 1)


def backends_display(frame: pd.DataFrame) -> pd.DataFrame:
    """compare_backends' frame as strings: per backend ms (with marks), TFLOP/s and speedup."""
    backends = [c.removesuffix(":status") for c in frame.columns if c.endswith(":status")]
    out = pd.DataFrame({f: frame[f].map(lambda v, f=f: _shape_cell(f, v))
                        for f in _varying_shape(frame)})
    out["baseline"] = frame["baseline"].fillna("")
    for b in backends:
        ms = []
        for _, r in frame.iterrows():
            status, median = r[f"{b}:status"], r[f"{b}:median_ms"]
            if status is None or (isinstance(status, float) and pd.isna(status)):
                ms.append("")
                continue
            if pd.isna(median):
                ms.append(status)
                continue
            mark = (FASTEST if r["fastest"] == b else "") + (NOISY if r[f"{b}:noisy"] else "") \
                + (THROTTLED if r[f"{b}:throttled"] else "")
            ms.append(format_cell(median, 4) + mark + (" mismatch" if status == "mismatch" else ""))
        out[f"{b} ms"] = ms
        out[f"{b} TFLOP/s"] = frame[f"{b}:tflops"].map(format_cell)
        out[f"{b} ×"] = frame[f"{b}:speedup"].map(lambda x: "" if pd.isna(x) else f"{x:.2f}")
    return out


def runs_display(frame: pd.DataFrame) -> pd.DataFrame:
    """compare_runs' frame as strings: medians, ratio with its interval, verdict."""
    cols = [f for f in ("backend", *_varying_shape(frame)) if f in frame]
    out = pd.DataFrame({f: frame[f].map(lambda v, f=f: _shape_cell(f, v))
                        for f in dict.fromkeys(cols)})
    out["baseline ms"] = frame["base_median_ms"].map(lambda x: format_cell(x, 4))
    out["current ms"] = frame["current_median_ms"].map(lambda x: format_cell(x, 4))
    out["ratio [99% CI]"] = [
        "" if pd.isna(r) else f"{r:.3f} [{lo:.3f}, {hi:.3f}]"
        for r, lo, hi in zip(frame["ratio"], frame["ci_low"], frame["ci_high"])]
    out["status"] = [a if a == b else f"{a} → {b}" for a, b in
                     zip(frame["base_status"].fillna("—"), frame["current_status"].fillna("—"))]
    out["verdict"] = frame["verdict"]
    return out


_VERDICT_STYLE = {"regression": "bold red", "status-regression": "bold red", "missing": "red",
                  "improvement": "bold green", "status-improvement": "green", "new": "cyan"}


def to_rich(display: pd.DataFrame, title: str, caption: str = "") -> Table:
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for col in display.columns:
        table.add_column(col.replace(" ", "\n", 1) if " " in col else col, justify="right")
    for _, row in display.iterrows():
        cells = []
        for col, value in row.items():
            style = ""
            if col == "verdict":
                style = _VERDICT_STYLE.get(value, "")
            elif col.endswith(" ms") and str(value).split(" ")[0].endswith(FASTEST):
                style = "bold green"
            elif col.endswith(" ms") and value and not value[0].isdigit():
                style = "red" if value not in ("unsupported",) else "dim"
            cells.append(Text(str(value), style=style))
        table.add_row(*cells)
    return table


def markdown_table(display: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in display.columns) + " |"
    rule = "| " + " | ".join("---" for _ in display.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in display.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"

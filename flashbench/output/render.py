"""Comparison frames as text: Rich tables for a terminal, Markdown for CI summaries and reports."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich.text import Text

from flashbench.results.compare import SHAPE_FIELDS
from flashbench.output.fit import Column, Grid
from flashbench.output.tables import shape_label, varying_shape_fields

__all__ = ["backends_display", "fixed_shape", "format_cell", "legend", "markdown_table",
           "key_columns", "runs_display", "to_grid"]

# Cell marks; a table's caption explains those it shows.
FASTEST, NOISY, THROTTLED = "*", "~", "!"
_MARK_TEXT = ((FASTEST, f"{FASTEST} fastest"), (NOISY, f"{NOISY} noisy (IQR/median > 5%)"),
              (THROTTLED, f"{THROTTLED} throttled or clock off the run's median"))
SPEEDUP_TEXT = "×: speedup over the baseline (higher is faster)"


def legend(display: pd.DataFrame) -> str:
    """The caption of a backends_display frame: the marks it uses, and the speedup column."""
    cells = [str(v) for c in display.columns if c.endswith(" ms") for v in display[c]]
    marks = [text for mark, text in _MARK_TEXT
             if any(mark in c.split(" ")[0] for c in cells)]
    baseline = display.attrs.get("baseline")
    speedup = f"×: speedup over {baseline} (higher is faster)" if baseline else \
        SPEEDUP_TEXT if "baseline" in display else "×: no baseline ran"
    return " · ".join([*marks, speedup])


def format_cell(x: Any, digits: int = 3) -> str:
    """A table cell: empty for missing, grouped thousands from 1000, else ``digits`` significant."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return ""
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
    return str(x)


def _speedup(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 (a 900× slower backend is not 0.00)."""
    if pd.isna(x):
        return ""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


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
    baselines = frame["baseline"].fillna("")
    if baselines.nunique() > 1:  # one baseline for every case is said once, in the caption
        out["baseline"] = baselines
    else:
        out.attrs["baseline"] = baselines.iloc[0] if len(baselines) else ""
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
        out[f"{b} ×"] = frame[f"{b}:speedup"].map(_speedup)
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


def _styled(col: str, value: Any) -> Text:
    text = str(value)
    style = ""
    if col == "verdict":
        style = _VERDICT_STYLE.get(text, "")
    elif col.endswith("ms") and text.split(" ")[0].rstrip(NOISY + THROTTLED).endswith(FASTEST):
        style = "bold green"
    elif col.endswith("ms") and text and not text[0].isdigit():
        style = "dim" if text == "unsupported" else "red"
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
            keys: int, by_backend: bool = False) -> Grid:
    """A display frame as a Grid: its first ``keys`` columns name the case; the rest are values,
    grouped per backend (columns named ``"<backend> <metric>"``) when ``by_backend``."""
    def column(name: str, header: str) -> Column:
        return Column(header, [_styled(name, v) for v in display[name]])

    names = list(display.columns)
    key_columns = [column(n, n) for n in names[:keys]]
    groups: list[tuple[str, list[Column]]] = []
    for name in names[keys:]:
        # Two-word headers on two lines ("baseline" over "ms"): narrower columns.
        group, header = name.split(" ", 1) if by_backend else ("", name.replace(" ", "\n", 1))
        if not groups or groups[-1][0] != group:
            groups.append((group, []))
        groups[-1][1].append(column(name, header))
    return Grid(title, key_columns, groups, caption=caption)


def markdown_table(display: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in display.columns) + " |"
    rule = "| " + " | ".join("---" for _ in display.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in display.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"

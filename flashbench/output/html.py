"""A run as one self-contained HTML page: environment, result tables and embedded plots."""

from __future__ import annotations

import base64
import html
import numbers
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flashbench.output.formats import binary_size, number
from flashbench.output.machine import environment_items, load_items

__all__ = ["render_html"]

# What each plot from flashbench.output.plots shows; other images are captioned with their file name.
_CAPTIONS = {
    "headline.png": "Per shape, each backend's median latency over the fastest backend's (log "
                    "scale): the markers on the 1× line are the winners, the distance to the "
                    "right is how much slower the others are.",
    "latency.png": "Median latency against sequence length (prefill: kv_len = seq_len), "
                   "log scales; lower is better.",
    "tflops.png": "TFLOP/s at the median latency against sequence length (prefill); "
                  "higher is better.",
    "memory.png": "Peak memory allocated beyond the inputs, log scales: materialized N×N "
                  "scores grow quadratically, flash kernels linearly.",
    "decode.png": "Decode shapes (a few query tokens against a long KV cache): modelled "
                  "memory traffic per second against KV length.",
}

# Inline only: the page must open offline, from a mail attachment or a CI artifact.
_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2125; background: #fff; margin: 0 auto; padding: 24px 32px 48px;
       max-width: 1500px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid #d8dde2; }
.sub { color: #5b6570; margin: 0 0 20px; }
/* Wide or long tables scroll inside their own box, both ways, instead of stretching the page;
   the header row and the first column stay in view, so every backend is reachable. */
.scroll { overflow: auto; width: fit-content; max-width: 100%; max-height: 75vh;
          border: 1px solid #d8dde2; border-radius: 4px; }
.scroll thead th { position: sticky; top: 0; z-index: 2; }
.scroll table.results td:first-child, .scroll table.results th:first-child {
          position: sticky; left: 0; z-index: 1; background: #fff;
          border-right: 1px solid #d8dde2; }
.scroll table.results thead th:first-child { z-index: 3; background: #eef1f4; }
.note { background: #fff8e1; border: 1px solid #f0d98c; border-radius: 4px; padding: 8px 12px; }
details > summary { cursor: pointer; font-weight: 600; margin: 24px 0 10px; }
table { border-collapse: collapse; font-size: 13px; white-space: nowrap; }
th, td { padding: 4px 10px; text-align: left; border-bottom: 1px solid #eceff2; }
thead th { background: #eef1f4; font-weight: 600;
           border-bottom: 1px solid #c9d0d6; }
tbody tr:nth-child(even) { background: #f7f9fa; }
tbody tr:hover { background: #e8f0fb; }
td.num { text-align: right; font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace;
         font-variant-numeric: tabular-nums; }
td.long { max-width: 36em; overflow: hidden; text-overflow: ellipsis; }
table.env th { background: #f7f9fa; font-weight: 600; }
table.env td { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace;
               white-space: normal; word-break: break-all; }
figure { margin: 28px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #d8dde2; }
figcaption { color: #5b6570; font-size: 13px; margin-top: 6px; }
footer { color: #8a939c; font-size: 12px; margin-top: 40px; }
"""


def _cell(value: Any, group: bool = False) -> tuple[str, bool]:
    """Display text of one value and whether it is a number (right-aligned, monospace).

    Floats get three significant digits, without an exponent from 1,000 up (612, 45.3,
    0.0123, 1.23e-05, 2,579); integers get thousands separators when ``group`` (decided per
    column, so that one column never mixes 8192 and 16,384); NaN and None are empty.
    """
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value), False
    if value is None or pd.api.types.is_scalar(value) and pd.isna(value):
        return "", False
    if isinstance(value, (bool, np.bool_)):  # bool is an Integral: test it first
        return str(bool(value)), False
    if isinstance(value, numbers.Integral):
        return (f"{value:,}" if group else str(value)), True
    if isinstance(value, numbers.Real):
        return number(float(value)), True
    return str(value), False


def _groups_thousands(column: pd.Series) -> bool:
    ints = [v for v in column if isinstance(v, numbers.Integral)
            and not isinstance(v, (bool, np.bool_))]
    return any(abs(v) >= 10_000 for v in ints)


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    group = [_groups_thousands(frame.iloc[:, i]) for i in range(frame.shape[1])]
    body = []
    for row in frame.itertuples(index=False, name=None):
        cells = []
        for value, g in zip(row, group):
            text, numeric = _cell(value, g)
            # Long text (an error message, raw samples) is cut to one line in the cell instead
            # of widening the table or growing the row; the tooltip keeps all of it.
            if numeric:
                cells.append(f'<td class="num">{html.escape(text)}</td>')
            elif len(text) > 60:
                cells.append(f'<td class="long" title="{html.escape(text)}">'
                             f"{html.escape(text)}</td>")
            else:
                cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="scroll"><table class="results">'
            f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body)
            + "\n</tbody></table></div>")


def _env_value(key: str, value: Any) -> str:
    # Versions such as cudnn 91900 stay as they are; byte counts get a readable size too.
    if key.endswith("_bytes") and isinstance(value, numbers.Integral):
        return f"{value:,} ({binary_size(value)})"
    if isinstance(value, list) and key == "command":
        return shlex.join(map(str, value))
    return _cell(value)[0]


def _environment(meta: dict[str, Any]) -> str:
    items: list[tuple[str, Any]] = [(label, meta[key]) for key, label in (
        ("status", "status"), ("started_at", "started"), ("finished_at", "finished"),
        ("n_cases", "cases"), ("command", "command")) if meta.get(key) is not None]
    config = meta.get("config")
    if isinstance(config, dict) and config.get("name"):
        items.append(("config", config["name"]))
    if isinstance(config, dict) and config.get("fp32_precision"):
        items.append(("fp32 precision (our kernels)", config["fp32_precision"]))
    items += load_items(meta)
    items += environment_items(meta.get("environment") or {})
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th>"
                   f"<td>{html.escape(_env_value(str(k), v))}</td></tr>" for k, v in items)
    return f'<div class="scroll"><table class="env"><tbody>{rows}</tbody></table></div>'


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = _CAPTIONS.get(path.name, path.name)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(meta: dict[str, Any], sections: list[tuple[str, pd.DataFrame]],
                images: list[Path], *, headline: pd.DataFrame | None = None,
                appendix: list[tuple[str, pd.DataFrame]] = (), plots_note: str | None = None
                ) -> str:
    """One page that opens offline: no external URLs, no scripts, images as data URIs.

    In reading order: the headline (who is fastest per shape: headline.png and ``headline``),
    the ``sections``' tables, the other plots (or ``plots_note`` saying why there are none),
    the ``appendix`` tables folded away, and the environment last.
    """
    env = meta.get("environment") or {}
    gpu = env.get("gpu_name") or "CPU"
    run_id = meta.get("run_id") or "run"
    title = f"flashbench {run_id} on {gpu}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>flashbench {html.escape(str(run_id))}</h1>",
        f'<p class="sub">{html.escape(str(gpu))}'
        + (f" · {html.escape(str(meta['status']))}" if meta.get("status") else "")
        + (f" · {html.escape(str(meta['started_at']))}" if meta.get("started_at") else "")
        + "</p></header>",
    ]
    first = [p for p in images if p.name == "headline.png"]
    rest = [p for p in images if p.name != "headline.png"]
    if first or headline is not None:
        parts.append("<section><h2>Who is fastest</h2>")
        parts += [_figure(p) for p in first]
        if headline is not None and not headline.empty:
            parts.append(_table(headline))
        parts.append("</section>")
    for heading, frame in sections:
        parts += [f"<section><h2>{html.escape(heading)}</h2>", _table(frame), "</section>"]
    if rest or plots_note:
        parts.append("<section><h2>Plots</h2>")
        parts += [_figure(p) for p in rest]
        if plots_note:
            parts.append(f'<p class="note">{html.escape(plots_note)}</p>')
        parts.append("</section>")
    for heading, frame in appendix:
        parts += [f"<details><summary>{html.escape(heading)}</summary>", _table(frame),
                  "</details>"]
    parts += ["<section><h2>Environment</h2>", _environment(meta), "</section>"]
    parts.append("<footer>Generated by flashbench. Latency is the median of timed samples; "
                 "GB/s is modelled traffic over the median; memory is beyond the inputs."
                 "</footer></body></html>")
    return "\n".join(parts) + "\n"

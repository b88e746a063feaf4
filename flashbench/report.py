"""A run rendered whole: flat CSV, JSON rows, a Markdown summary, or one self-contained HTML page."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from flashbench.compare import compare_backends
from flashbench.errors import UserError
from flashbench.render import LEGEND, backends_display, fixed_shape, markdown_table
from flashbench.table import results_frame

__all__ = ["FORMATS", "render_report"]

FORMATS = ("csv", "markdown", "json", "html")
# The columns of the HTML page's full table; the CSV keeps every field.
_HTML_COLUMNS = ("backend", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len",
                 "head_dim", "dtype", "causal", "status", "resolved_backend", "median_ms",
                 "tflops", "gbps", "peak_alloc_bytes", "rel_err", "sm_clock_mhz", "throttle",
                 "error")


def _where(meta: dict[str, Any]) -> str:
    env = meta.get("environment", {})
    return env.get("gpu_name") or f"CPU ({env.get('cpu', 'unknown')})"


def _plots(rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    try:
        from flashbench.plots import make_plots
    except ImportError as e:
        raise UserError(f"plots need matplotlib ({e}); pip install 'flashbench[plot]'") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the plot folder {out_dir}: {e.strerror}") from None
    ceilings = (meta.get("environment") or {}).get("ceilings")
    return make_plots(results_frame(rows), out_dir, _where(meta), ceilings)


def render_report(rows: list[dict[str, Any]], meta: dict[str, Any], fmt: str,
                  plot_dir: Path | None = None) -> tuple[str, list[Path]]:
    """The report's text, and the plot files written (into ``plot_dir`` when given)."""
    images = _plots(rows, meta, plot_dir) if plot_dir is not None else []
    if fmt == "csv":
        return results_frame(rows).to_csv(index=False), images
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n", images
    side_by_side = compare_backends(rows)
    if fmt == "markdown":
        env = meta.get("environment", {})
        text = (f"# flashbench run {meta.get('run_id', '')} on {_where(meta)}\n\n"
                f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
                f"driver {env.get('driver')}, commit {env.get('git_commit')}; "
                f"{fixed_shape(side_by_side)}\n\n"
                f"{markdown_table(backends_display(side_by_side))}\n{LEGEND}\n")
        return text, images
    if fmt == "html":
        from flashbench.html_report import render_html

        frame = results_frame(rows)
        sections = [("Backends side by side", backends_display(side_by_side)),
                    ("Every case", frame[[c for c in _HTML_COLUMNS if c in frame]])]
        if plot_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                images = _plots(rows, meta, Path(tmp))
                return render_html(meta, sections, images), []
        return render_html(meta, sections, images), images
    raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")

"""A run rendered whole: flat CSV, JSON rows, a Markdown summary, or one self-contained HTML page."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from flashbench.core.cases import SHAPE_FIELDS, Status
from flashbench.results.compare import compare_backends
from flashbench.core.errors import UserError
from flashbench.core.rows import finite_or_none
from flashbench.output.formats import milliseconds, number, shape_value
from flashbench.output.machine import ceilings_text, load_text
from flashbench.output.tables import (backends_display, fixed_shape, legend, markdown_table,
                                      results_frame, varying_shape_fields)
from flashbench.results.clocks import off_clock, run_clock

__all__ = ["FORMATS", "PLOT_HINT", "headline_table", "machine_table", "plots_available",
           "render_comparison", "render_report"]

FORMATS = ("csv", "markdown", "json", "html")
# The columns of the HTML page's full table; the CSV keeps every field.
_HTML_COLUMNS = ("backend", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len",
                 "head_dim", "dtype", "causal", "status", "resolved_backend",
                 "matmul_precision", "median_ms",
                 "tflops", "pct_peak_flops", "gbps", "pct_peak_bw", "arith_intensity",
                 "peak_alloc_bytes", "rel_err", "sm_clock_mhz", "mem_clock_mhz", "power_w",
                 "temp_c", "throttle", "error")
# The Markdown report's per-case table: where each case sits against the card, and its state.
_MACHINE_COLUMNS = (("median_ms", "ms", 4), ("tflops", "TFLOP/s", 4),
                    ("pct_peak_flops", "% peak FLOP/s", 3), ("gbps", "GB/s", 4),
                    ("pct_peak_bw", "% peak BW", 3), ("arith_intensity", "FLOP/B", 3),
                    ("sm_clock_mhz", "SM MHz", 4), ("power_w", "W", 3), ("temp_c", "°C", 2))


def _where(meta: dict[str, Any]) -> str:
    env = meta.get("environment", {})
    return env.get("gpu_name") or f"CPU ({env.get('cpu', 'unknown')})"


# flashbench is installed from its checkout (it is not on PyPI), where ".[plot]" names the extra.
PLOT_HINT = ('plots need matplotlib: pip install matplotlib (or, in the flashbench checkout, '
             'pip install ".[plot]")')


def plots_available() -> bool:
    """Whether matplotlib is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _plots(rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    try:
        from flashbench.output.plots import make_plots
    except ImportError:
        raise UserError(PLOT_HINT) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the plot folder {out_dir}: {e.strerror}") from None
    ceilings = (meta.get("environment") or {}).get("ceilings")
    return make_plots(results_frame(rows), out_dir, _where(meta), ceilings)


def machine_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per timed case: rates, shares of the calibrated ceilings, intensity and telemetry."""
    timed = [r for r in rows if r.get("median_ms") is not None]
    fields = ["backend", *varying_shape_fields(timed)] if timed else ["backend"]
    clock = run_clock(timed)
    out = []
    for r in timed:
        line = {f: shape_value(f, r.get(f)) for f in fields}
        line |= {label: number(r.get(key), digits) for key, label, digits in _MACHINE_COLUMNS}
        line["throttle"] = (r.get("throttle") or "") + ("!" if off_clock(r, clock) else "")
        out.append(line)
    return pd.DataFrame(out)


def headline_table(side_by_side: pd.DataFrame) -> pd.DataFrame:
    """Per shape with two or more backends timed: the fastest, its median, and its lead over
    the next fastest."""
    backends = [c.removesuffix(":status") for c in side_by_side.columns if c.endswith(":status")]
    fields = varying_shape_fields(side_by_side[[f for f in SHAPE_FIELDS if f in side_by_side]]
                                  .to_dict("records"))
    out = []
    for record in side_by_side.to_dict("records"):
        times = sorted((record[f"{b}:median_ms"], b) for b in backends
                       if record[f"{b}:status"] == Status.OK and record[f"{b}:median_ms"])
        if len(times) < 2:
            continue
        (best, winner), (second, runner_up) = times[0], times[1]
        line = {f: shape_value(f, record[f]) for f in fields}
        line |= {"fastest": winner, "median ms": milliseconds(best), "next": runner_up,
                 "next / fastest": f"{second / best:.2f}×"}
        out.append(line)
    return pd.DataFrame(out)


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any], side_by_side: pd.DataFrame,
              display: pd.DataFrame) -> str:
    env = meta.get("environment", {})
    load = load_text(meta)
    return (f"# flashbench run {meta.get('run_id', '')} on {_where(meta)}\n\n"
            f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
            f"driver {env.get('driver')}, commit {env.get('git_commit')}; "
            f"{fixed_shape(side_by_side)}\n\n"
            + (f"{load[:1].upper()}{load[1:]}.\n\n" if load else "") +
            f"{markdown_table(display)}\n{legend(display)}\n\n"
            f"## Each case against the card\n\nCeilings: {ceilings_text(env.get('ceilings'))}."
            f"\n\n{markdown_table(machine_table(rows))}\n"
            "% peak: of the calibrated matmul rate of the dtype (fp32 against tf32) and of "
            "the copy bandwidth · FLOP/B: FLOPs per modelled HBM byte · SM MHz, W, °C: "
            "NVML during the timed samples · !: clock more than 3% off the run's median\n")


def _html(rows: list[dict[str, Any]], meta: dict[str, Any], side_by_side: pd.DataFrame,
          display: pd.DataFrame, plot_dir: Path | None, images: list[Path]) -> str:
    from flashbench.output.html import render_html

    frame = results_frame(rows)
    parts = {"sections": [("Each case, backends side by side", display)],
             "headline": headline_table(side_by_side),
             "appendix": [("Every row, every measured field",
                           frame[[c for c in _HTML_COLUMNS if c in frame]])]}
    if plot_dir is not None:
        return render_html(meta, images=images, **parts)
    try:  # without --plot, the page still embeds plots when it can, and says why not
        with tempfile.TemporaryDirectory() as tmp:
            return render_html(meta, images=_plots(rows, meta, Path(tmp)), **parts)
    except UserError as e:
        return render_html(meta, images=[], plots_note=f"No plots: {e}.", **parts)


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity in it, however deep, made null (JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return finite_or_none(value)


def render_report(rows: list[dict[str, Any]], meta: dict[str, Any], fmt: str,
                  plot_dir: Path | None = None) -> tuple[str, list[Path]]:
    """The report's text, and the plot files written (into ``plot_dir`` when given)."""
    images = _plots(rows, meta, plot_dir) if plot_dir is not None else []
    if fmt == "csv":
        return results_frame(rows).to_csv(index=False), images
    if fmt == "json":  # valid JSON: a NaN or infinity read from a file is null
        return json.dumps(_finite(rows), indent=1, allow_nan=False) + "\n", images
    side_by_side = compare_backends(rows)
    display = backends_display(side_by_side)
    if fmt == "markdown":
        return _markdown(rows, meta, side_by_side, display), images
    return _html(rows, meta, side_by_side, display, plot_dir, images), images


def render_comparison(frame: pd.DataFrame, display: pd.DataFrame, title: str, caption: str,
                      fmt: str) -> str:
    """A comparison (``compare``'s frame and its display strings) as CSV, JSON or Markdown."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=1) + "\n"
    return f"{title}\n\n{markdown_table(display)}\n{caption}\n"

"""Run plots as PNG files: latency, TFLOP/s, peak memory and decode bandwidth against length, and
the roofline (every case against the card's calibrated ceilings)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd
# Figure plus the Agg canvas, not pyplot: no global backend switch, no figure registry to leak
# into, and it works headless. The CLI must import this module only inside a command.
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from flashbench.core.cases import Status, is_decode_step
from flashbench.core.registry import builtin_names
from flashbench.output.formats import binary_size, tokens
from flashbench.core.roofline import attainable_tflops, peak_tflops, ridge_intensity

__all__ = ["make_plots"]

DPI = 110
_PANEL_W, _PANEL_H = 5.2, 3.6  # inches per facet
# Ten built-in backends take the first ten colours; plugins the rest, then the cycle again.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
            "#7b4173", "#3182bd")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8", "x")
# Shape fields that split a figure into facets when they vary; head_dim and causal always do.
_FACET_FIELDS = ("mode", "dtype", "batch", "heads", "kv_heads", "head_dim", "causal")


def _backend_colors(backends: list[str]) -> dict[str, str]:
    """A fixed colour per built-in backend (the same in every run), then the rest in order."""
    builtins = builtin_names()
    colors = {b: _PALETTE[i] for i, b in enumerate(builtins)}
    extra = [b for b in dict.fromkeys(backends) if b not in colors]
    for i, b in enumerate(extra):
        colors[b] = _PALETTE[(len(builtins) + i) % len(_PALETTE)]
    present = set(backends)
    return {b: c for b, c in colors.items() if b in present}  # legend order: as registered


def _line_style(colors: dict[str, str], backend: str) -> dict[str, Any]:
    # A marker as well as a colour, so that overlapping lines and grey prints stay apart.
    marker = _MARKERS[list(colors).index(backend) % len(_MARKERS)]
    return {"color": colors[backend], "marker": marker, "markersize": 4.5, "linewidth": 1.6,
            "label": backend}


def _timed(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a median latency (ok and mismatch), numeric columns coerced (None -> NaN)."""
    if frame.empty or "median_ms" not in frame:
        return frame.iloc[0:0]
    out = frame.copy()
    for col in ("median_ms", "tflops", "gbps", "peak_alloc_bytes", "seq_len", "kv_len",
                "arith_intensity", "flops", "hbm_bytes"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    return out[out["median_ms"].notna()]


def _length_label(n: float, _pos: Any = None) -> str:
    return tokens(n)


def _bytes_label(n: float, _pos: Any = None) -> str:
    return binary_size(n, digits=-1)


def _plain_label(v: float, _pos: Any = None) -> str:
    return f"{v:g}"


def _facet_title(key: dict[str, Any], varying: list[str]) -> str:
    parts = [f"D={key['head_dim']}", "causal" if key["causal"] else "full"]
    labels = {"dtype": "{}", "mode": "{}", "batch": "B={}", "heads": "H={}", "kv_heads": "Hkv={}"}
    parts += [labels[f].format(key[f]) for f in _FACET_FIELDS if f in labels and f in varying]
    return " ".join(parts)


def _fixed_subtitle(frame: pd.DataFrame, varying: list[str]) -> str:
    labels = {"mode": "{}", "dtype": "{}", "batch": "B={}", "heads": "H={}", "kv_heads": "Hkv={}"}
    if "kv_heads" in frame and "heads" in frame and (frame["kv_heads"] == frame["heads"]).all():
        labels.pop("kv_heads")  # not GQA: Hkv would repeat H
    return " ".join(labels[f].format(frame[f].iloc[0]) for f in labels
                    if f in frame and f not in varying)


def _facets(frame: pd.DataFrame, extra: tuple[str, ...] = ()
            ) -> tuple[list[tuple[dict[str, Any], pd.DataFrame]], list[str]]:
    """Groups of rows, one per facet, in (other fields, head_dim, causal) order."""
    fields = [f for f in (*_FACET_FIELDS, *extra) if f in frame]
    varying = [f for f in fields if frame[f].nunique() > 1]
    keys = [f for f in fields if f in varying or f in ("head_dim", "causal", *extra)]
    # causal last, so that a two-column grid puts full and causal side by side.
    keys = [f for f in keys if f != "causal"] + ["causal"]
    groups = [(dict(zip(keys, k)), g) for k, g in frame.groupby(keys, sort=True)]
    return groups, varying


def _grid(n: int, n_causal: int) -> tuple[int, int]:
    cols = n_causal if n_causal == 2 else min(n, 3)
    return math.ceil(n / cols), cols


def _log2_x(ax: Axes, values: list[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(FuncFormatter(_length_label))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(values), max(values)
    if lo == hi:  # one point: give it room instead of a degenerate axis
        lo, hi = lo / 1.5, hi * 1.5
    ax.set_xlim(lo / 2**0.25, hi * 2**0.25)


def _log_y(ax: Axes, formatter: Callable[[float, Any], str], base: float = 10) -> None:
    """Log y with labelled powers of ``base``; call it after the lines are drawn."""
    ax.set_yscale("log", base=base)
    ax.yaxis.set_major_locator(LogLocator(base=base, numticks=8))
    ax.yaxis.set_major_formatter(FuncFormatter(formatter))
    ax.yaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_ylim()
    # Data within less than two powers of the base would leave the axis with one labelled
    # tick or none (a CPU run of one length): widen it to the enclosing powers.
    if math.floor(math.log(hi, base)) - math.ceil(math.log(lo, base)) < 1:
        below = math.floor(math.log(lo, base))
        ax.set_ylim(base**below, base**max(math.ceil(math.log(hi, base)), below + 1))
        if base == 10:  # a decade or two: label 2 and 5 times the powers as well
            ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(FuncFormatter(formatter))


def _figure(frame: pd.DataFrame, *, x: str, y: str, gpu_name: str, title: str, xlabel: str,
            ylabel: str, colors: dict[str, str], style_axes: Callable[[Axes], None],
            extra_facets: tuple[str, ...] = (), positive_only: bool = False,
            facet_prefix: Callable[[dict[str, Any]], str] | None = None) -> Figure | None:
    data = frame[frame[y].notna()]
    if positive_only:  # log axes cannot show zero or less
        data = data[data[y] > 0]
    if data.empty:
        return None
    groups, varying = _facets(data, extra_facets)
    rows, cols = _grid(len(groups), data["causal"].nunique())
    # Constrained layout makes room for the suptitle and the legend outside the panels.
    fig = Figure(figsize=(_PANEL_W * cols, _PANEL_H * rows + 1.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    backends = [b for b in colors if b in set(data["backend"])]
    for ax, (key, g) in zip(axes.flat, groups):
        for b in backends:
            line = g[g["backend"] == b].sort_values(x)
            if line.empty:
                continue
            ax.plot(line[x], line[y], **_line_style(colors, b))
        _log2_x(ax, list(g[x]))
        style_axes(ax)
        prefix = facet_prefix(key) if facet_prefix else ""
        ax.set_title(prefix + _facet_title(key, varying), fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    subtitle = _fixed_subtitle(data, varying)
    fig.suptitle(f"{title} on {gpu_name}" + (f"\n{subtitle}" if subtitle else ""), fontsize=12)
    handles = [Line2D([], [], **_line_style(colors, b)) for b in backends]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7),
               fontsize=9, frameon=False)
    return fig


def _query_tokens(key: dict[str, Any]) -> str:
    n = key["seq_len"]
    return f"{n} query token{'s' * (n != 1)} · "


def _roofline(data: pd.DataFrame, ceilings: dict[str, Any] | None, gpu_name: str,
              colors: dict[str, str]) -> Figure | None:
    """One panel per dtype: each case at (FLOP per modelled byte, TFLOP/s), under the roofs."""
    if "arith_intensity" not in data:  # a run from before the field: derive it
        if not {"flops", "hbm_bytes"} <= set(data):
            return None
        data = data.assign(arith_intensity=data["flops"] / data["hbm_bytes"])
    data = data[(data["arith_intensity"] > 0) & (data["tflops"] > 0)]
    if data.empty:
        return None
    dtypes = sorted(data["dtype"].unique())
    fig = Figure(figsize=(_PANEL_W * 1.15 * len(dtypes), _PANEL_H * 1.25 + 1.0), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(dtypes), squeeze=False)[0]
    backends = [b for b in colors if b in set(data["backend"])]
    bandwidth = float(ceilings["copy_gbps"]) if ceilings else None
    for ax, dtype in zip(axes, dtypes):
        g = data[data["dtype"] == dtype]
        lo, hi = g["arith_intensity"].min() / 2, g["arith_intensity"].max() * 2
        peak = peak_tflops(ceilings, dtype) if ceilings else None
        if peak is not None and bandwidth:
            name, top = peak
            ridge = ridge_intensity(top, bandwidth)
            lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
            xs = [lo, ridge, hi]
            ax.plot(xs, [attainable_tflops(x, top, bandwidth) for x in xs], color="black",
                    linewidth=1.4, zorder=1)
            ax.annotate(f"matmul {name}: {top:,.3g} TFLOP/s", (hi / 1.1, top), ha="right",
                        va="bottom", fontsize=8)
            ax.annotate(f"copy: {bandwidth:,.4g} GB/s", (lo * 1.2, lo * 1.2 * bandwidth / 1e3),
                        ha="left", va="bottom", fontsize=8)
        for b in backends:
            points = g[g["backend"] == b]
            if not points.empty:
                style = _line_style(colors, b)
                ax.scatter(points["arith_intensity"], points["tflops"], color=style["color"],
                           marker=style["marker"], s=22, alpha=0.85, zorder=2, label=b)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_title(f"{dtype}" + ("" if peak else " (no calibrated ceiling)"), fontsize=10)
        ax.set_xlabel("arithmetic intensity (FLOP per modelled HBM byte, log)", fontsize=9)
        ax.set_ylabel("TFLOP/s at the median (log)", fontsize=9)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(_plain_label))
            axis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.3)
    note = "" if ceilings else "\nnot calibrated: run `flashbench calibrate` on this machine for the roofs"
    fig.suptitle(f"Roofline on {gpu_name}{note}", fontsize=12)
    handles = [Line2D([], [], linestyle="", **{k: v for k, v in _line_style(colors, b).items()
                                              if k != "linewidth"}) for b in backends]
    # Legend rows sized to the figure: a single dtype panel fits four names across.
    fig.legend(handles=handles, loc="outside lower center",
               ncol=max(1, min(len(handles), 4 * len(dtypes))),
               fontsize=9, frameon=False)
    return fig


def _shape_label(key: dict[str, Any], varying: list[str]) -> str:
    """A comparison group as a y tick: only what varies in the run (N4096 D128 causal)."""
    names = {"mode": "{}", "dtype": "{}", "batch": "B{}", "heads": "H{}", "kv_heads": "Hkv{}",
             "seq_len": "N{}", "kv_len": "KV{}", "head_dim": "D{}"}
    parts = [names[f].format(key[f]) for f in names if f in varying]
    if "causal" in varying:
        parts.append("causal" if key["causal"] else "full")
    return " ".join(parts) or "the one shape"


def _headline(data: pd.DataFrame, gpu_name: str, colors: dict[str, str]) -> Figure | None:
    """Per shape, each backend's median over the fastest's: who wins, and by how much."""
    shape = [f for f in ("mode", "dtype", "batch", "heads", "kv_heads", "seq_len", "kv_len",
                         "head_dim", "causal") if f in data]
    ok = data[data["status"] == Status.OK] if "status" in data else data
    ok = ok[ok["median_ms"] > 0]
    groups = [(dict(zip(shape, k)), g) for k, g in ok.groupby(shape, sort=True)
              if g["backend"].nunique() > 1]
    if not groups:
        return None
    varying = [f for f in shape if ok[f].nunique() > 1]
    for derived, base in (("kv_len", "seq_len"), ("kv_heads", "heads")):
        if derived in varying and (ok[derived] == ok[base]).all():
            varying.remove(derived)  # prefill (kv_len = seq_len), or not GQA: no new fact
    height = max(2.4, 0.24 * len(groups) + 1.6)
    fig = Figure(figsize=(_PANEL_W * 1.6, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    backends = [b for b in colors if b in set(ok["backend"])]
    labels = []
    for y, (key, g) in enumerate(reversed(groups)):  # the first shape at the top
        fastest = g["median_ms"].min()
        labels.append(_shape_label(key, varying))
        for b in backends:
            times = g.loc[g["backend"] == b, "median_ms"]
            if not times.empty:
                style = _line_style(colors, b)
                ax.scatter([times.iloc[0] / fastest], [y], color=style["color"],
                           marker=style["marker"], s=28, zorder=2, label=b)
    ax.axvline(1.0, color="black", linewidth=0.8, zorder=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("median latency ÷ the fastest backend's, per shape (log; 1× = fastest)",
                  fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    fixed = _fixed_subtitle(ok, varying)
    fig.suptitle(f"Who is fastest, and by how much, on {gpu_name}"
                 + (f"\n{fixed}" if fixed else ""), fontsize=12)
    handles = [Line2D([], [], linestyle="", **{k: v for k, v in _line_style(colors, b).items()
                                              if k != "linewidth"}) for b in backends]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7),
               fontsize=9, frameon=False)
    return fig


def make_plots(frame: pd.DataFrame, out_dir: Path, gpu_name: str,
               ceilings: dict[str, Any] | None = None) -> list[Path]:
    """Write headline, latency, TFLOP/s, memory, decode and roofline PNGs into ``out_dir``;
    return those written.

    Only rows with a median are drawn; headline.png needs two backends timed on one shape.
    memory.png needs allocator figures (none on a CPU run)
    and decode.png needs decode shapes; each is skipped when there is nothing to draw.
    roofline.png draws the roofs from ``ceilings`` (flashbench calibrate's record), the points
    alone without it.
    """
    data = _timed(frame)
    if data.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = _backend_colors(list(data["backend"]))
    prefill = data[data["seq_len"] == data["kv_len"]]
    decode = data[is_decode_step(data["seq_len"], data["kv_len"])]
    length = "sequence length N (tokens)"

    def linear_from_zero(ax: Axes) -> None:
        ax.set_ylim(bottom=0)

    figures: dict[str, Figure | None] = {"headline.png": _headline(data, gpu_name, colors)}
    if not prefill.empty:
        figures["latency.png"] = _figure(
            prefill, x="seq_len", y="median_ms", gpu_name=gpu_name, colors=colors,
            title="Median latency", xlabel=length, ylabel="median latency (ms, log)",
            style_axes=lambda ax: _log_y(ax, _plain_label), positive_only=True)
        figures["tflops.png"] = _figure(
            prefill, x="seq_len", y="tflops", gpu_name=gpu_name, colors=colors,
            title="Throughput", xlabel=length, ylabel="TFLOP/s (at the median)",
            style_axes=linear_from_zero)
        # Powers of two on the byte axis, so that gridlines land on whole MiB and GiB.
        figures["memory.png"] = _figure(
            prefill, x="seq_len", y="peak_alloc_bytes", gpu_name=gpu_name, colors=colors,
            title="Peak memory beyond the inputs", xlabel=length,
            ylabel="peak allocated beyond inputs (log)", positive_only=True,
            style_axes=lambda ax: _log_y(ax, _bytes_label, 2))
    if not decode.empty:
        figures["decode.png"] = _figure(
            decode, x="kv_len", y="gbps", gpu_name=gpu_name, colors=colors,
            title="Decode bandwidth (modelled HBM traffic)", xlabel="KV length (tokens)",
            ylabel="GB/s (modelled traffic / median)", style_axes=linear_from_zero,
            extra_facets=("seq_len",), facet_prefix=_query_tokens)

    figures["roofline.png"] = _roofline(data, ceilings, gpu_name, colors)

    written = []
    for name, fig in figures.items():
        if fig is None:
            continue
        path = out_dir / name
        fig.savefig(path, dpi=DPI, facecolor="white")
        written.append(path)
    return written

"""The machine as tables and lines: the environment, the backends available here, the calibrated ceilings, a profile."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from flashbench.core.cases import Status
from flashbench.core.load import busy_note

from flashbench.output.fit import Column, Grid

__all__ = ["backends_grid", "ceilings_grid", "ceilings_text", "environment_grid",
           "environment_items", "kernels_grid", "load_items", "load_text", "profile_grid"]


def _rate(value: float) -> str:
    return f"{value:,.4g} TFLOP/s"


def ceilings_text(record: dict[str, Any] | None) -> str:
    """A calibration record on one line: matmul bf16 764.2 TFLOP/s, ...; copy 4,273 GB/s."""
    if not record:
        return "not calibrated (run `flashbench calibrate` on this machine for % of peak)"
    rates = ", ".join(f"{d} {_rate(v)}" for d, v in record["matmul_tflops"].items())
    return (f"matmul {rates}; copy {record['copy_gbps']:,.0f} GB/s "
            f"(flashbench calibrate, {record.get('calibrated_at', '?')})")


def ceilings_grid(record: dict[str, Any]) -> Grid:
    """The same record as a table: each ceiling, its rate, and the size it was reached at."""
    best_n = record.get("matmul_best_n", {})
    lines = [(f"matmul {dtype}", _rate(rate), f"n={best_n.get(dtype, '?')}")
             for dtype, rate in record["matmul_tflops"].items()]
    lines.append(("copy", f"{record['copy_gbps']:,.0f} GB/s",
                  f"{record.get('copy_bytes', 0) / 2**30:.2f} GiB"))
    lines += [(f"matmul {dtype}", "not measured", why)
              for dtype, why in (record.get("skipped") or {}).items()]
    names, rates, at = (list(c) for c in zip(*lines))
    return Grid(f"ceilings of {record.get('device_name')} "
                f"(calibrated {record.get('calibrated_at')})",
                [Column("ceiling", names, justify="left")],
                [("", [Column("rate", rates), Column("at", at, fold=True)])],
                caption="matmul: best median rate of n×n×n products over the sizes tried · "
                        "copy: device-memory copy, read + write counted")


def environment_items(env: dict[str, Any]) -> list[tuple[str, Any]]:
    """An environment record as (label, value) lines for a table: nested parts spelled out
    as text, the rest as recorded."""
    items: list[tuple[str, Any]] = []
    for key, value in env.items():
        if key == "backends" and isinstance(value, dict):
            items += [(f"backend {name}", state) for name, state in value.items()]
        elif key == "ceilings":
            items.append((key, ceilings_text(value) if isinstance(value, dict) else None))
        elif key == "missing" and isinstance(value, list):
            items += [("missing", line) for line in value]
        else:
            items.append((key, value))
    return items


def _loads(value: Any) -> str | None:
    if not isinstance(value, list):
        return None
    return ", ".join(f"{x:.2f}" if isinstance(x, (int, float)) else str(x) for x in value)


def load_items(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """The machine's load around a run (meta.json's load_before and load_after, each resumed
    session's too) as (label, value) lines, and the busy warning when there is one."""
    sessions = [("", meta, None)] + [
        (f" (resumed {s.get('at', '')})", s, s) for s in meta.get("resumed") or []
        if isinstance(s, dict)]
    items: list[tuple[str, Any]] = []
    for suffix, where, session in sessions:
        for key in ("load_before", "load_after"):
            text = _loads(where.get(key))
            if text is not None:
                items.append((f"load average {key.removeprefix('load_')}{suffix} "
                              f"(1, 5, 15 min)", text))
        busy = busy_note(meta, session)
        if busy:
            items.append((f"busy{suffix}", busy.removeprefix("warning: ")))
    return items


def load_text(meta: dict[str, Any]) -> str:
    """The run's load averages on one line, for a report (empty without figures)."""
    return "; ".join(f"{label}: {value}" for label, value in load_items(meta))


def environment_grid(env: dict[str, Any]) -> Grid:
    items = environment_items(env)
    labels = [Text(label, style="yellow" if label == "missing" else "") for label, _ in items]
    values = ["–" if value is None else str(value) for _, value in items]
    return Grid("", [Column("", labels, justify="left")],
                [("", [Column("", values, justify="left", fold=True)])], show_header=False)


def backends_grid(device: str, backends: list[Any], reasons: list[str | None]) -> Grid:
    """``flashbench list``: each backend, its family, whether it runs here and why not."""
    return Grid(f"backends on {device}",
                [Column("backend", [b.name for b in backends], justify="left")],
                [("", [Column("family", [b.family for b in backends], justify="left"),
                       Column("available", ["no" if r else "yes" for r in reasons],
                              justify="left"),
                       Column("why not", [r or "" for r in reasons], justify="left", fold=True),
                       Column("description", [b.description for b in backends],
                              justify="left", fold=True)])])


def _gb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e9:,.3f}"


def profile_grid(results: list[dict[str, Any]], title: str) -> Grid:
    """Per backend: what ran, time per call, modelled against measured DRAM bytes."""
    cpu = any(r["kind"] == "cpu-op" for r in results)

    def time_cell(r: dict[str, Any]) -> str:
        us = r["wall_us_per_call"] if r["kind"] == "cpu-op" else r["gpu_us_per_call"]
        return "–" if us is None else f"{us:,.1f}"

    def col(header: str, values: list[str], **kw: Any) -> Column:
        return Column(header, values, **kw)

    ratios = [r["measured_over_model"] for r in results]
    caption = ("time/call: wall time of one call (on a CPU; its aten operators are listed "
               "below) · " if cpu else "time/call: GPU time of the call's kernels · ") \
        + "GB: 10⁹ bytes per call · model: flashbench's hbm_bytes for the backend's algorithm" \
        + ("" if cpu else " · measured: ncu dram__bytes_read.sum + dram__bytes_write.sum over "
                          "every kernel of one call, caches flushed before each kernel")
    return Grid(title, [col("backend", [r["backend"] for r in results], justify="left")], [("", [
        col("status", [str(r["status"]) if r["status"] == Status.OK
                       else f"{r['status']}: {r['error'] or ''}" for r in results],
            justify="left", fold=True),
        col("ops" if cpu else "kernels", [str(len(r["kernels"])) for r in results]),
        col("launches", [f"{sum(k['launches_per_call'] for k in r['kernels']):g}"
                         for r in results]),
        col("time/call µs", [time_cell(r) for r in results]),
        col("model GB", [_gb(r["hbm_bytes"]) for r in results]),
        col("read GB", [_gb(r["dram_read_bytes"]) for r in results]),
        col("write GB", [_gb(r["dram_write_bytes"]) for r in results]),
        col("measured GB", [_gb(r["dram_bytes"]) for r in results]),
        col("measured/model", ["–" if x is None else f"{x:.2f}" for x in ratios])])],
        caption=caption)


def kernels_grid(results: list[dict[str, Any]], limit: int = 8) -> Grid:
    """The kernels of each backend, slowest first (at most ``limit`` each)."""
    lines: list[tuple[str, str, str, str, str]] = []
    for r in results:
        for k in r["kernels"][:limit]:
            lines.append((r["backend"], k["kernel"], f"{k['launches_per_call']:g}",
                          f"{k['us_per_call']:,.1f}", f"{k['share']:.0%}"))
        if len(r["kernels"]) > limit:
            lines.append((r["backend"], f"... {len(r['kernels']) - limit} more in kernels.csv",
                          "", "", ""))
    columns = [list(c) for c in zip(*lines)] if lines else [[] for _ in range(5)]
    title = "aten operators per call (self CPU time)" \
        if any(r["kind"] == "cpu-op" for r in results) else "kernels per call"
    return Grid(title, [Column("backend", columns[0], justify="left")],
                [("", [Column("kernel", columns[1], justify="left", fold=True),
                       Column("launches", columns[2]), Column("µs", columns[3]),
                       Column("share", columns[4])])])

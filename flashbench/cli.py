"""The flashbench command line: parses flags and delegates to the library (torch loads lazily)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from flashbench.errors import UserError

app = typer.Typer(
    help="Benchmark and profile attention: Triton FlashAttention, PyTorch SDPA backends, naive.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _user_errors_exit_2(command: Callable) -> Callable:
    """Bad input prints one line on stderr and exits 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _int_list(flag: str, text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    values = []
    for part in text.split(","):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise UserError(f"{flag}: {part.strip()!r} is not an integer "
                            f"(give a comma-separated list such as 1024,2048)") from None
    return values


def _str_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


@app.command()
@_user_errors_exit_2
def run(
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Preset name or YAML file [default: 'default' on a GPU, "
                                     "'cpu' without one]."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends, e.g. "
                                                      "triton,sdpa-cudnn,naive."),
    seq_len: Optional[str] = typer.Option(None, help="Query lengths, e.g. 1024,2048."),
    kv_len: Optional[str] = typer.Option(None, help="KV lengths [default: the query length]."),
    heads: Optional[str] = typer.Option(None, help="Query heads."),
    kv_heads: Optional[str] = typer.Option(None, help="KV heads (fewer than heads: GQA/MQA)."),
    head_dim: Optional[str] = typer.Option(None, help="Head dimensions, e.g. 64,128."),
    batch: Optional[str] = typer.Option(None, help="Batch sizes."),
    dtype: Optional[str] = typer.Option(None, help="fp16, bf16 or fp32 (comma-separated)."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal",
                                          help="Only causal, or only full attention."),
    mode: Optional[str] = typer.Option(None, help="fwd (bwd and fwd_bwd: not yet)."),
    device: Optional[str] = typer.Option(None, help="auto, cuda or cpu."),
    l2: Optional[str] = typer.Option(None, help="cold: flush L2 before every sample; hot: don't."),
    budget_ms: Optional[float] = typer.Option(None, help="Timing budget per case, ms."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for run folders."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    strict: bool = typer.Option(False, help="Exit 1 if any case errored or mismatched."),
) -> None:
    """Sweep the configured cases over the backends; print a table, save results/<run-id>/."""
    overrides = {
        "backends": _str_list(backends), "seq_len": _int_list("--seq-len", seq_len),
        "kv_len": _int_list("--kv-len", kv_len), "heads": _int_list("--heads", heads),
        "kv_heads": _int_list("--kv-heads", kv_heads),
        "head_dim": _int_list("--head-dim", head_dim), "batch": _int_list("--batch", batch),
        "dtype": _str_list(dtype), "causal": None if causal is None else [causal],
        "mode": _str_list(mode), "device": device, "l2": l2, "budget_ms": budget_ms,
    }
    from flashbench.config import load_config

    if config is None:
        config = "default" if _has_cuda(device) else "cpu"
    cfg = load_config(config, overrides)

    from flashbench.runner import run_sweep
    from flashbench.table import failure_notes, sweep_table

    result = run_sweep(cfg, out, command=["flashbench", *sys.argv[1:]], progress=progress)
    env = result.meta["environment"]
    where = env.get("gpu_name") or f"CPU ({env.get('cpu')})"
    if result.rows:
        _stdout().print(sweep_table(result.rows, title=f"flashbench {cfg.name} on {where}"))
    for note in failure_notes(result.rows):
        typer.echo(note, err=True)
    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    typer.echo(f"results: {result.run_dir} ({summary})", err=True)
    if strict and any(r["status"] in ("error", "mismatch", "crash", "timeout")
                      for r in result.rows):
        raise typer.Exit(1)


def _stdout():
    """Rich console for data; unbounded when piped, so wide tables are not squeezed or cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000)


def _has_cuda(device: Optional[str]) -> bool:
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


@app.command("list")
@_user_errors_exit_2
def list_backends(
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
) -> None:
    """Backends, whether each can run on this machine, and why not."""
    from rich.table import Table

    from flashbench.measure import select_device

    dev = select_device(device)
    from flashbench.backends import registry

    table = Table(title=f"backends on {dev}")
    for col in ("backend", "family", "available", "why not", "description"):
        table.add_column(col)
    for b in registry().values():
        reason = b.unavailable(dev)
        table.add_row(b.name, b.family, "no" if reason else "yes", reason or "", b.description)
    _stdout().print(table)


@app.command()
@_user_errors_exit_2
def env(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The environment a run would record: GPU, driver, CUDA, torch, triton, versions."""
    import json

    from flashbench.env import capture_environment
    from flashbench.measure import select_device

    info = capture_environment(select_device("auto"))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(show_header=False)
    for k, v in info.items():
        table.add_row(k, "–" if v is None else str(v))
    _stdout().print(table)


RESULTS_DIR = typer.Option(Path("results"), "--results-dir",
                           help="Where run ids and the latest run are looked up.")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        from flashbench.errors import did_you_mean

        raise UserError(f"{flag}: {value!r} is not one of {', '.join(allowed)}"
                        f"{did_you_mean(value, allowed)}")
    return value


def _write_output(text: str, output: Optional[Path]) -> None:
    """To stdout, or to a file written whole (temporary file, then rename) or not at all."""
    if output is None:
        sys.stdout.write(text)
        return
    import os

    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror}") from None
    typer.echo(f"wrote {output}", err=True)


@app.command()
@_user_errors_exit_2
def compare(
    runs: Optional[list[str]] = typer.Argument(
        None, help="One run (backends side by side; default: the latest) or two runs (A vs B)."),
    baseline_backend: Optional[str] = typer.Option(
        None, help="Backend the speedups are against [default: the fastest SDPA backend per case]."),
    fmt: str = typer.Option("table", "--format", help="table, csv, markdown or json."),
    threshold: str = typer.Option("5%", help="For two runs: slowdown that counts (as in check)."),
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Backends side by side within a run, or the same cases of two runs side by side."""
    _choice("--format", fmt, ("table", "csv", "markdown", "json"))
    runs = runs or []
    if len(runs) > 2:
        raise UserError(f"compare takes one or two runs, got {len(runs)}")
    from flashbench import compare as cmp
    from flashbench import render
    from flashbench.store import load_run

    if len(runs) == 2:
        from flashbench.check import parse_threshold

        (a_rows, _, a_path), (b_rows, _, b_path) = (load_run(r, results_dir) for r in runs)
        frame = cmp.compare_runs(a_rows, b_rows, threshold=parse_threshold(threshold))
        display = render.runs_display(frame)
        title = f"{b_path} against {a_path} (ratio = B/A, >1: B slower)"
        caption = "verdicts as in flashbench check"
    else:
        rows, _, path = load_run(runs[0] if runs else None, results_dir)
        present = sorted({r["backend"] for r in rows})
        if baseline_backend is not None and baseline_backend not in present:
            raise UserError(f"--baseline-backend: {baseline_backend!r} is not in {path}; "
                            f"backends there: {', '.join(present)}")
        frame = cmp.compare_backends(rows, baseline_backend)
        display = render.backends_display(frame)
        title = f"{path}: {render.fixed_shape(frame)}"
        caption = render.LEGEND
    if fmt == "table":
        _stdout().print(render.to_rich(display, title, caption))
    elif fmt == "csv":
        _write_output(frame.to_csv(index=False), None)
    elif fmt == "json":
        _write_output(frame.to_json(orient="records", indent=1) + "\n", None)
    else:
        _write_output(f"{title}\n\n{render.markdown_table(display)}\n{caption}\n", None)


@app.command()
@_user_errors_exit_2
def report(
    run: Optional[str] = typer.Argument(None, help="Run folder, id or results file [default: latest]."),
    fmt: str = typer.Option("csv", "--format", help="csv, markdown, json or html."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write [stdout]."),
    plot: Optional[Path] = typer.Option(None, help="Also write PNG plots into this folder."),
    results_dir: Path = RESULTS_DIR,
) -> None:
    """A run as CSV (every field, one row per case), Markdown, JSON or one self-contained HTML page."""
    _choice("--format", fmt, ("csv", "markdown", "json", "html"))
    from flashbench.report import render_report

    from flashbench.store import load_run

    rows, meta, _ = load_run(run, results_dir)
    text, images = render_report(rows, meta, fmt, plot_dir=plot)
    for image in images if plot else []:
        typer.echo(f"plot: {image}", err=True)
    _write_output(text, output)


@app.command()
@_user_errors_exit_2
def check(
    baseline: str = typer.Argument(..., help="Baseline run folder, id or results file."),
    current: str = typer.Argument(..., help="Current run folder, id or results file."),
    threshold: str = typer.Option("5%", help="Slowdown beyond which a significant change fails."),
    summary: Optional[Path] = typer.Option(None, help="Write a Markdown summary here (CI job summary)."),
    junit: Optional[Path] = typer.Option(None, help="Write JUnit XML here, one test per case."),
    allow_missing: bool = typer.Option(False, help="Cases missing from CURRENT do not fail."),
    allow_env_mismatch: bool = typer.Option(False, help="Compare runs from different GPU, driver or torch."),
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Fail (exit 1) on a real regression: slower beyond the threshold and significant, or a case that broke."""
    from flashbench import check as gate
    from flashbench import render

    result = gate.run_check(baseline, current, root=results_dir,
                            threshold=gate.parse_threshold(threshold),
                            allow_missing=allow_missing, allow_env_mismatch=allow_env_mismatch)
    if summary is not None:
        _write_output(gate.summary_markdown(result), summary)
    if junit is not None:
        _write_output(gate.junit_xml(result), junit)
    for note in result.env_notes:
        typer.echo(f"note: {note}", err=True)
    notable = result.frame[result.frame["verdict"] != "unchanged"]
    counts = ", ".join(f"{n} {v}" for v, n in sorted(result.frame["verdict"].value_counts().items()))
    if not notable.empty:
        _stdout().print(render.to_rich(render.runs_display(notable),
                                       f"{result.current} against {result.baseline}"))
    verdict = "no regression" if result.passed else f"{len(result.failing)} failing case(s)"
    typer.echo(f"check: {verdict} ({counts}; threshold {result.threshold:.1%})")
    if not result.passed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()

"""The flashbench command line: parses flags and delegates to the library (torch loads lazily)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from typer.core import TyperGroup

from flashbench.core.errors import UserError

if TYPE_CHECKING:
    from flashbench.sweep.runner import SweepResult

# Exit codes, as the README documents them.
EXIT_FAILED = 1  # a failed case under --strict, a regression under check, a sweep that could not go on
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


# Usage errors derive from click's ClickException, which recent Typer vendors and older Typer
# imports: find it through a class Typer exports either way.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """A flag of the wrong type or an unknown option is bad input too: one line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not (sys.argv[1:] if args is None else args):  # `flashbench` alone: its usage, exit 0
            args = ["--help"]
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = EXIT_FAILED
        except _ClickException as e:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            typer.echo(f"error: {where}{e.format_message()}", err=True)
            code = e.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Benchmark and profile attention: Triton FlashAttention, PyTorch SDPA backends, naive.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help text is plain text: as Rich markup, every "[default: …]" note would vanish.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from flashbench import __version__

        typer.echo(f"flashbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print flashbench's version and exit."),
) -> None:
    """Benchmark and profile attention: Triton FlashAttention, PyTorch SDPA backends, naive."""


def _user_errors_exit_2(command: Callable) -> Callable:
    """Bad input prints one line on stderr and exits 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

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


PLUGINS = typer.Option(None, "--plugin", metavar="FILE",
                       help="A Python file that registers backends with "
                            "@flashbench.register_backend (repeatable).")


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
    mode: Optional[str] = typer.Option(None, help="fwd, bwd (backward alone) or fwd_bwd."),
    device: Optional[str] = typer.Option(None, help="auto, cuda or cpu."),
    l2: Optional[str] = typer.Option(None, help="cold: flush L2 before every sample; hot: don't."),
    budget_ms: Optional[float] = typer.Option(None, help="Timing budget per case, ms."),
    case_timeout: Optional[float] = typer.Option(
        None, "--case-timeout", help="Seconds one case may take before its worker is killed "
                                     "and the case recorded as a timeout [default: 600]."),
    plugin: Optional[list[Path]] = PLUGINS,
    resume: Optional[str] = typer.Option(
        None, help="Finish an interrupted run (folder or id under --out): only the cases "
                   "without a row run, with the run's own config."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate",
                                 help="Run cases in a worker process that may crash or hang "
                                      "without ending the sweep; --no-isolate runs them here, "
                                      "for debugging (no timeouts, a crash ends the sweep)."),
    devices: Optional[str] = typer.Option(
        None, help="One worker per device, at once: all (every visible GPU), GPU indices such "
                   "as 0,2,3, or cpu,cpu; each shape's backends run on one device."),
    shard: Optional[str] = typer.Option(
        None, help="Run only shard I of N (e.g. 2/4, counted from 1) of the cases, for job "
                   "arrays; combine the shards with flashbench merge."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for run folders."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress on stderr: a bar in a terminal, one line per "
                                       "finished step elsewhere (CI logs, batch jobs)."),
    strict: bool = typer.Option(False, help="Exit 1 if any case errored, mismatched, crashed or "
                                            "timed out."),
) -> None:
    """Sweep the configured cases over the backends; print a table, save results/<run-id>/.

    Exit 0 when the sweep finished, 1 with --strict and a failed case, 2 for bad input, 130
    when interrupted (Ctrl-C or SIGTERM; finish it with --resume).
    """
    overrides = {
        "backends": _str_list(backends), "seq_len": _int_list("--seq-len", seq_len),
        "kv_len": _int_list("--kv-len", kv_len), "heads": _int_list("--heads", heads),
        "kv_heads": _int_list("--kv-heads", kv_heads),
        "head_dim": _int_list("--head-dim", head_dim), "batch": _int_list("--batch", batch),
        "dtype": _str_list(dtype), "causal": None if causal is None else [causal],
        "mode": _str_list(mode), "device": device, "l2": l2, "budget_ms": budget_ms,
        "case_timeout_s": case_timeout,
    }
    from flashbench.sweep import runner

    command = ["flashbench", *sys.argv[1:]]
    plugins = [str(p) for p in plugin or []]
    try:
        if resume is not None:
            given = [f"--{k.replace('_', '-')}" for k, v in overrides.items()
                     if v is not None and k != "case_timeout_s"] + (["--config"] if config else []) \
                + (["--shard"] if shard is not None else [])
            if given:
                raise UserError(f"--resume runs the rest of the run's own config; drop "
                                f"{', '.join(given)}")
            result = runner.resume_sweep(resume, out, command=command, progress=progress,
                                         isolate=isolate, plugins=plugins,
                                         case_timeout_s=case_timeout, devices=devices)
        else:
            from flashbench.core.config import load_config, requested_device
            from flashbench.core.plugins import load_plugins
            from flashbench.sweep.shard import parse_shard

            part = None if shard is None else parse_shard(shard)
            if config is None:
                cpu_workers = devices is not None and set(_str_list(devices) or []) == {"cpu"}
                config = "default" if _has_cuda("cpu" if cpu_workers else device) else "cpu"
            if not isolate:
                from flashbench.measure.case import select_device

                # In this process the device comes first: on a CPU it sets TRITON_INTERPRET
                # before a plugin can import triton.
                select_device(requested_device(config, device))
            plugins = load_plugins(plugins)  # before the config: plugins add backend names
            cfg = load_config(config, overrides)
            result = runner.run_sweep(cfg, out, command=command, progress=progress,
                                      isolate=isolate, plugins=plugins, devices=devices,
                                      shard=part)
    except runner.Interrupted as e:
        typer.echo(f"{e}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except runner.SweepFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    _report_sweep(result, strict, resumed=resume is not None)


def _report_sweep(result: SweepResult, strict: bool, *, resumed: bool) -> None:
    """The table on stdout; failures, the summary and how to go on on stderr; the exit code."""
    from flashbench.output.fit import print_grid
    from flashbench.output.tables import failure_notes, sweep_table
    from flashbench.measure.telemetry import telemetry_notes

    env = result.meta["environment"]
    where = env.get("gpu_name") or f"CPU ({env.get('cpu')})"
    name = result.meta["config"].get("name", "custom")
    if result.rows:
        print_grid(sweep_table(result.rows, title=f"flashbench {name} on {where}"))
    for note in failure_notes(result.rows) + telemetry_notes(result.rows):
        typer.echo(note, err=True)
    if env.get("gpu_uuid") and not env.get("ceilings"):
        typer.echo("note: this GPU is not calibrated; `flashbench calibrate` measures its "
                   "ceilings, and later runs report pct_peak_flops and pct_peak_bw", err=True)
    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no rows"
    if result.status == "interrupted":
        left = result.meta["n_cases"] - len(result.rows)
        typer.echo(f"results: {result.run_dir} ({summary}); interrupted with {left} case(s) "
                   f"to go: flashbench run --resume {result.run_dir}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if resumed and result.measured == 0:
        typer.echo(f"nothing to resume: every case of {result.run_dir} has a row", err=True)
    typer.echo(f"results: {result.run_dir} ({summary})", err=True)
    if strict and any(r["status"] in ("error", "mismatch", "crash", "timeout")
                      for r in result.rows):
        raise typer.Exit(EXIT_FAILED)


def _has_cuda(device: Optional[str]) -> bool:
    """Whether the default preset is the GPU one, without creating a CUDA context here.

    The sweep's worker owns the device; asking NVML (and torch's NVML-based check) keeps this
    process free of CUDA, and without a GPU it does not even import torch.
    """
    if device == "cpu":
        return False
    from flashbench.measure.telemetry import nvml_module

    nvml = nvml_module()
    try:
        if nvml is None or nvml.nvmlDeviceGetCount() == 0:
            return False
    except Exception:  # NVMLError: as good as no GPU for choosing a preset
        return False
    import os

    import torch

    before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # read at call time
    try:
        return torch.cuda.is_available()
    finally:
        if before is None:
            del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = before


@app.command("list")
@_user_errors_exit_2
def list_backends(
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    plugin: Optional[list[Path]] = PLUGINS,
) -> None:
    """Backends (plugins included), whether each can run on this machine, and why not."""
    from flashbench.measure.case import select_device

    dev = select_device(device)  # before plugins, which may import triton
    from flashbench.core.plugins import load_plugins

    load_plugins([str(p) for p in plugin or []])
    from flashbench.measure.backends import registry
    from flashbench.output.fit import Column, Grid, print_grid

    backends = list(registry().values())
    reasons = [b.unavailable(dev) for b in backends]
    print_grid(Grid(f"backends on {dev}", [Column("backend", [b.name for b in backends],
                                                  justify="left")],
                    [("", [Column("family", [b.family for b in backends], justify="left"),
                           Column("available", ["no" if r else "yes" for r in reasons],
                                  justify="left"),
                           Column("why not", [r or "" for r in reasons], justify="left",
                                  fold=True),
                           Column("description", [b.description for b in backends],
                                  justify="left", fold=True)])]))


@app.command()
@_user_errors_exit_2
def env(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The environment a run records: GPU, driver, CUDA, torch, triton, cuDNN, SDPA backends,
    NVML, calibration, versions; and what this machine lacks."""
    import json

    from flashbench.measure.machine import capture_environment, environment_items
    from flashbench.measure.case import select_device

    info = capture_environment(select_device("auto"))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.text import Text

    from flashbench.output.fit import Column, Grid, print_grid

    items = environment_items(info)
    labels = [Text(label, style="yellow" if label == "missing" else "") for label, _ in items]
    values = ["–" if value is None else str(value) for _, value in items]
    print_grid(Grid("", [Column("", labels, justify="left")],
                    [("", [Column("", values, justify="left", fold=True)])], show_header=False))


RESULTS_DIR = typer.Option(Path("results"), "--results-dir",
                           help="Where run ids and the latest run are looked up.")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        from flashbench.core.errors import did_you_mean

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
    from flashbench.results import compare as cmp
    from flashbench.output import render
    from flashbench.results.store import load_run

    if len(runs) == 2:
        from flashbench.results.check import parse_threshold

        (a_rows, _, a_path), (b_rows, _, b_path) = (load_run(r, results_dir) for r in runs)
        frame = cmp.compare_runs(a_rows, b_rows, threshold=parse_threshold(threshold))
        display = render.runs_display(frame)
        title = f"{b_path} against {a_path} (ratio = B/A, >1: B slower)"
        caption = "verdicts as in flashbench check"
        grid = render.to_grid(display, title, caption, keys=render.key_columns(display))
    else:
        rows, _, path = load_run(runs[0] if runs else None, results_dir)
        present = sorted({r["backend"] for r in rows})
        if baseline_backend is not None and baseline_backend not in present:
            raise UserError(f"--baseline-backend: {baseline_backend!r} is not in {path}; "
                            f"backends there: {', '.join(present)}")
        frame = cmp.compare_backends(rows, baseline_backend)
        display = render.backends_display(frame)
        title = f"{path}: {render.fixed_shape(frame)}"
        caption = render.legend(display)
        grid = render.to_grid(display, title, caption, keys=render.key_columns(display),
                              by_backend=True)
    if fmt == "table":
        from flashbench.output.fit import print_grid

        print_grid(grid)
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
    from flashbench.output.report import render_report

    from flashbench.results.store import load_run

    rows, meta, _ = load_run(run, results_dir)
    text, images = render_report(rows, meta, fmt, plot_dir=plot)
    for image in images if plot else []:
        typer.echo(f"plot: {image}", err=True)
    if fmt == "html" and plot is None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            from flashbench.output.report import PLOT_HINT

            typer.echo(f"note: the page has tables but no plots; {PLOT_HINT}", err=True)
    _write_output(text, output)


@app.command()
@_user_errors_exit_2
def merge(
    runs: list[str] = typer.Argument(..., help="The shard runs (flashbench run --shard I/N): "
                                               "folders, or ids under --results-dir."),
    output: Path = typer.Option(..., "--output", "-o", help="The merged run folder to create."),
    allow_env_mismatch: bool = typer.Option(False, help="Merge shards measured on different "
                                                        "GPU models, drivers or libraries."),
    allow_partial: bool = typer.Option(False, help="Merge although some shards are missing."),
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Combine the shards of one sweep into one run, for compare, report and check.

    Exit 0 when merged, 2 for bad input (not a finished shard, another config or split, a
    shard twice, another environment, a shard missing); nothing is written then.
    """
    from flashbench.results.merge import merge_runs

    result = merge_runs(runs, output, root=results_dir, allow_env_mismatch=allow_env_mismatch,
                        allow_partial=allow_partial, command=["flashbench", *sys.argv[1:]])
    merged = result.meta["merged"]
    for note in merged["environment_differences"]:
        typer.echo(f"note: environments differ: {note}", err=True)
    count = merged["shards"]
    missing = f"; missing: {', '.join(f'{i}/{count}' for i in merged['missing'])}" \
        if merged["missing"] else ""
    typer.echo(f"merged {len(merged['from'])} of {count} shard(s), "
               f"{len(result.rows)} rows, into {result.path}{missing}", err=True)


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
    from flashbench.results import check as gate
    from flashbench.output import render

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
        from flashbench.output.fit import print_grid

        display = render.runs_display(notable)
        print_grid(render.to_grid(display, f"{result.current} against {result.baseline}",
                                  keys=render.key_columns(display)))
    verdict = "no regression" if result.passed else f"{len(result.failing)} failing case(s)"
    typer.echo(f"check: {verdict} ({counts}; threshold {result.threshold:.1%})")
    if not result.passed:
        raise typer.Exit(1)


@app.command("calibrate")
@_user_errors_exit_2
def calibrate_command(
    dtypes: Optional[str] = typer.Option(None, help="Matmul dtypes: bf16,fp16,tf32,fp32 [default: all]."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    show: bool = typer.Option(False, "--show", help="Print this machine's cached ceilings; measure nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress on stderr: a bar in a terminal, one line per "
                                       "finished step elsewhere (CI logs, batch jobs)."),
) -> None:
    """Measure this machine's ceilings (dense matmul TFLOP/s per dtype, device copy GB/s) and
    cache them per GPU, driver and torch; later runs report each case's share of them."""
    import json

    from flashbench.measure import calibrate as cal

    chosen = cal.parse_dtypes(dtypes)
    from flashbench.measure.machine import capture_environment
    from flashbench.measure.case import select_device

    dev = select_device(device)
    env = capture_environment(dev)
    if show:
        record = env.get("ceilings")
        if record is None:
            raise UserError(f"no calibration cached for {cal.calibration_key(env)} in "
                            f"{cal.ceilings_path()}; run `flashbench calibrate`")
    else:
        from flashbench.sweep.progress import progress as show_progress

        with show_progress(progress, _calibration_steps(dev, chosen)) as shown:
            started: list[str] = []

            def step(label: str) -> None:  # a step starting means the one before it is done
                if started:
                    shown.done()
                started.append(label)
                shown.start(label)

            record = cal.calibrate(dev, env, chosen, step=step)
            shown.done()
        path = cal.save_ceilings(record)
        typer.echo(f"saved: {path} [{record['key']}]", err=True)
    if as_json:
        typer.echo(json.dumps(record, indent=1))
        return
    from flashbench.output.fit import print_grid

    print_grid(_ceilings_table(record))


def _calibration_steps(device, dtypes: tuple[str, ...]) -> int:
    from flashbench.measure.calibrate import CalibrationPlan

    measured = [d for d in dtypes if d != "tf32" or device.type == "cuda"]
    return len(measured) * len(CalibrationPlan.for_device(device).matmul_sizes) + 1


def _ceilings_table(record: dict):
    from flashbench.output.fit import Column, Grid

    lines = [(f"matmul {dtype}", f"{rate:,.1f} TFLOP/s",
              f"n={record.get('matmul_best_n', {}).get(dtype, '?')}")
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


@app.command("profile")
@_user_errors_exit_2
def profile_command(
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends "
                                                      "[default: naive,sdpa-flash,triton]."),
    seq_len: Optional[int] = typer.Option(None, help="Query length [default: 4096]."),
    kv_len: Optional[int] = typer.Option(None, help="KV length [default: the query length]."),
    heads: Optional[int] = typer.Option(None, help="Query heads [default: 16]."),
    kv_heads: Optional[int] = typer.Option(None, help="KV heads [default: heads]."),
    head_dim: Optional[int] = typer.Option(None, help="Head dimension [default: 128]."),
    batch: Optional[int] = typer.Option(None, help="Batch [default: 4]."),
    dtype: Optional[str] = typer.Option(None, help="fp16, bf16 or fp32 [default: bf16]."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="Causal mask [default: no]."),
    mode: Optional[str] = typer.Option(None, help="fwd, bwd or fwd_bwd [default: fwd]."),
    device: str = typer.Option("auto", help="auto, cuda or cpu."),
    ncu: bool = typer.Option(True, "--ncu/--no-ncu", help="Measure DRAM bytes with Nsight "
                                                          "Compute when it is installed (GPU)."),
    ncu_path: Optional[str] = typer.Option(None, help="Nsight Compute's ncu [default: PATH, "
                                                      "then CUDA's usual places]."),
    reps: int = typer.Option(3, min=1, max=100, help="Calls under torch.profiler (figures are per call)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Folder for the profile's run folder."),
) -> None:
    """One case, kernel by kernel: what each backend launched (torch.profiler) and, with Nsight
    Compute on a GPU, the DRAM bytes it moved beside flashbench's modelled hbm_bytes."""
    import time

    from flashbench.measure import profile as prof
    from flashbench.results.store import check_root

    given = {"backends": _str_list(backends), "seq_len": seq_len, "kv_len": kv_len,
             "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "batch": batch,
             "dtype": dtype, "causal": causal, "mode": mode, "device": device}
    from flashbench.measure.case import select_device

    dev = select_device(device)  # before anything imports triton (the interpreter on a CPU)
    cases = prof.profile_cases(given)
    check_root(out)
    if dev.type == "cpu":
        from flashbench.sweep.schedule import interpreter_warning

        note = interpreter_warning([c for c in cases if c.backend == "triton"], reps + 1)
        if note:
            typer.echo(note, err=True)
    ncu_exe = prof.find_ncu(ncu_path) if ncu and dev.type == "cuda" else None
    if ncu and dev.type == "cuda" and ncu_exe is None:
        typer.echo("note: Nsight Compute (ncu) not found; kernels only, no DRAM bytes", err=True)
    from flashbench.measure.machine import capture_environment

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = []
    for case in cases:
        typer.echo(f"profiling {case.label()}" + (" (+ ncu)" if ncu_exe else ""), err=True)
        results.append(prof.profile_case(case, dev, ncu=ncu_exe, reps=reps))
    meta = {"kind": "profile", "status": "completed", "started_at": started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": ["flashbench", *sys.argv[1:]], "ncu": ncu_exe, "reps": reps,
            "case": {k: v for k, v in cases[0].to_dict().items() if k != "backend"},
            "backends": [c.backend for c in cases],
            "environment": capture_environment(dev)}
    path = prof.save_profile(out, results, meta)
    shape = cases[0].label().split(" ", 1)[-1]
    from flashbench.output.fit import print_grid

    print_grid(prof.summary_table(results, f"profile of {shape} on "
                                           f"{meta['environment'].get('gpu_name') or 'CPU'}"))
    print_grid(prof.kernels_table(results))
    typer.echo(f"profile: {path}", err=True)


if __name__ == "__main__":
    app()

"""``flashbench compare``, ``report`` and ``check``: what was measured, side by side, whole, or gated."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flashbench.cli.app import command
from flashbench.cli.options import RESULTS_DIR, choice, write_output
from flashbench.core.errors import EXIT_FAILED

__all__ = ["check", "compare", "report"]

ALLOW_MIXED = typer.Option(False, help="Compare two runs whose rows were timed differently "
                                       "(timer, L2 mode or matmul precision).")


@command(short_help="Backends side by side, or two runs side by side.")
def compare(
    runs: Optional[list[str]] = typer.Argument(
        None, help="One run (backends side by side; default: the latest) or two runs (A vs B)."),
    baseline_backend: Optional[str] = typer.Option(
        None, help="Backend the speedups are against [default: the fastest SDPA backend per "
                   "case]."),
    fmt: str = typer.Option("table", "--format", help="table, csv, markdown or json."),
    threshold: str = typer.Option("5%", help="For two runs: slowdown that counts (as in check)."),
    allow_mixed: bool = ALLOW_MIXED,
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Backends side by side within a run, or the same cases of two runs side by side."""
    choice("--format", fmt, ("table", "csv", "markdown", "json"))
    from flashbench.output.comparison import comparison

    result = comparison(runs or [], results_dir, baseline_backend=baseline_backend,
                        threshold=threshold, allow_mixed=allow_mixed)
    if fmt in ("csv", "json"):  # the table and Markdown say it in their caption
        for note in result.notes:
            typer.echo(f"note: {note} (compared anyway: --allow-mixed)", err=True)
    if fmt == "table":
        from flashbench.output.fit import print_grid

        print_grid(result.grid())
    else:
        write_output(result.text(fmt), None)


@command(short_help="A run as CSV, Markdown, JSON or one HTML page.")
def report(
    run: Optional[str] = typer.Argument(None, help="Run folder, id or results file "
                                                   "[default: latest]."),
    fmt: str = typer.Option("csv", "--format", help="csv, markdown, json or html."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write [stdout]."),
    plot: Optional[Path] = typer.Option(None, help="Also write PNG plots into this folder."),
    results_dir: Path = RESULTS_DIR,
) -> None:
    """A run as CSV (every field, one row per case), Markdown, JSON or one self-contained HTML
    page (plots need matplotlib; without it the page has its tables and says so)."""
    from flashbench.output.report import FORMATS, PLOT_HINT, plots_available, render_report

    choice("--format", fmt, FORMATS)
    from flashbench.results.reading import load_run

    rows, meta, _ = load_run(run, results_dir)
    text, images = render_report(rows, meta, fmt, plot_dir=plot)
    for image in images if plot else []:
        typer.echo(f"plot: {image}", err=True)
    if fmt == "html" and plot is None and not plots_available():
        typer.echo(f"note: the page has tables but no plots; {PLOT_HINT}", err=True)
    write_output(text, output)


@command(short_help="The CI regression gate (exit 0 / 1 / 2).")
def check(
    baseline: str = typer.Argument(..., help="Baseline run folder, id or results file."),
    current: str = typer.Argument(..., help="Current run folder, id or results file."),
    threshold: str = typer.Option("5%", help="Slowdown beyond which a significant change fails."),
    summary: Optional[Path] = typer.Option(None, help="Write a Markdown summary here (CI job "
                                                      "summary)."),
    junit: Optional[Path] = typer.Option(None, help="Write JUnit XML here, one test per case."),
    allow_missing: bool = typer.Option(False, help="Cases missing from CURRENT do not fail."),
    allow_env_mismatch: bool = typer.Option(False, help="Compare runs from different GPU, driver "
                                                        "or torch."),
    allow_mixed: bool = ALLOW_MIXED,
    strict: bool = typer.Option(False, help="Also fail when a case's samples could not have "
                                            "shown a slowdown at the threshold (undetectable), "
                                            "or when the SM clocks explain a change "
                                            "(clock-changed)."),
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Fail (exit 1) on a real regression: slower beyond the threshold and significant, or a
    case that broke (with --strict, also a case whose samples could not have shown one, or
    whose change the two runs' SM clocks explain). Exit 0 when nothing regressed, 2 for bad
    input."""
    from flashbench.output.comparison import check_grid
    from flashbench.output.fit import print_grid
    from flashbench.results import check as gate

    result = gate.run_check(baseline, current, root=results_dir,
                            threshold=gate.parse_threshold(threshold),
                            allow_missing=allow_missing, allow_env_mismatch=allow_env_mismatch,
                            allow_mixed=allow_mixed, strict=strict)
    if summary is not None:
        write_output(gate.summary_markdown(result), summary)
    if junit is not None:
        write_output(gate.junit_xml(result), junit)
    for note in result.env_notes + result.mode_notes:
        typer.echo(f"note: {note}", err=True)
    grid = check_grid(result)
    if grid is not None:
        print_grid(grid)
    typer.echo(result.verdict_line())
    if not result.passed:
        raise typer.Exit(EXIT_FAILED)

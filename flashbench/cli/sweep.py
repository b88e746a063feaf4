"""``flashbench run`` and ``flashbench merge``: a sweep, and the shards of one sweep as one run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from flashbench.cli.app import command
from flashbench.cli.options import (PLUGINS, PROGRESS, RESULTS_DIR, int_list, optional_list,
                                    shape_flag, str_list)
from flashbench.core.errors import EXIT_FAILED, EXIT_INTERRUPTED

__all__ = ["merge", "run"]

CONFIG = typer.Option(None, "--config", "-c", metavar="PRESET|FILE",
                      help="Preset name or YAML file [default: 'default' on a GPU, 'cpu' "
                           "without one].")
DEVICE = typer.Option(None, help="auto, cuda or cpu.")
L2 = typer.Option(None, help="cold: flush L2 before every sample; hot: don't.")
BUDGET_MS = typer.Option(None, help="Timing budget per case, ms.")
TIMER = typer.Option(None, help="events: CUDA events around each call; graph: calls replayed "
                                "from a CUDA graph (kernels under ~20 us); profiler: the device "
                                "time of the kernels a call launches (CUPTI). GPU only but "
                                "events [default: events].")
DETECT = typer.Option(None, metavar="PCT|off",
                      help="Sample each case, within its budget, until check could see a "
                           "slowdown of this size between two runs like it (timing.detect); "
                           "off: the RSE rule alone [default: 5%].")
INTERLEAVE = typer.Option(None, "--interleave/--no-interleave",
                          help="Time the backends of each shape in alternating rounds, so that "
                               "a clock change hits them alike, or one after another "
                               "[default: interleave].")
THREADS = typer.Option(None, min=1, help="CPU only: torch threads while timing (timing.threads) "
                                         "[default: 1; in a config, null: torch's default].")
FP32_PRECISION = typer.Option(None, "--fp32-precision", metavar="tf32|ieee",
                              help="How our Triton kernels multiply fp32 inputs on a GPU: TF32 "
                                   "tensor cores or full IEEE fp32 [default: tf32].")
CASE_TIMEOUT = typer.Option(None, "--case-timeout",
                            help="Seconds one case may take before its worker is killed and the "
                                 "case recorded as a timeout [default: 600].")
RESUME = typer.Option(None, help="Finish an interrupted run (folder or id under --out): only the "
                                 "cases without a row run, with the run's own config.")
ISOLATE = typer.Option(True, "--isolate/--no-isolate",
                       help="Run cases in a worker process that may crash or hang without "
                            "ending the sweep; --no-isolate runs them here, for debugging (no "
                            "timeouts, a crash ends the sweep).")
DEVICES = typer.Option(None, help="One worker per device, at once: all (every visible GPU), GPU "
                                  "indices such as 0,2,3, or cpu,cpu; each shape's backends run "
                                  "on one device.")
SHARD = typer.Option(None, help="Run only shard I of N (e.g. 2/4, counted from 1) of the cases, "
                                "for job arrays; combine the shards with flashbench merge.")
OUT = typer.Option(Path("results"), "--out", "-o", help="Folder for run folders.")
STRICT = typer.Option(False, help="Exit 1 if any case errored, mismatched, crashed or timed out.")
WAIT = typer.Option(True, "--wait/--no-wait",
                    help="When another sweep is measuring on the device: wait for it, or "
                         "(--no-wait) refuse at once, exit 2.")
SHARED = typer.Option(False, "--allow-shared-device",
                      help="Measure even while another sweep uses the device (both sweeps' "
                           "timings then suffer).")


@command(short_help="Sweep cases over backends: a table, and a run folder.")
def run(config: Optional[str] = CONFIG, backends: Optional[str] = shape_flag("backends"),
        seq_len: Optional[str] = shape_flag("seq_len"),
        kv_len: Optional[str] = shape_flag("kv_len"), heads: Optional[str] = shape_flag("heads"),
        kv_heads: Optional[str] = shape_flag("kv_heads"),
        head_dim: Optional[str] = shape_flag("head_dim"),
        batch: Optional[str] = shape_flag("batch"), dtype: Optional[str] = shape_flag("dtype"),
        causal: Optional[bool] = shape_flag("causal"), mode: Optional[str] = shape_flag("mode"),
        window: Optional[str] = shape_flag("window"),
        softcap: Optional[str] = shape_flag("softcap"),
        page_size: Optional[str] = shape_flag("page_size"),
        device: Optional[str] = DEVICE, l2: Optional[str] = L2,
        budget_ms: Optional[float] = BUDGET_MS, detect: Optional[str] = DETECT,
        timer: Optional[str] = TIMER,
        interleave: Optional[bool] = INTERLEAVE, threads: Optional[int] = THREADS,
        fp32_precision: Optional[str] = FP32_PRECISION,
        case_timeout: Optional[float] = CASE_TIMEOUT,
        plugin: Optional[list[Path]] = PLUGINS, resume: Optional[str] = RESUME,
        isolate: bool = ISOLATE, devices: Optional[str] = DEVICES, shard: Optional[str] = SHARD,
        out: Path = OUT, progress: bool = PROGRESS, strict: bool = STRICT, wait: bool = WAIT,
        allow_shared_device: bool = SHARED) -> None:
    """Sweep the configured cases over the backends; print a table, save results/<run-id>/.

    Exit 0 when the sweep finished, 1 with --strict and a failed case, 2 for bad input, 130
    when interrupted (Ctrl-C or SIGTERM; finish it with --resume).
    """
    overrides = _grid_overrides(
        backends=backends, seq_len=seq_len, kv_len=kv_len, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, batch=batch, dtype=dtype, causal=causal, mode=mode, window=window,
        softcap=softcap, page_size=page_size) | {
        "device": device, "l2": l2, "budget_ms": budget_ms, "case_timeout_s": case_timeout,
        "timer": timer, "interleave": interleave, "threads": threads,
        "fp32_precision": fp32_precision, "detect": _detect(detect),
    }
    from flashbench.sweep.launch import SweepRequest, launch
    from flashbench.sweep.runner import Interrupted, SweepFailed, SweepOptions

    options = SweepOptions(command=["flashbench", *sys.argv[1:]], progress=progress,
                           isolate=isolate, plugins=[str(p) for p in plugin or []],
                           devices=devices, device_lock="share" if allow_shared_device
                           else "wait" if wait else "refuse")
    try:
        result = launch(SweepRequest(out=out, config=config, overrides=overrides, resume=resume,
                                     shard=shard, options=options))
    except Interrupted as e:
        typer.echo(f"{e}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except SweepFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    from flashbench.output.fit import print_grid
    from flashbench.output.summary import summarize_sweep

    summary = summarize_sweep(result.run_dir, result.rows, result.meta, result.measured,
                              strict=strict, resumed=resume is not None)
    if summary.table is not None:
        print_grid(summary.table)
    for note in summary.notes:
        typer.echo(note, err=True)
    raise typer.Exit(summary.exit_code)


def _grid_overrides(*, backends, dtype, causal, mode, window, softcap, page_size,
                    **sizes) -> dict:
    """The grid flags as config keys (None: not given)."""
    return {k: int_list(f"--{k.replace('_', '-')}", v) for k, v in sizes.items()} | {
        "backends": str_list(backends), "dtype": str_list(dtype), "mode": str_list(mode),
        "causal": None if causal is None else [causal],
        "window": optional_list("--window", window, int),
        "softcap": optional_list("--softcap", softcap, float),
        "page_size": optional_list("--page-size", page_size, int)}


def _detect(text: Optional[str]) -> float | str | None:
    """--detect as timing.detect: a share read as check reads its --threshold, or off."""
    if text is None:
        return None
    if text.strip().lower() == "off":
        return "off"  # TimingPolicy reads it as None; None here would mean "not given"
    from flashbench.results.check import parse_threshold

    return parse_threshold(text, "--detect")


@command(short_help="Combine the shards of one sweep into one run.")
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
    for line in result.notes():
        typer.echo(line, err=True)

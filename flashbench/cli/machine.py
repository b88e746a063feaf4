"""``flashbench list``, ``env``, ``calibrate`` and ``profile``: what this machine is and can do, and one case up close."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from flashbench.cli.app import command
from flashbench.cli.options import PLUGINS, PROGRESS, shape_flag, str_list

__all__ = ["calibrate", "env", "list_backends", "profile"]

DEVICE = typer.Option("auto", help="auto, cuda or cpu.")


@command("list", short_help="Backends, and whether each can run here.")
def list_backends(device: str = DEVICE, plugin: Optional[list[Path]] = PLUGINS) -> None:
    """Backends (plugins included), whether each can run on this machine, and why not."""
    from flashbench.measure.device import select_device

    dev = select_device(device)  # before plugins, which may import triton
    from flashbench.core.plugins import load_plugins
    from flashbench.measure.backends import registry
    from flashbench.output.fit import print_grid
    from flashbench.output.machine import backends_grid

    load_plugins([str(p) for p in plugin or []])
    backends = list(registry().values())
    print_grid(backends_grid(str(dev), backends, [b.unavailable(dev) for b in backends]))


@command(short_help="The environment a run records, and what this machine lacks.")
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
        ) -> None:
    """The environment a run records: GPU, driver, CUDA, torch, triton, cuDNN, SDPA backends,
    NVML, calibration, versions; and what this machine lacks."""
    import json

    from flashbench.measure.device import select_device
    from flashbench.measure.machine import capture_environment

    info = capture_environment(select_device("auto"))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from flashbench.output.fit import print_grid
    from flashbench.output.machine import environment_grid

    print_grid(environment_grid(info))


@command(short_help="Measure this card's ceilings (matmul per dtype, copy).")
def calibrate(
    dtypes: Optional[str] = typer.Option(None, help="Matmul dtypes: bf16,fp16,tf32,fp32 "
                                                    "[default: all]."),
    device: str = DEVICE,
    show: bool = typer.Option(False, "--show", help="Print this machine's cached ceilings; "
                                                    "measure nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    progress: bool = PROGRESS,
) -> None:
    """Measure this machine's ceilings (dense matmul TFLOP/s per dtype, device copy GB/s) and
    cache them per GPU, driver and torch; later runs report each case's share of them."""
    import json

    from flashbench.measure import calibrate as cal
    from flashbench.measure.device import select_device
    from flashbench.measure.machine import capture_environment

    chosen = cal.parse_dtypes(dtypes)
    dev = select_device(device)
    env = capture_environment(dev)
    if show:
        record = cal.cached_ceilings(env)
    else:
        from flashbench.output.progress import progress as show_progress, step_hook

        with show_progress(progress, cal.calibration_steps(dev, chosen)) as shown:
            step, finish = step_hook(shown)
            record = cal.calibrate(dev, env, chosen, step=step)
            finish()
        typer.echo(f"saved: {cal.save_ceilings(record)} [{record['key']}]", err=True)
    if as_json:
        typer.echo(json.dumps(record, indent=1))
        return
    from flashbench.output.fit import print_grid
    from flashbench.output.machine import ceilings_grid

    print_grid(ceilings_grid(record))


NCU = typer.Option(True, "--ncu/--no-ncu",
                   help="Measure DRAM bytes with Nsight Compute when it is installed (GPU).")
NCU_PATH = typer.Option(None, help="Nsight Compute's ncu [default: PATH, then CUDA's usual "
                                   "places].")
REPS = typer.Option(3, min=1, max=100, help="Calls under torch.profiler (figures are per call).")
OUT = typer.Option(Path("results"), "--out", "-o", help="Folder for the profile's run folder.")


@command(short_help="One case, kernel by kernel, with DRAM bytes beside the model.")
def profile(backends: Optional[str] = shape_flag("backends", single=True),
            seq_len: Optional[int] = shape_flag("seq_len", single=True),
            kv_len: Optional[int] = shape_flag("kv_len", single=True),
            heads: Optional[int] = shape_flag("heads", single=True),
            kv_heads: Optional[int] = shape_flag("kv_heads", single=True),
            head_dim: Optional[int] = shape_flag("head_dim", single=True),
            batch: Optional[int] = shape_flag("batch", single=True),
            dtype: Optional[str] = shape_flag("dtype", single=True),
            causal: Optional[bool] = shape_flag("causal", single=True),
            mode: Optional[str] = shape_flag("mode", single=True),
            device: str = DEVICE, ncu: bool = NCU, ncu_path: Optional[str] = NCU_PATH,
            reps: int = REPS, out: Path = OUT) -> None:
    """One case, kernel by kernel: what each backend launched (torch.profiler) and, with Nsight
    Compute on a GPU, the DRAM bytes it moved beside flashbench's modelled hbm_bytes."""
    from flashbench.measure.device import select_device

    dev = select_device(device)  # before anything imports triton (the interpreter on a CPU)
    from flashbench.measure import profile as prof
    from flashbench.output.fit import print_grid
    from flashbench.output.machine import kernels_grid, profile_grid
    from flashbench.sweep.schedule import interpreter_warning

    cases = prof.profile_cases({"backends": str_list(backends), "seq_len": seq_len,
                                "kv_len": kv_len, "heads": heads, "kv_heads": kv_heads,
                                "head_dim": head_dim, "batch": batch, "dtype": dtype,
                                "causal": causal, "mode": mode, "device": device})
    note = interpreter_warning([c for c in cases if c.backend == "triton"], reps + 1) \
        if dev.type == "cpu" else None
    if note:
        typer.echo(note, err=True)
    ncu_exe = prof.find_ncu(ncu_path) if ncu and dev.type == "cuda" else None
    if ncu and dev.type == "cuda" and ncu_exe is None:
        typer.echo("note: Nsight Compute (ncu) not found; kernels only, no DRAM bytes", err=True)
    result = prof.run_profile(cases, dev, out=out, ncu=ncu_exe, reps=reps,
                              command=["flashbench", *sys.argv[1:]],
                              log=lambda line: typer.echo(line, err=True))
    shape = cases[0].label().split(" ", 1)[-1]
    where = result.meta["environment"].get("gpu_name") or "CPU"
    print_grid(profile_grid(result.results, f"profile of {shape} on {where}"))
    print_grid(kernels_grid(result.results))
    typer.echo(f"profile: {result.path}", err=True)

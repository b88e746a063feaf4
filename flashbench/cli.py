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


if __name__ == "__main__":
    app()

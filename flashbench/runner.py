"""A sweep: expand the config into cases, measure each, append each row to the run as it finishes."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from flashbench.config import SweepConfig, expand_cases

__all__ = ["SweepResult", "run_sweep"]


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_sweep(cfg: SweepConfig, out_root: Path, *, command: list[str] | None = None,
              progress: bool = True) -> SweepResult:
    """Run every case of ``cfg`` into a new folder under ``out_root``; a failing case is a row."""
    # Device first: on a CPU it sets TRITON_INTERPRET before anything imports triton.
    from flashbench.measure import select_device

    device = select_device(cfg.device)
    from flashbench.env import capture_environment
    from flashbench.measure import measure_case
    from flashbench.store import create_run
    from flashbench.telemetry import nvml_handle

    cases = expand_cases(cfg)
    policy = cfg.timing.policy()
    env = capture_environment(device)
    run = create_run(out_root)
    meta: dict[str, Any] = {
        "run_id": run.path.name, "status": "running", "started_at": _now(), "finished_at": None,
        "command": command if command is not None else sys.argv,
        "config": cfg.model_dump(mode="json"), "n_cases": len(cases), "environment": env,
    }
    run.write_meta(meta)
    handle = nvml_handle(env.get("gpu_uuid")) if device.type == "cuda" else None
    rows: list[dict[str, Any]] = []
    status = "interrupted"
    try:
        with _progress(progress, len(cases)) as update:
            for case in cases:
                update(case.label())
                row = measure_case(case, device, policy, handle)
                run.append(row)
                rows.append(row)
                update(None)
        status = "completed"
    finally:
        meta.update(status=status, finished_at=_now())
        run.write_meta(meta)
        run.close()
    return SweepResult(run.path, rows, meta)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[str | None], None]]:
    """Yields ``update``: ``update(label)`` names the case starting, ``update(None)`` counts it done.

    A Rich progress bar on stderr, so that stdout stays clean for data; a no-op when disabled.
    """
    if not enabled:
        yield lambda label: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   console=Console(stderr=True))
    task = bar.add_task("starting", total=total)

    def update(label: str | None) -> None:
        if label is None:
            bar.advance(task)
        else:
            bar.update(task, description=label)

    with bar:
        yield update

"""A sweep: expand the config into cases, measure each (in a worker), append each row as it finishes; resume the rest."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pydantic import ValidationError

from flashbench.cases import CASE_FIELDS, Case
from flashbench.config import SweepConfig, expand_cases, format_validation_error
from flashbench.errors import UserError
from flashbench.interrupts import Interrupt
from flashbench.isolation import (Executor, InProcessExecutor, Interrupted, WorkerExecutor,
                                  WorkerStartError)
from flashbench.plugins import load_plugins
from flashbench.store import RunFolder, check_root, create_run, find_run, open_run, read_meta, \
    read_rows

__all__ = ["Interrupted", "SweepFailed", "SweepResult", "resume_sweep", "run_sweep"]

# A resumed run must be measured where it began: these must not change between sessions.
_SAME_ENVIRONMENT = ("device", "gpu_name", "driver", "torch", "triton")


class SweepFailed(RuntimeError):
    """The sweep could not go on (no worker would start); the rows so far are kept."""


@dataclass
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]  # every row of the run, those of earlier sessions included
    meta: dict[str, Any]
    measured: int  # cases measured by this call

    @property
    def status(self) -> str:
        return self.meta["status"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _key(case: dict[str, Any]) -> tuple:
    return tuple(case[f] for f in CASE_FIELDS)


def run_sweep(cfg: SweepConfig, out_root: Path, *, command: list[str] | None = None,
              progress: bool = True, isolate: bool = True,
              plugins: Sequence[str | Path] = ()) -> SweepResult:
    """Run every case of ``cfg`` into a new folder under ``out_root``; a failing case is a row.

    With ``isolate`` (the default) cases run in a worker process and this process never touches
    CUDA. Ctrl-C or SIGTERM ends the sweep early with status ``interrupted`` (see
    flashbench.interrupts); ``resume_sweep`` finishes it. Raises Interrupted when stopped before
    the first case (nothing written) and SweepFailed when no worker would start.
    """
    plugin_files = load_plugins(list(plugins))
    cases = expand_cases(cfg)
    check_root(out_root)  # an unwritable folder is bad input, found before anything starts
    with Interrupt(raise_on_abandon=not isolate) as interrupt:
        executor = _start(cfg, plugin_files, isolate, interrupt)
        try:
            run = create_run(out_root)
            run.lock()
            meta: dict[str, Any] = {
                "run_id": run.path.name, "status": "running", "started_at": _now(),
                "finished_at": None, "command": command if command is not None else sys.argv,
                "config": cfg.model_dump(mode="json"), "n_cases": len(cases),
                "plugins": plugin_files, "isolated": isolate,
                "environment": executor.environment,
            }
            return _sweep(run, meta, cases, [], executor, interrupt, cfg.case_timeout_s, progress)
        finally:
            executor.close()


def resume_sweep(ref: str | Path, out_root: Path, *, command: list[str] | None = None,
                 progress: bool = True, isolate: bool = True, plugins: Sequence[str | Path] = (),
                 case_timeout_s: float | None = None) -> SweepResult:
    """Run the cases of an earlier run that have no row yet, appending to the same folder.

    The run's own config and plugins decide the cases, so the finished run holds exactly the
    cases of an uninterrupted one, each once. A torn last line is cut (its case runs again).
    """
    path = find_run(ref, out_root)
    meta = read_meta(path)
    if not isinstance(meta.get("config"), dict) or "run_id" not in meta:
        raise UserError(f"--resume {ref}: {path} is not a flashbench run "
                        f"(no meta.json with the run's config)")
    source = str(path / "meta.json")
    config = meta["config"] | ({} if case_timeout_s is None else {"case_timeout_s": case_timeout_s})
    if not isolate:
        from flashbench.measure import select_device

        select_device(str(config.get("device", "auto")))  # before a plugin can import triton
    try:
        plugin_files = load_plugins([*meta.get("plugins", []), *map(str, plugins)])
    except UserError as e:  # a plugin the run used may have moved since
        raise UserError(f"--resume {ref}: {e}") from None
    try:
        cfg = SweepConfig.model_validate(config)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source)) from None
    cases = expand_cases(cfg)
    run = open_run(path)
    try:
        rows = read_rows(path) if run.results_path.exists() else []
        done = {_key(r) for r in rows}
        todo = [c for c in cases if _key(c.to_dict()) not in done]
        if not todo:
            if meta.get("status") != "completed":
                meta.update(status="completed", finished_at=_now())
                run.write_meta(meta)
            run.close()
            return SweepResult(path, rows, meta, 0)
        with Interrupt(raise_on_abandon=not isolate) as interrupt:
            executor = _start(cfg, plugin_files, isolate, interrupt)
            try:
                _check_same_environment(meta.get("environment") or {}, executor.environment,
                                        path)
                if run.drop_torn_tail():
                    print(f"warning: {run.results_path}: cut a torn last line; its case runs "
                          f"again", file=sys.stderr)
                meta.update(status="running", finished_at=None, plugins=plugin_files,
                            n_cases=len(cases), resumed=[*meta.get("resumed", []), {
                                "at": _now(), "isolated": isolate,
                                "command": command if command is not None else sys.argv}])
                return _sweep(run, meta, todo, rows, executor, interrupt, cfg.case_timeout_s,
                              progress)
            finally:
                executor.close()
    finally:
        run.close()


def _start(cfg: SweepConfig, plugin_files: list[str], isolate: bool,
           interrupt: Interrupt) -> Executor:
    timing = cfg.timing.model_dump()
    try:
        executor: Executor = (
            WorkerExecutor(cfg.device, plugin_files, cfg.backends, timing, interrupt)
            if isolate else InProcessExecutor(cfg.device, timing))
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the first case; nothing was written") from None
    except WorkerStartError as e:
        raise SweepFailed(str(e)) from None
    if interrupt.stop:
        executor.close()
        raise Interrupted("interrupted before the first case; nothing was written")
    return executor


def _check_same_environment(then: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    changed = [f"{k} {then.get(k)!r} then, {now.get(k)!r} now" for k in _SAME_ENVIRONMENT
               if then.get(k) != now.get(k)]
    if changed:
        raise UserError(f"--resume {path}: this machine is not where the run began "
                        f"({'; '.join(changed)}); one run must not mix environments")


def _sweep(run: RunFolder, meta: dict[str, Any], todo: list[Case], rows: list[dict[str, Any]],
           executor: Executor, interrupt: Interrupt, timeout_s: float,
           progress: bool) -> SweepResult:
    """Measure ``todo`` into ``run``, each row on disk before the next case starts."""
    run.write_meta(meta)
    status, measured = "interrupted", 0
    try:
        with _progress(progress, len(todo)) as update:
            for case in todo:
                if interrupt.stop:
                    break
                update(case.label())
                row = executor.measure(case, timeout_s)
                if row is None:  # abandoned: no row, so a resume measures it
                    break
                run.append(row)
                rows.append(row)
                measured += 1
                update(None)
            else:
                status = "completed"
    except KeyboardInterrupt:  # abandoned in this process (--no-isolate)
        status = "interrupted"
    except WorkerStartError as e:
        status = "failed"
        meta["error"] = str(e)
        raise SweepFailed(f"{e}; the {len(rows)} rows so far are kept in {run.path} "
                          f"(flashbench run --resume {run.path} goes on)") from None
    except BaseException as e:
        status = "failed"
        meta["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        meta.update(status=status, finished_at=_now())
        run.write_meta(meta)
        run.close()
    return SweepResult(run.path, rows, meta, measured)


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

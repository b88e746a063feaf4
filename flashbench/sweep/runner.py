"""A sweep: expand the config into cases, measure each (in a worker), append each row as it finishes; resume the rest."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from flashbench.core.cases import CASE_FIELDS, Case
from flashbench.core.config import SweepConfig, expand_cases, validate_config
from flashbench.sweep.devices import (SAME_ENVIRONMENT, Device, check_same_environment, parse_devices,
                                row_device_fields, start_all)
from flashbench.core.errors import UserError
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.executors import (Executor, InProcessExecutor, Interrupted, WorkerExecutor,
                                  WorkerStartError)
from flashbench.sweep.parallel import measure_in_parallel
from flashbench.core.plugins import load_plugins
from flashbench.sweep.progress import progress as show_progress
from flashbench.sweep.schedule import comparison_groups, interpreter_warning, longest_first
from flashbench.sweep.shard import Shard, shard_cases
from flashbench.results.store import RunFolder, check_root, create_run, find_run, open_run, read_meta, \
    read_rows

__all__ = ["Interrupted", "SweepFailed", "SweepResult", "resume_sweep", "run_sweep"]



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
              plugins: Sequence[str | Path] = (), devices: str | Sequence[str] | None = None,
              shard: Shard | None = None) -> SweepResult:
    """Run every case of ``cfg`` into a new folder under ``out_root``; a failing case is a row.

    With ``isolate`` (the default) cases run in a worker process and this process never touches
    CUDA. ``devices`` (``"all"``, ``"0,2"``, ``["cpu", "cpu"]``: see flashbench.sweep.devices) runs
    one worker per device at once; ``shard`` runs only that part of the cases (flashbench.sweep.shard).
    Ctrl-C or SIGTERM ends the sweep early with status ``interrupted`` (see
    flashbench.sweep.interrupts); ``resume_sweep`` finishes it. Raises Interrupted when stopped before
    the first case (nothing written) and SweepFailed when no worker would start.
    """
    plugin_files = load_plugins(list(plugins))
    grid = expand_cases(cfg)
    cases = grid if shard is None else shard_cases(grid, shard, cfg.timing.model_dump())
    pool = None if devices is None else _parse_pool(devices, cfg, isolate)
    check_root(out_root)  # an unwritable folder is bad input, found before anything starts
    with Interrupt(raise_on_abandon=not isolate) as interrupt:
        executors = _start(cfg, plugin_files, isolate, interrupt, pool)
        try:
            run = create_run(out_root)
            run.lock()
            run.results_path.touch()  # a run holds both files, even one of an empty shard
            meta: dict[str, Any] = {
                "run_id": run.path.name, "status": "running", "started_at": _now(),
                "finished_at": None, "command": command if command is not None else sys.argv,
                "config": cfg.model_dump(mode="json"), "n_cases": len(cases),
                "plugins": plugin_files, "isolated": isolate,
                "environment": executors[0].environment,
            }
            if shard is not None:
                meta["shard"] = shard.to_meta() | {"grid_cases": len(grid)}
            if pool is not None:
                meta["devices"] = _devices_meta(pool, executors)
            return _sweep(run, meta, cases, [], executors, pool, interrupt, cfg, progress)
        finally:
            for executor in executors:
                executor.close()


def resume_sweep(ref: str | Path, out_root: Path, *, command: list[str] | None = None,
                 progress: bool = True, isolate: bool = True, plugins: Sequence[str | Path] = (),
                 case_timeout_s: float | None = None,
                 devices: str | Sequence[str] | None = None) -> SweepResult:
    """Run the cases of an earlier run that have no row yet, appending to the same folder.

    The run's own config, plugins and shard decide the cases, so the finished run holds exactly
    the cases of an uninterrupted one, each once. A torn last line is cut (its case runs again).
    The run's own devices measure them, unless ``devices`` says otherwise.
    """
    path = find_run(ref, out_root)
    meta = read_meta(path)
    if not isinstance(meta.get("config"), dict) or "run_id" not in meta:
        raise UserError(f"--resume {ref}: {path} is not a flashbench run "
                        f"(no meta.json with the run's config)")
    source = str(path / "meta.json")
    config = meta["config"] | ({} if case_timeout_s is None else {"case_timeout_s": case_timeout_s})
    if not isolate:
        from flashbench.measure.case import select_device

        select_device(str(config.get("device", "auto")))  # before a plugin can import triton
    try:
        plugin_files = load_plugins([*meta.get("plugins", []), *map(str, plugins)])
    except UserError as e:  # a plugin the run used may have moved since
        raise UserError(f"--resume {ref}: {e}") from None
    cfg = validate_config(config, source)
    cases = expand_cases(cfg)
    if isinstance(meta.get("shard"), dict):
        cases = shard_cases(cases, Shard.from_meta(meta["shard"]), cfg.timing.model_dump())
    if devices is None and isinstance(meta.get("devices"), list):
        devices = [d["device"].removeprefix("cuda:") for d in meta["devices"]]
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
        try:
            pool = None if devices is None else _parse_pool(devices, cfg, isolate)
        except UserError as e:
            raise UserError(f"--resume {ref}: {e}") from None
        with Interrupt(raise_on_abandon=not isolate) as interrupt:
            executors = _start(cfg, plugin_files, isolate, interrupt, pool)
            try:
                _check_same_environment(meta.get("environment") or {},
                                        executors[0].environment, path)
                if run.drop_torn_tail():
                    print(f"warning: {run.results_path}: cut a torn last line; its case runs "
                          f"again", file=sys.stderr)
                session: dict[str, Any] = {
                    "at": _now(), "isolated": isolate,
                    "command": command if command is not None else sys.argv}
                if pool is not None:
                    session["devices"] = _devices_meta(pool, executors)
                meta.update(status="running", finished_at=None, plugins=plugin_files,
                            n_cases=len(cases), resumed=[*meta.get("resumed", []), session])
                return _sweep(run, meta, todo, rows, executors, pool, interrupt, cfg, progress)
            finally:
                for executor in executors:
                    executor.close()
    finally:
        run.close()


def _parse_pool(devices: str | Sequence[str], cfg: SweepConfig, isolate: bool) -> list[Device]:
    pool = parse_devices(devices, config_device=cfg.device)
    if not isolate:
        raise UserError("--devices runs one worker process per device; it cannot be combined "
                        "with --no-isolate")
    return pool


def _devices_meta(pool: list[Device], executors: list[Executor]) -> list[dict[str, Any]]:
    return [{"device": d.name, "index": d.index, "gpu_name": e.environment.get("gpu_name"),
             "gpu_uuid": e.environment.get("gpu_uuid")} for d, e in zip(pool, executors)]


def _start(cfg: SweepConfig, plugin_files: list[str], isolate: bool, interrupt: Interrupt,
           pool: list[Device] | None) -> list[Executor]:
    """One executor for the sweep's device, or one worker per device of ``pool``, all ready."""
    timing = cfg.timing.model_dump()
    try:
        if pool is not None:
            executors: list[Executor] = list(start_all(pool, lambda d: WorkerExecutor(
                d.kind, plugin_files, cfg.backends, timing, interrupt, env=d.worker_env(),
                wait=False)))
            try:
                check_same_environment(pool, [e.environment for e in executors])
            except UserError:
                for executor in executors:
                    executor.close()
                raise
        else:
            executors = [WorkerExecutor(cfg.device, plugin_files, cfg.backends, timing, interrupt)
                         if isolate else InProcessExecutor(cfg.device, timing)]
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the first case; nothing was written") from None
    except WorkerStartError as e:
        raise SweepFailed(str(e)) from None
    if interrupt.stop:
        for executor in executors:
            executor.close()
        raise Interrupted("interrupted before the first case; nothing was written")
    return executors


def _check_same_environment(then: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """A resumed run must be measured where it began (SAME_ENVIRONMENT: model, driver, libraries)."""
    changed = [f"{k} {then.get(k)!r} then, {now.get(k)!r} now" for k in SAME_ENVIRONMENT
               if then.get(k) != now.get(k)]
    if changed:
        raise UserError(f"--resume {path}: this machine is not where the run began "
                        f"({'; '.join(changed)}); one run must not mix environments")


def _sweep(run: RunFolder, meta: dict[str, Any], todo: list[Case], rows: list[dict[str, Any]],
           executors: list[Executor], pool: list[Device] | None, interrupt: Interrupt,
           cfg: SweepConfig, progress: bool) -> SweepResult:
    """Measure ``todo`` into ``run``, each row on disk as soon as its case finishes.

    One executor measures the cases in order; a pool deals whole comparison groups, longest
    first, to whichever worker is free (flashbench.sweep.parallel).
    """
    run.write_meta(meta)
    if all(e.device == "cpu" for e in executors):
        note = interpreter_warning([c for c in todo if c.backend == "triton"])
        if note:
            print(note, file=sys.stderr)
    status, measured = "interrupted", 0
    # Every row says which device measured it (the GPU's index and UUID).
    stamps = [row_device_fields(device, e.device, e.environment)
              for device, e in zip(pool or [None], executors)]
    try:
        with show_progress(progress, len(todo)) as shown:
            def keep(worker: int, row: dict[str, Any]) -> None:
                nonlocal measured
                row.update(stamps[worker])
                run.append(row)
                rows.append(row)
                measured += 1
                shown.done(row)

            if pool is None:
                completed = _in_order(todo, executors[0], interrupt, cfg.case_timeout_s, keep,
                                      shown.start)
            else:
                names = [d.name if d.kind == "cuda" else f"cpu worker {d.index}" for d in pool]
                outcome = measure_in_parallel(
                    executors, names,
                    longest_first(comparison_groups(todo), cfg.timing.model_dump()), interrupt,
                    cfg.case_timeout_s, keep,
                    lambda worker, case: shown.start(f"{names[worker]}: {case.label()}"))
                if outcome.retired:
                    meta["retired_workers"] = outcome.retired
                completed = outcome.completed
            if completed:
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


def _in_order(todo: list[Case], executor: Executor, interrupt: Interrupt, timeout_s: float,
              keep: Callable[[int, dict[str, Any]], None],
              starting: Callable[[str], None]) -> bool:
    """One executor, case after case; False when stopped before the last one."""
    for case in todo:
        if interrupt.stop:
            return False
        starting(case.label())
        row = executor.measure(case, timeout_s)
        if row is None:  # abandoned: no row, so a resume measures it
            return False
        keep(0, row)
    return True

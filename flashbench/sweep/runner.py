"""A sweep: expand the config into cases, measure each (in a worker), append each row as it finishes; resume the rest."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from flashbench.core.cases import Case, RunStatus, case_key
from flashbench.core.config import SweepConfig, validate_config
from flashbench.core.grid import expand_cases
from flashbench.core.environment import SAME_MACHINE, environment_differences
from flashbench.core.errors import UserError
from flashbench.core.load import load_average
from flashbench.core.plugins import load_plugins
from flashbench.results.reading import find_run, read_meta, read_rows
from flashbench.results.store import (RunFolder, WriteFailed, check_root, create_run,
                                      open_run)
from flashbench.sweep.device_lock import LockMode, device_locks
from flashbench.sweep.devices import Device, row_device_fields
from flashbench.sweep.executors import Executor, Interrupted, WorkerStartError
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.parallel import measure_in_parallel
from flashbench.output.progress import Progress, progress as show_progress
from flashbench.sweep.schedule import (comparison_groups, interpreter_warning, longest_first,
                                       step_label)
from flashbench.sweep.shard import Shard, shard_cases
from flashbench.sweep.startup import (SweepFailed, close_all, devices_meta, parse_pool,
                                      start_executors)

__all__ = ["Interrupted", "SweepFailed", "SweepOptions", "SweepResult", "resume_sweep",
           "run_sweep"]


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs, beside what it measures (the config)."""

    command: list[str] = field(default_factory=lambda: list(sys.argv))  # recorded in meta.json
    progress: bool = True
    isolate: bool = True  # cases in a worker process (False: here, for a debugger)
    plugins: Sequence[str] = ()  # plugin files, loaded here already (flashbench.core.plugins)
    devices: str | Sequence[str] | None = None  # --devices: one worker per device
    device_lock: LockMode = "wait"  # a device another sweep is measuring on: wait, refuse, share


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


def run_sweep(cfg: SweepConfig, out_root: Path, options: SweepOptions = SweepOptions(),
              shard: Shard | None = None) -> SweepResult:
    """Run every case of ``cfg`` (or of ``shard``'s part) into a new folder under ``out_root``.

    A failing case is a row. With ``options.isolate`` (the default) cases run in a worker
    process and this process never touches CUDA; ``options.devices`` (``"all"``, ``"0,2"``,
    ``["cpu", "cpu"]``: flashbench.sweep.devices) runs one worker per device at once. Ctrl-C or
    SIGTERM ends the sweep early with status ``interrupted`` (flashbench.sweep.interrupts);
    ``resume_sweep`` finishes it. Raises Interrupted when stopped before the first case
    (nothing written) and SweepFailed when no worker would start. meta.json records the load
    averages before and after (flashbench.core.load).
    """
    load_before = load_average()  # before this sweep's own workers start and add to it
    # Loaded already (the config's backend names needed them); the worker imports them again.
    plugin_files = [str(Path(p).expanduser().resolve()) for p in options.plugins]
    grid = expand_cases(cfg)
    cases = grid if shard is None else shard_cases(grid, shard, cfg.timing)
    pool = None if options.devices is None else parse_pool(options.devices, cfg, options.isolate)
    check_root(out_root)  # an unwritable folder is bad input, found before anything starts
    with Interrupt(raise_on_abandon=not options.isolate) as interrupt:
        executors = start_executors(cfg, plugin_files, options.isolate, interrupt, pool)
        try:
            with _locked(executors, options, interrupt):
                return _new_run(cfg, out_root, options, shard, grid, cases, plugin_files,
                                executors, pool, interrupt, load_before)
        finally:
            close_all(executors)


def _locked(executors: list[Executor], options: SweepOptions, interrupt: Interrupt):
    """The devices of these executors, held for this sweep (flashbench.sweep.device_lock)."""
    return device_locks([e.environment for e in executors], " ".join(options.command),
                        mode=options.device_lock, interrupt=interrupt,
                        log=lambda line: print(line, file=sys.stderr))


def _new_run(cfg: SweepConfig, out_root: Path, options: SweepOptions, shard: Shard | None,
             grid: list[Case], cases: list[Case], plugin_files: list[str],
             executors: list[Executor], pool: list[Device] | None,
             interrupt: Interrupt, load_before: list[float] | None) -> SweepResult:
    run = create_run(out_root)
    run.lock()
    meta: dict[str, Any] = {
        "run_id": run.path.name, "status": RunStatus.RUNNING, "started_at": _now(),
        "finished_at": None, "command": options.command,
        "config": cfg.model_dump(mode="json"), "n_cases": len(cases),
        "plugins": plugin_files, "isolated": options.isolate,
        "environment": executors[0].environment,
        # 1-, 5- and 15-minute load averages; load_after is written when the sweep ends.
        "load_before": load_before, "load_after": None,
    }
    if shard is not None:
        meta["shard"] = shard.to_meta() | {"grid_cases": len(grid)}
    if pool is not None:
        meta["devices"] = devices_meta(pool, executors)
    return _sweep(run, meta, cases, [], executors, pool, interrupt, cfg,
                  options.progress, new=True)


def _resumable(ref: str | Path, out_root: Path, case_timeout_s: float | None
               ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The run folder, its meta and the config to resume it with (bad input if not a run)."""
    path = find_run(ref, out_root)
    meta = read_meta(path)
    if not isinstance(meta.get("config"), dict) or "run_id" not in meta:
        raise UserError(f"--resume {ref}: {path} is not a flashbench run "
                        f"(no meta.json with the run's config)")
    timeout = {} if case_timeout_s is None else {"case_timeout_s": case_timeout_s}
    return path, meta, meta["config"] | timeout


def resume_sweep(ref: str | Path, out_root: Path, options: SweepOptions = SweepOptions(),
                 case_timeout_s: float | None = None) -> SweepResult:
    """Run the cases of an earlier run that have no row yet, appending to the same folder.

    The run's own config, plugins and shard decide the cases, so the finished run holds exactly
    the cases of an uninterrupted one, each once. A torn last line is cut (its case runs again).
    The run's own devices measure them, unless ``options.devices`` says otherwise.
    """
    load_before = load_average()
    path, meta, config = _resumable(ref, out_root, case_timeout_s)
    if not options.isolate:
        from flashbench.measure.device import select_device

        select_device(str(config.get("device", "auto")))  # before a plugin can import triton
    try:
        plugin_files = load_plugins([*meta.get("plugins", []), *map(str, options.plugins)])
    except UserError as e:  # a plugin the run used may have moved since
        raise UserError(f"--resume {ref}: {e}") from None
    cfg = validate_config(config, str(path / "meta.json"))
    cases = expand_cases(cfg)
    if isinstance(meta.get("shard"), dict):
        cases = shard_cases(cases, Shard.from_meta(meta["shard"]), cfg.timing)
    devices = options.devices
    if devices is None and isinstance(meta.get("devices"), list):
        devices = [d["device"].removeprefix("cuda:") for d in meta["devices"]]
    run = open_run(path)
    try:
        _mend(run)
        rows = read_rows(path) if run.results_path.exists() else []
        done = {case_key(r) for r in rows}
        _refuse_foreign(rows, cases, run.results_path)
        todo = [c for c in cases if case_key(c.to_dict()) not in done]
        if not todo:
            # A meta.json that lost its count (damage) gets it back from the config.
            if meta.get("status") != RunStatus.COMPLETED or meta.get("n_cases") != len(cases):
                meta.update(status=RunStatus.COMPLETED, n_cases=len(cases),
                            finished_at=meta.get("finished_at") or _now())
                run.write_meta(meta)
            return SweepResult(path, rows, meta, 0)
        try:
            pool = None if devices is None else parse_pool(devices, cfg, options.isolate)
        except UserError as e:
            raise UserError(f"--resume {ref}: {e}") from None
        return _resume_into(run, meta, cfg, cases, todo, rows, pool, plugin_files, options,
                            load_before)
    finally:
        run.close()


def _refuse_foreign(rows: list[dict], cases: list[Case], path: Path) -> None:
    """A row of a case the run's config does not hold is damage (or another run's row): a
    resume would run the real case again beside it, and the run would hold both."""
    planned = {case_key(c.to_dict()) for c in cases}
    for number, row in enumerate(rows, start=1):
        if case_key(row) not in planned:
            raise UserError(f"--resume: {path}: row {number} ({Case.from_dict(row).label()}) "
                            f"is not a case of the run's config; the file is damaged or "
                            f"another run's")


def _mend(run: RunFolder) -> None:
    """Before a resume reads which cases are done: the end of results.jsonl mended, the
    temporary files of a writer that died removed."""
    run.remove_stale_temporaries()
    mended = run.repair_tail()
    if mended == "kept":
        print(f"warning: {run.results_path}: its last row had no newline; kept, newline "
              f"added", file=sys.stderr)
    elif mended == "cut":
        print(f"warning: {run.results_path}: cut a torn last line; its case runs again",
              file=sys.stderr)


def _resume_into(run: RunFolder, meta: dict[str, Any], cfg: SweepConfig, cases: list[Case],
                 todo: list[Case], rows: list[dict[str, Any]], pool: list[Device] | None,
                 plugin_files: list[str], options: SweepOptions,
                 load_before: list[float] | None) -> SweepResult:
    with Interrupt(raise_on_abandon=not options.isolate) as interrupt:
        executors = start_executors(cfg, plugin_files, options.isolate, interrupt, pool)
        try:
            changed = [f"{k} {a!r} then, {b!r} now" for k, a, b in environment_differences(
                meta.get("environment"), executors[0].environment, SAME_MACHINE)]
            if changed:
                raise UserError(f"--resume {run.path}: this machine is not where the run "
                                f"began ({'; '.join(changed)}); one run must not mix "
                                f"environments")
            session: dict[str, Any] = {"at": _now(), "isolated": options.isolate,
                                       "command": options.command, "load_before": load_before,
                                       "load_after": None}
            if pool is not None:
                session["devices"] = devices_meta(pool, executors)
            meta.update(status=RunStatus.RUNNING, finished_at=None, plugins=plugin_files,
                        n_cases=len(cases), resumed=[*meta.get("resumed", []), session])
            with _locked(executors, options, interrupt):
                return _sweep(run, meta, todo, rows, executors, pool, interrupt, cfg,
                              options.progress, new=False)
        finally:
            close_all(executors)


def _sweep(run: RunFolder, meta: dict[str, Any], todo: list[Case], rows: list[dict[str, Any]],
           executors: list[Executor], pool: list[Device] | None, interrupt: Interrupt,
           cfg: SweepConfig, progress: bool, new: bool) -> SweepResult:
    """Measure ``todo`` into ``run`` (``new``: made by this call), each row on disk as soon as
    its case finishes."""
    _begin(run, meta, new=new)
    if all(e.device == "cpu" for e in executors):
        note = interpreter_warning([c for c in todo if c.backend == "triton"])
        if note:
            print(note, file=sys.stderr)
    status, measured = RunStatus.INTERRUPTED, 0
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

            if _measure_all(todo, executors, pool, interrupt, cfg, keep, shown, meta):
                status = RunStatus.COMPLETED
        if status == RunStatus.COMPLETED and run.vanished():
            raise WriteFailed(f"{run.results_path} was deleted during the run")
    except KeyboardInterrupt:  # abandoned in this process (--no-isolate)
        status = RunStatus.INTERRUPTED
    except (WorkerStartError, WriteFailed) as e:
        status = RunStatus.FAILED
        meta["error"] = str(e)
        raise SweepFailed(f"{e}; the {len(rows)} rows so far are kept in {run.path} "
                          f"(flashbench run --resume {run.path} goes on)") from None
    except BaseException as e:
        status = RunStatus.FAILED
        meta["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        # This session's own figures: a resumed session's go into its entry of "resumed".
        (meta if new else meta["resumed"][-1])["load_after"] = load_average()
        unrecorded = _finish(run, meta, status)
    if unrecorded is not None:
        raise SweepFailed(f"{unrecorded}; its {len(rows)} rows are on disk, but meta.json still "
                          f"says the run is running (flashbench run --resume {run.path} "
                          f"records it)")
    return SweepResult(run.path, rows, meta, measured)


def _begin(run: RunFolder, meta: dict[str, Any], *, new: bool) -> None:
    """The run's files before the first case; if the disk refuses them, nothing is measured
    and a new run's folder is removed again (bad input: no room to write results)."""
    try:
        if not run.results_path.exists():
            try:
                run.results_path.touch()  # a run holds both files, even one of an empty shard
            except OSError as e:
                raise WriteFailed(f"cannot write {run.results_path}: {e.strerror or e}") from None
        run.write_meta(meta)
    except WriteFailed as e:
        run.close()
        if new:
            shutil.rmtree(run.path, ignore_errors=True)
        raise UserError(f"{e}; nothing was measured") from None


def _finish(run: RunFolder, meta: dict[str, Any], status: RunStatus) -> WriteFailed | None:
    """Record how the run ended; the failure when the disk refuses even that. meta.json then
    keeps its last state ("running"), which --resume accepts: the rows on disk are what count."""
    in_flight = sys.exc_info()[0] is not None  # called from a finally: another failure?
    meta.update(status=status, finished_at=_now())
    failed = None
    try:
        run.write_meta(meta)
    except WriteFailed as e:
        failed = e
        if in_flight:  # that failure is the one reported: say this one too
            print(f"warning: {e}; meta.json still says the run is running", file=sys.stderr)
    run.close()
    return failed


def _measure_all(todo: list[Case], executors: list[Executor], pool: list[Device] | None,
                 interrupt: Interrupt, cfg: SweepConfig,
                 keep: Callable[[int, dict[str, Any]], None], shown: Progress,
                 meta: dict[str, Any]) -> bool:
    """One executor measures the cases in order; a pool deals whole comparison groups, longest
    first, to whichever worker is free (flashbench.sweep.parallel). False when stopped early."""
    if pool is None:
        groups = comparison_groups(todo) if cfg.timing.interleave else [[c] for c in todo]
        for group in groups:
            if interrupt.stop:
                return False
            for kind, value in executors[0].measure_group(group, cfg.case_timeout_s):
                if kind == "row":
                    keep(0, value)
                elif kind == "abandoned":  # no row for the rest, so a resume measures them
                    return False
                else:
                    shown.start(step_label(kind, value))
        return True
    names = [d.name if d.kind == "cuda" else f"cpu worker {d.index}" for d in pool]
    outcome = measure_in_parallel(
        executors, names, longest_first(comparison_groups(todo), cfg.timing), interrupt,
        cfg.case_timeout_s, keep,
        lambda worker, kind, value: shown.start(f"{names[worker]}: {step_label(kind, value)}"),
        interleave=cfg.timing.interleave)
    if outcome.retired:
        meta["retired_workers"] = outcome.retired
    return outcome.completed

"""The executors of one sweep, started and ready: one worker, one per device (``--devices``), or this process."""

from __future__ import annotations

from typing import Any, Sequence

from flashbench.core.config import SweepConfig
from flashbench.core.errors import UserError
from flashbench.sweep.devices import Device, check_same_environment, parse_devices
from flashbench.sweep.executors import (Executor, InProcessExecutor, Interrupted, WorkerExecutor,
                                        WorkerStartError, plugin_import_timeout_s)
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.parallel import start_all

__all__ = ["SweepFailed", "close_all", "devices_meta", "parse_pool", "start_executors"]


class SweepFailed(RuntimeError):
    """The sweep could not go on (no worker would start); the rows so far are kept."""


def parse_pool(devices: str | Sequence[str], cfg: SweepConfig, isolate: bool) -> list[Device]:
    pool = parse_devices(devices, config_device=cfg.device)
    if not isolate:
        raise UserError("--devices runs one worker process per device; it cannot be combined "
                        "with --no-isolate")
    return pool


def devices_meta(pool: list[Device], executors: list[Executor]) -> list[dict[str, Any]]:
    """What meta.json records of a multi-device run's devices."""
    return [{"device": d.name, "index": d.index, "gpu_name": e.environment.get("gpu_name"),
             "gpu_uuid": e.environment.get("gpu_uuid")} for d, e in zip(pool, executors)]


def close_all(executors: Sequence[Executor]) -> None:
    for executor in executors:
        executor.close()


def start_executors(cfg: SweepConfig, plugin_files: list[str], isolate: bool,
                    interrupt: Interrupt, pool: list[Device] | None) -> list[Executor]:
    """One executor for the sweep's device, or one worker per device of ``pool``, all ready.

    Raises Interrupted when stopped while they start, SweepFailed when a worker would not
    start, and UserError when the devices of ``pool`` differ (one run, one environment).
    """
    # The worker's import of the plugins is their code, which may hang like a case.
    plugin_timeout_s = plugin_import_timeout_s(cfg.case_timeout_s)
    try:
        if pool is not None:
            executors: list[Executor] = list(start_all(pool, lambda d: WorkerExecutor(
                d.kind, plugin_files, cfg.backends, cfg.timing, interrupt, env=d.worker_env(),
                wait=False, plugin_timeout_s=plugin_timeout_s,
                fp32_precision=cfg.fp32_precision)))
            try:
                check_same_environment(pool, [e.environment for e in executors])
            except UserError:
                close_all(executors)
                raise
        elif isolate:
            executors = [WorkerExecutor(cfg.device, plugin_files, cfg.backends, cfg.timing,
                                        interrupt, plugin_timeout_s=plugin_timeout_s,
                                        fp32_precision=cfg.fp32_precision)]
        else:
            executors = [InProcessExecutor(cfg.device, cfg.timing, cfg.fp32_precision)]
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the first case; nothing was written") from None
    except WorkerStartError as e:
        raise SweepFailed(str(e)) from None
    if interrupt.stop:
        close_all(executors)
        raise Interrupted("interrupted before the first case; nothing was written")
    return executors

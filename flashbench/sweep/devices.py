"""``--devices``: which devices a sweep's workers own, one worker each, and what each row records of its device.

``all`` is every GPU this process can see, ``0,2,3`` those GPUs, ``cpu,cpu`` two CPU workers
(for tests and CI: the dealing of cases is the same). GPU indices are CUDA's numbering in the
``flashbench`` process, after its own ``CUDA_VISIBLE_DEVICES``. Each GPU worker is pinned to its
GPU through ``CUDA_VISIBLE_DEVICES`` in its environment, so it sees that GPU as ``cuda:0``;
this process counts GPUs through NVML (as torch's NVML-based check does) and never creates a
CUDA context.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence, TypeVar

from flashbench.core.errors import UserError

__all__ = ["SAME_ENVIRONMENT", "Device", "check_same_environment", "parse_devices",
           "row_device_fields", "start_all", "visible_gpu_count"]

# Workers of one run must agree on these, as a resumed run must agree with its first session.
SAME_ENVIRONMENT: tuple[str, ...] = ("device", "gpu_name", "driver", "torch", "triton")


@dataclass(frozen=True)
class Device:
    """One worker's device: a GPU by index, or the CPU (``index`` numbers the CPU workers)."""

    kind: Literal["cpu", "cuda"]
    index: int

    @property
    def name(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else "cpu"

    def worker_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """What the worker's environment must add: for a GPU, only that GPU visible."""
        if self.kind == "cpu":
            return {}
        environ = os.environ if environ is None else environ
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip():
            # This process's GPU i is the i-th entry of its own list (an index, a UUID or MIG).
            entries = [e.strip() for e in visible.split(",")]
            return {"CUDA_VISIBLE_DEVICES": entries[self.index]}
        return {"CUDA_VISIBLE_DEVICES": str(self.index)}


def visible_gpu_count() -> int:
    """GPUs this process can see, without creating a CUDA context (and without torch if no NVML)."""
    from flashbench.measure.telemetry import nvml_module

    nvml = nvml_module()
    try:
        if nvml is None or nvml.nvmlDeviceGetCount() == 0:
            return 0
    except Exception:  # NVMLError: no usable GPU
        return 0
    import torch

    # NVML-based: honours CUDA_VISIBLE_DEVICES and leaves CUDA uninitialized.
    return torch.cuda.device_count()


def _describe(count: int) -> str:
    return "no GPU is visible here" if count == 0 else \
        f"visible GPUs: {', '.join(map(str, range(count)))}"


def parse_devices(text: str | Sequence[str], *, config_device: str = "auto",
                  gpu_count: Callable[[], int] = visible_gpu_count) -> list[Device]:
    """``all``, GPU indices (``0,2,3``) or ``cpu`` entries (``cpu,cpu``), checked against this machine.

    ``config_device`` is the sweep's ``device``: ``cpu`` refuses GPUs and ``cuda`` refuses CPU
    workers. Bad input raises UserError with one line naming what is wrong.
    """
    given = text if isinstance(text, str) else ",".join(text)
    entries = [e.strip() for e in given.split(",") if e.strip()]
    if not entries:
        raise UserError("--devices: give 'all', GPU indices such as 0,2,3, or cpu entries "
                        "such as cpu,cpu")
    if entries == ["all"]:
        count = gpu_count()
        if count == 0:
            raise UserError("--devices all: no GPU is visible here (CPU workers: --devices "
                            "cpu,cpu)")
        devices = [Device("cuda", i) for i in range(count)]
    elif all(e == "cpu" for e in entries):
        devices = [Device("cpu", i) for i in range(len(entries))]
    else:
        indices = []
        for entry in entries:
            if entry == "cpu":
                raise UserError(f"--devices {given}: mixes cpu and GPUs; one run measures one "
                                f"kind of device")
            if not entry.isdigit():
                raise UserError(f"--devices {given}: {entry!r} is not a GPU index; give 'all', "
                                f"GPU indices such as 0,2,3, or cpu entries such as cpu,cpu")
            index = int(entry)
            if index in indices:
                raise UserError(f"--devices {given}: GPU {index} is given twice")
            indices.append(index)
        count = gpu_count()
        missing = [i for i in indices if i >= count]
        if missing:
            raise UserError(f"--devices {given}: GPU {missing[0]} is not present "
                            f"({_describe(count)})")
        devices = [Device("cuda", i) for i in indices]
    kind = devices[0].kind
    if config_device != "auto" and config_device != kind:
        raise UserError(f"--devices {given}: {'GPUs' if kind == 'cuda' else 'CPU workers'}, but "
                        f"the sweep's device is {config_device}")
    return devices


def check_same_environment(devices: Sequence[Device], environments: Sequence[dict[str, Any]]
                           ) -> None:
    """Refuse workers whose devices differ in model, driver or libraries: one run, one environment."""
    first = environments[0]
    for device, env in zip(devices[1:], environments[1:]):
        changed = [f"{k} {first.get(k)!r} on {devices[0].name}, {env.get(k)!r} on {device.name}"
                   for k in SAME_ENVIRONMENT if env.get(k) != first.get(k)]
        if changed:
            raise UserError(f"--devices: the devices differ ({'; '.join(changed)}); one run "
                            f"must not mix environments: run each kind separately")


def row_device_fields(device: Device | None, executor_device: str,
                      environment: dict[str, Any]) -> dict[str, Any]:
    """The fields every row gets: which device measured it, as this process numbers it.

    ``device`` is None for a sweep without --devices: its one worker's own device then.
    """
    if device is None:
        kind, _, index = executor_device.partition(":")
        return {"device_index": int(index) if kind == "cuda" and index else 0,
                "gpu_uuid": environment.get("gpu_uuid")}
    fields: dict[str, Any] = {"device_index": device.index,
                              "gpu_uuid": environment.get("gpu_uuid")}
    if device.kind == "cuda":
        fields["device"] = device.name  # the worker sees its GPU as cuda:0
    return fields


class _Starting(Protocol):
    def wait_ready(self) -> None: ...

    def close(self) -> None: ...


_S = TypeVar("_S", bound=_Starting)


def start_all(devices: Sequence[Device], spawn: Callable[[Device], _S]) -> list[_S]:
    """``spawn(device)`` for every device here, then wait until all are ready, at once.

    Spawning stays in this thread (a worker dies with the thread that started it); waiting,
    seconds per worker for importing torch, happens in one thread each. If any fails, all are
    closed and the first failure, in device order, raised.
    """
    started: list[_S] = []
    try:
        for device in devices:
            started.append(spawn(device))
    except BaseException:
        for executor in started:
            executor.close()
        raise
    errors: list[BaseException | None] = [None] * len(started)

    def wait(i: int) -> None:
        try:
            started[i].wait_ready()
        except BaseException as e:  # re-raised below, in the caller's thread
            errors[i] = e

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(started))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: signal handlers run in this (the main) thread between them
    failure = next((e for e in errors if e is not None), None)
    if failure is not None:
        for executor in started:
            executor.close()
        raise failure
    return started

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
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from flashbench.core.environment import SAME_MACHINE, environment_differences
from flashbench.core.errors import UserError
from flashbench.core.nvml import gpu_count
from flashbench.core.rows import device_fields

__all__ = ["Device", "check_same_environment", "default_preset", "parse_devices",
           "row_device_fields", "visible_gpu_count"]


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
    if gpu_count() == 0:
        return 0
    import torch

    # NVML-based: honours CUDA_VISIBLE_DEVICES and leaves CUDA uninitialized.
    return torch.cuda.device_count()


def default_preset(device: str | None, devices: str | None) -> str:
    """The preset ``flashbench run`` sweeps without ``--config``: the GPU one where a GPU is
    visible (and not ruled out by ``--device cpu`` or CPU workers), else the CPU one."""
    cpu_workers = devices is not None and {e.strip() for e in devices.split(",")} == {"cpu"}
    if device == "cpu" or cpu_workers:
        return "cpu"
    return "default" if visible_gpu_count() > 0 else "cpu"


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
        changed = [f"{k} {a!r} on {devices[0].name}, {b!r} on {device.name}"
                   for k, a, b in environment_differences(first, env, SAME_MACHINE)]
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
        return device_fields(int(index) if kind == "cuda" and index else 0,
                             environment.get("gpu_uuid"))
    fields = device_fields(device.index, environment.get("gpu_uuid"))
    if device.kind == "cuda":
        fields["device"] = device.name  # the worker sees its GPU as cuda:0
    return fields

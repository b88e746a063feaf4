"""The environment a run measured on: GPU, driver, libraries, clocks and this project's version."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flashbench
from flashbench.core import nvml as telemetry
from flashbench.core.source import source_commit

if TYPE_CHECKING:
    import torch

__all__ = ["capture_environment", "git_commit"]


def git_commit() -> str | None:
    """The commit of the flashbench source that runs (flashbench.core.source), or None."""
    return source_commit(Path(flashbench.__file__).resolve().parent)


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _gpu(device: torch.device) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(device)
    uuid = str(props.uuid)
    info: dict[str, Any] = {
        "gpu_name": props.name,
        "gpu_uuid": uuid if uuid.startswith("GPU-") else f"GPU-{uuid}",
        "gpu_memory_bytes": props.total_memory,
        "sm_count": props.multi_processor_count,
        "l2_bytes": props.L2_cache_size,
        "compute_capability": f"{props.major}.{props.minor}",
    }
    nvml = telemetry.nvml_module()
    handle = telemetry.nvml_handle(info["gpu_uuid"])
    if nvml is not None and handle is not None:
        try:
            info["driver"] = nvml.nvmlSystemGetDriverVersion()
            info["max_sm_clock_mhz"] = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)
            info["max_mem_clock_mhz"] = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)
            info["sm_clock_mhz"] = nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
            info["power_limit_w"] = nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
        except nvml.NVMLError as e:
            info["nvml_error"] = str(e)
    return info


def _backends(device: torch.device) -> dict[str, str]:
    """Each registered backend: 'available', or why it cannot run on ``device``."""
    from flashbench.measure.backends import registry

    out = {}
    for name, backend in registry().items():
        try:
            out[name] = backend.unavailable(device) or "available"
        except Exception as e:  # a plugin's own check failing says as much about it
            out[name] = f"its availability check failed: {type(e).__name__}: {e}"
    return out


def _missing(env: dict[str, Any]) -> list[str]:
    """What this environment cannot record or do, one line each (empty on a complete GPU box)."""
    missing = []
    if not env.get("gpu_name"):
        missing.append("no CUDA device: GPU model, UUID, memory, SMs, L2 and CUDA-event timing "
                       "are not available")
    if not env["nvml"]:
        missing.append(f"NVML ({telemetry.nvml_error()}): no driver version, clocks, power, "
                       "temperature or throttle telemetry")
    if env.get("ceilings") is None:
        missing.append("not calibrated (`flashbench calibrate`): no pct_peak_flops / pct_peak_bw")
    if not env.get("triton"):
        missing.append("triton is not installed: the triton backend cannot run")
    return missing


def capture_environment(device: torch.device) -> dict[str, Any]:
    """The record a run keeps in meta.json and `flashbench env` prints: works without a GPU."""
    import torch

    from flashbench.measure.calibrate import load_ceilings

    env: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        # Load averages count runnable tasks machine-wide, so the busy check needs every CPU,
        # not this process's affinity (flashbench.core.load).
        "cpu_count": os.cpu_count(),
        # What torch times with in this process (timing.threads sets them on a CPU first).
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _triton_version(),
        "flashbench": flashbench.__version__,
        "git_commit": git_commit(),
        "nvml": telemetry.nvml_module() is not None,
    }
    if device.type == "cuda":
        env |= _gpu(device)
    env["backends"] = _backends(device)
    env["ceilings"] = load_ceilings(env)
    env["missing"] = _missing(env)
    return env

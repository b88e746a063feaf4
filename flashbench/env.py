"""The environment a run measured on: GPU, driver, libraries, clocks and this project's version."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import flashbench
from flashbench import telemetry

__all__ = ["capture_environment", "git_commit"]


def git_commit() -> str | None:
    """The commit of the checkout flashbench runs from (None for an installed wheel).

    FLASHBENCH_GIT_COMMIT overrides it, for a copy of a checkout without its .git folder.
    """
    if os.environ.get("FLASHBENCH_GIT_COMMIT"):
        return os.environ["FLASHBENCH_GIT_COMMIT"]
    here = Path(flashbench.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _gpu(device: torch.device) -> dict[str, Any]:
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


def capture_environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
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
    return env

"""NVML, started once per process: the module, or None where it cannot start (no driver, no GPU).

No NVML is not an error: callers then go without telemetry, or count no GPU. Both sides of a
sweep use it: the parent counts GPUs without creating a CUDA context, the worker samples the
card during each case (flashbench.measure.telemetry).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["gpu_count", "nvml_error", "nvml_handle", "nvml_module"]

_init_lock = threading.Lock()
_initialized: bool | None = None
_init_error: str | None = None


def nvml_module():
    """The pynvml module after nvmlInit, or None when NVML cannot start here (nvml_error says why)."""
    global _initialized, _init_error
    with _init_lock:
        if _initialized is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialized = True
            except Exception as e:  # ImportError, or NVMLError when there is no driver: no telemetry
                _initialized = False
                _init_error = f"{type(e).__name__}: {e}"
    if not _initialized:
        return None
    import pynvml

    return pynvml


def nvml_error() -> str | None:
    """Why NVML is not available here, or None when it is."""
    return None if nvml_module() is not None else _init_error


def nvml_handle(uuid: str | None = None, index: int = 0) -> Any | None:
    """The NVML handle of a GPU, by UUID when known (CUDA and NVML may number GPUs differently)."""
    nvml = nvml_module()
    if nvml is None:
        return None
    try:
        if uuid:
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError:
        return None




def gpu_count() -> int:
    """GPUs NVML sees (0 without NVML); torch's NVML-based count honours CUDA_VISIBLE_DEVICES."""
    nvml = nvml_module()
    try:
        return 0 if nvml is None else int(nvml.nvmlDeviceGetCount())
    except Exception:  # NVMLError: no usable GPU
        return 0

"""NVML telemetry: the card's clocks, power, temperature, throttling and memory during a case.

What a run's rows say about clocks, taken together, is flashbench.results.clocks.

No NVML (no driver, no GPU) is not an error: every function here returns None or an empty
summary, and the row's telemetry fields stay empty.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Callable, Sequence

from flashbench.core.nvml import nvml_module
from flashbench.core.rows import FIELD_GROUPS

__all__ = ["TelemetrySampler", "decode_throttle", "memory_used_bytes", "sm_clock_reader"]

# nvmlClocksEventReasons bits (nvml.h); "gpu_idle" is left out of a case's summary because the
# card idles between synchronizations of the timing loop, which is not throttling.
_THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

def memory_used_bytes(handle: Any | None) -> int | None:
    nvml = nvml_module()
    if handle is None or nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except nvml.NVMLError:
        return None


def sm_clock_reader(handle: Any | None) -> Callable[[], float | None] | None:
    """A function reading the SM clock now (MHz; None once NVML fails), or None without NVML."""
    nvml = nvml_module()
    if handle is None or nvml is None:
        return None

    def read() -> float | None:
        try:
            return float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        except nvml.NVMLError:
            return None

    return read


def decode_throttle(mask: int) -> list[str]:
    """Names of the clock-event reasons set in an NVML bit mask, gpu_idle excluded."""
    names = [name for bit, name in _THROTTLE_BITS.items() if mask & bit and name != "gpu_idle"]
    unknown = mask & ~sum(_THROTTLE_BITS)
    if unknown:
        names.append(f"unknown_0x{unknown:x}")
    return names


def _read(nvml, handle) -> dict[str, float | int]:
    get_reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return {
        "t": time.perf_counter(),
        "sm": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "mem": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
        "power": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "temp": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "reasons": int(get_reasons(handle)),
        "mem_util": nvml.nvmlDeviceGetUtilizationRates(handle).memory,
        "mem_used": int(nvml.nvmlDeviceGetMemoryInfo(handle).used),
    }


class TelemetrySampler:
    """Polls NVML on a background thread while a block runs; ``summary()`` gives row fields."""

    EMPTY = dict.fromkeys(FIELD_GROUPS["telemetry"])

    def __init__(self, handle: Any | None, interval_s: float = 0.01):
        self._handle = handle
        self._interval = interval_s
        self._samples: list[dict[str, float | int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TelemetrySampler:
        nvml = nvml_module()
        if self._handle is not None and nvml is not None:
            self._thread = threading.Thread(target=self._poll, args=(nvml,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self, nvml) -> None:
        while True:
            try:
                self._samples.append(_read(nvml, self._handle))
            except nvml.NVMLError:
                return
            if self._stop.wait(self._interval):
                return

    def summary(self, spans: Sequence[tuple[float, float]] | None = None) -> dict[str, Any]:
        """The row's telemetry fields; with ``spans`` (perf_counter intervals: one case's
        bursts while a group alternates), from the readings taken inside them, or from all
        readings when none fell inside (bursts shorter than the polling interval)."""
        readings = self._samples
        if spans:
            inside = [s for s in readings if any(a <= s["t"] <= b for a, b in spans)]
            readings = inside or readings
        if not readings:
            return dict(self.EMPTY)
        mask = 0
        for s in readings:
            mask |= int(s["reasons"])
        return {
            "sm_clock_mhz": statistics.median(s["sm"] for s in readings),
            "sm_clock_min_mhz": min(s["sm"] for s in readings),
            "sm_clock_max_mhz": max(s["sm"] for s in readings),
            "mem_clock_mhz": statistics.median(s["mem"] for s in readings),
            "power_w": round(statistics.fmean(s["power"] for s in readings), 1),
            "temp_c": max(s["temp"] for s in readings),
            "throttle": ";".join(decode_throttle(mask)),
            "nvml_mem_util_pct": round(statistics.fmean(s["mem_util"] for s in readings), 1),
            "gpu_mem_used_bytes": max(s["mem_used"] for s in readings),
        }

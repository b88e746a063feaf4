"""NVML telemetry: the card's clocks, power, temperature, throttling and memory during a case.

No NVML (no driver, no GPU) is not an error: every function here returns None or an empty
summary, and the row's telemetry fields stay empty.
"""

from __future__ import annotations

import statistics
import threading
from typing import Any

__all__ = ["CLOCK_DEVIATION", "TELEMETRY_FIELDS", "TelemetrySampler", "decode_throttle",
           "memory_used_bytes", "nvml_error", "nvml_handle", "nvml_module", "off_clock",
           "run_clock", "telemetry_notes"]

TELEMETRY_FIELDS = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c", "throttle",
                    "nvml_mem_util_pct", "gpu_mem_used_bytes")

# A case whose median SM clock differs from the run's median clock by more than this share is
# marked: its time is not comparable with its neighbours' (a boost that ended, a power cap).
CLOCK_DEVIATION = 0.03

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


def memory_used_bytes(handle: Any | None) -> int | None:
    nvml = nvml_module()
    if handle is None or nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except nvml.NVMLError:
        return None


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

    EMPTY = dict.fromkeys(TELEMETRY_FIELDS)

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

    def summary(self) -> dict[str, Any]:
        if not self._samples:
            return dict(self.EMPTY)
        mask = 0
        for s in self._samples:
            mask |= int(s["reasons"])
        return {
            "sm_clock_mhz": statistics.median(s["sm"] for s in self._samples),
            "mem_clock_mhz": statistics.median(s["mem"] for s in self._samples),
            "power_w": round(statistics.fmean(s["power"] for s in self._samples), 1),
            "temp_c": max(s["temp"] for s in self._samples),
            "throttle": ";".join(decode_throttle(mask)),
            "nvml_mem_util_pct": round(statistics.fmean(s["mem_util"] for s in self._samples), 1),
            "gpu_mem_used_bytes": max(s["mem_used"] for s in self._samples),
        }


def run_clock(rows: list[dict[str, Any]]) -> float | None:
    """The median SM clock of a run's cases, or None without telemetry."""
    clocks = [r["sm_clock_mhz"] for r in rows if r.get("sm_clock_mhz")]
    return statistics.median(clocks) if clocks else None


def off_clock(row: dict[str, Any], clock: float | None) -> bool:
    """Whether a case throttled or ran at a clock more than CLOCK_DEVIATION from ``clock``."""
    if row.get("throttle"):
        return True
    sm = row.get("sm_clock_mhz")
    return bool(sm and clock and abs(sm - clock) / clock > CLOCK_DEVIATION)


def telemetry_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per throttle reason seen and one for clocks off the run's median, if any."""
    clock = run_clock(rows)
    notes: list[str] = []
    reasons: dict[str, int] = {}
    for r in rows:
        for name in filter(None, (r.get("throttle") or "").split(";")):
            reasons[name] = reasons.get(name, 0) + 1
    notes += [f"telemetry: {n} case(s) saw {name}" for name, n in sorted(reasons.items())]
    stray = [r for r in rows if not r.get("throttle") and off_clock(r, clock)]
    if stray:
        clocks = sorted(r["sm_clock_mhz"] for r in stray)
        notes.append(f"telemetry: {len(stray)} case(s) ran at an SM clock more than "
                     f"{CLOCK_DEVIATION:.0%} off the run's median {clock:.0f} MHz "
                     f"({clocks[0]:.0f}–{clocks[-1]:.0f} MHz)")
    return notes

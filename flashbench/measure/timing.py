"""Timers: samples of one prepared call, taken in bursts, so that several calls can alternate.

A *sampler* owns one call and its timer. ``burst(n)`` takes up to ``n`` samples (milliseconds
per call) and returns them; the caller (flashbench.measure.rounds) decides how many bursts, in
which order, and when to stop (``should_stop``). The timers:

* ``cuda-events`` (``--timer events``): following triton.testing.do_bench, an event pair
  around each call, the L2 flushed before each (``l2="cold"``) outside the pair, one
  synchronize per burst, the GPU held busy while the host queues the burst.
* ``cuda-graph`` (flashbench.measure.graph_timer): a batch of calls replayed from one CUDA
  graph, for kernels whose launch costs as much as they run.
* ``cuda-profiler`` (flashbench.measure.graph_timer): the summed device time of the kernels one
  call launches, from torch.profiler (CUPTI).
* ``perf-counter``: a CPU's wall clock around each call.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Protocol

from flashbench.core.config import TimingPolicy
from flashbench.core.stats import aa_detectable, median_rse

__all__ = ["CpuSampler", "EventSampler", "Sampler", "event_estimate_ms", "flush_buffer",
           "should_stop"]

_CPU_FLUSH_BYTES = 64 << 20  # larger than the last-level cache of common server CPUs
MIN_SAMPLES_HARD = 3  # even a case slower than the budget gets this many samples
BURST_MS = 10.0  # work per burst: short enough to alternate often, long enough to queue well


class Sampler(Protocol):
    timer: str  # the row's ``timer`` field
    estimate_ms: float  # one call, from its first timed run

    def warm(self, ms: float) -> None:
        """Run the timed sequence (flush, call) for about ``ms`` milliseconds."""

    def burst(self, n: int) -> list[float]:
        """Up to ``n`` samples (at least one), milliseconds per call."""


def should_stop(samples: list[float], spent_ms: float, window_ms: float,
                policy: TimingPolicy) -> bool:
    """Whether one call has samples enough: ``spent_ms`` is the time spent on its own bursts,
    ``window_ms`` the wall time since sampling began (a window long enough to see clocks).

    Enough is min_samples, the window, the median's RSE at target and (``policy.detect``) an
    A/A pair of runs with these samples able to show a slowdown of ``detect``: the RSE comes
    from the IQR and misses what the gate's bootstrap sees (a few outliers, clusters at small
    n). The budget and max_samples end sampling whatever the rest say."""
    n = len(samples)
    if n >= policy.max_samples:
        return True
    if spent_ms >= policy.budget_ms and n >= MIN_SAMPLES_HARD:
        return True
    return (n >= policy.min_samples and window_ms >= policy.min_window_ms
            and median_rse(samples) <= policy.target_rse
            and (policy.detect is None or aa_detectable(samples) <= policy.detect))


_flush_buffers: dict[str, object] = {}


def flush_buffer(device):
    """A buffer twice the device's L2 (or a CPU's LLC, roughly), allocated once per device."""
    import torch

    key = str(device)
    if key not in _flush_buffers:
        if device.type == "cuda":
            nbytes = max(2 * l2_bytes(device), 32 << 20)
        else:
            nbytes = _CPU_FLUSH_BYTES
        _flush_buffers[key] = torch.empty(nbytes // 4, dtype=torch.int32, device=device)
    return _flush_buffers[key]


def l2_bytes(device) -> int:
    import torch

    return torch.cuda.get_device_properties(device).L2_cache_size


_MAX_SLEEP_S = 0.05  # longest the GPU is held back at the start of a burst


def gpu_sleep(device, seconds: float) -> None:
    import torch

    clock_khz = getattr(torch.cuda.get_device_properties(device), "clock_rate", 0) or 2_000_000
    torch.cuda._sleep(int(min(seconds, _MAX_SLEEP_S) * clock_khz * 1e3))


def event_estimate_ms(fn: Callable[[], object], device) -> float:
    """One call's time from a single event pair: what sizes warm-up and bursts."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    return max(start.elapsed_time(end), 1e-3)


class EventSampler:
    """CUDA events around each call."""

    timer = "cuda-events"

    def __init__(self, fn: Callable[[], object], device, policy: TimingPolicy):
        import torch

        self._fn, self._device = fn, device
        self._flush = flush_buffer(device) if policy.l2 == "cold" else None
        self.estimate_ms = event_estimate_ms(fn, device)
        self._host_s = 0.0
        self._batch = 1

    def warm(self, ms: float) -> None:
        # The loop's own sequence (flush, call), so that the first samples are not outliers;
        # and what queueing one sample costs the host, measured while at it.
        import torch

        calls = max(2, math.ceil(ms / self.estimate_ms))
        queued = time.perf_counter()
        for _ in range(calls):
            if self._flush is not None:
                self._flush.zero_()
            self._fn()
        self._host_s = (time.perf_counter() - queued) / calls
        torch.cuda.synchronize(self._device)
        # A burst: about BURST_MS of work, and no more than the GPU can be held back for while
        # the host queues it.
        self._batch = max(1, min(100, math.ceil(BURST_MS / self.estimate_ms),
                                 int(_MAX_SLEEP_S / max(self._host_s, 1e-6))))

    def burst(self, n: int) -> list[float]:
        import torch

        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(max(1, min(n, self._batch)))]
        # Hold the GPU busy while the host queues the whole burst. Otherwise, when a call costs
        # the host more than the GPU (Python launch overhead of a short kernel), the GPU drains
        # the queue and each event pair times the host's launch latency, not the kernel.
        gpu_sleep(self._device, 1.5 * self._host_s * len(pairs))
        for s, e in pairs:
            if self._flush is not None:
                self._flush.zero_()
            s.record()
            self._fn()
            e.record()
        torch.cuda.synchronize(self._device)
        return [s.elapsed_time(e) for s, e in pairs]


class CpuSampler:
    """The wall clock around each call."""

    timer = "perf-counter"

    def __init__(self, fn: Callable[[], object], device, policy: TimingPolicy):
        self._fn = fn
        self._flush = flush_buffer(device) if policy.l2 == "cold" else None
        t0 = time.perf_counter()
        fn()
        self.estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
        self._batch = max(1, min(100, math.ceil(BURST_MS / self.estimate_ms)))

    def warm(self, ms: float) -> None:
        for _ in range(max(1, math.ceil(ms / self.estimate_ms))):
            self._fn()

    def burst(self, n: int) -> list[float]:
        samples = []
        for _ in range(max(1, min(n, self._batch))):
            if self._flush is not None:
                self._flush.zero_()
            t0 = time.perf_counter()
            self._fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return samples

"""Timing a zero-argument callable: CUDA events on a GPU, perf_counter on a CPU.

The loop follows triton.testing.do_bench: warm-up sized by time, the cache flushed by writing
a buffer larger than it before every sample (``l2="cold"``), one event pair per sample around
the call only, one synchronize per batch of samples. Sampling goes on until the median is
stable (relative standard error at most ``target_rse``) or the time budget is spent; every raw
sample is returned.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from flashbench.core.config import TimingPolicy
from flashbench.core.stats import median_rse

__all__ = ["time_callable"]

_CPU_FLUSH_BYTES = 64 << 20  # larger than the last-level cache of common server CPUs
_MIN_SAMPLES_HARD = 3  # even a case slower than the budget gets this many samples


def _should_stop(samples: list[float], started: float, policy: TimingPolicy) -> bool:
    n = len(samples)
    if n >= policy.max_samples:
        return True
    if n >= policy.min_samples and median_rse(samples) <= policy.target_rse:
        return True
    spent_ms = (time.perf_counter() - started) * 1e3
    return spent_ms >= policy.budget_ms and n >= _MIN_SAMPLES_HARD


_flush_buffers: dict[str, object] = {}


def _flush_buffer(device):
    """A buffer twice the device's L2 (or a CPU's LLC, roughly), allocated once per device."""
    import torch

    key = str(device)
    if key not in _flush_buffers:
        if device.type == "cuda":
            l2 = torch.cuda.get_device_properties(device).L2_cache_size
            nbytes = max(2 * l2, 32 << 20)
        else:
            nbytes = _CPU_FLUSH_BYTES
        _flush_buffers[key] = torch.empty(nbytes // 4, dtype=torch.int32, device=device)
    return _flush_buffers[key]


_MAX_SLEEP_S = 0.05  # longest the GPU is held back at the start of a batch


def _gpu_sleep(device, seconds: float) -> None:
    import torch

    clock_khz = getattr(torch.cuda.get_device_properties(device), "clock_rate", 0) or 2_000_000
    torch.cuda._sleep(int(min(seconds, _MAX_SLEEP_S) * clock_khz * 1e3))


def _time_cuda(fn: Callable[[], object], device, policy: TimingPolicy) -> list[float]:
    import torch

    flush = _flush_buffer(device) if policy.l2 == "cold" else None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(start.elapsed_time(end), 1e-3)
    # Warm up with the loop's own sequence (flush, call), so its first samples are not outliers,
    # and measure what queueing one sample costs the host while at it.
    warmup = max(2, math.ceil(policy.warmup_ms / estimate_ms))
    queued = time.perf_counter()
    for _ in range(warmup):
        if flush is not None:
            flush.zero_()
        fn()
    host_s = (time.perf_counter() - queued) / warmup
    torch.cuda.synchronize(device)

    # Samples between synchronizations: about 20 ms of work, so the stop test runs often
    # enough, and no more than the GPU can be held back for while the host queues them.
    batch = max(1, min(100, math.ceil(20.0 / estimate_ms),
                       int(_MAX_SLEEP_S / max(host_s, 1e-6))))
    samples: list[float] = []
    started = time.perf_counter()
    while not _should_stop(samples, started, policy):
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(min(batch, policy.max_samples - len(samples)))]
        # Hold the GPU busy while the host queues the whole batch. Otherwise, when a call costs
        # the host more than the GPU (Python launch overhead of a short kernel), the GPU drains
        # the queue and each event pair times the host's launch latency, not the kernel.
        _gpu_sleep(device, 1.5 * host_s * len(pairs))
        for s, e in pairs:
            if flush is not None:
                flush.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        samples.extend(s.elapsed_time(e) for s, e in pairs)
    return samples


def _time_cpu(fn: Callable[[], object], device, policy: TimingPolicy) -> list[float]:
    flush = _flush_buffer(device) if policy.l2 == "cold" else None
    t0 = time.perf_counter()
    fn()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    for _ in range(max(1, math.ceil(policy.warmup_ms / estimate_ms))):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while not _should_stop(samples, started, policy):
        if flush is not None:
            flush.zero_()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_callable(fn: Callable[[], object], device, policy: TimingPolicy) -> tuple[list[float], str]:
    """Raw samples in milliseconds and the name of the timer that took them."""
    if device.type == "cuda":
        return _time_cuda(fn, device, policy), "cuda-events"
    return _time_cpu(fn, device, policy), "perf-counter"

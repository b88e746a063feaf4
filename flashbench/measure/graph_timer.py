"""The two GPU timers beside CUDA events: CUDA-graph replay, and the profiler's kernel time.

``GraphSampler`` (``--timer graph``) captures a batch of calls in one CUDA graph and times each
replay with one event pair: a sample is the replay's time over the calls in it, so the launch
overhead that an event pair around one short kernel includes (the host queueing it, the
driver's launch latency) is paid once per graph. The L2 is kept cold the way FlashInfer's
benchmark keeps it: the graph cycles through copies of the inputs that together are more than
twice the L2, so each call finds its own inputs evicted (no flush inside the graph, which would
be timed with the call).

``ProfilerSampler`` (``--timer profiler``) runs a burst of calls under torch.profiler (CUPTI)
and sums, per call, the device time of the kernels, memcpys and memsets it launched: the method
of NVIDIA's own cuDNN benchmark. Gaps between a call's kernels are not counted. Calls are told
apart by marker kernels (``torch.cuda._sleep``'s ``spin_kernel``) launched before and after each.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

from flashbench.core.config import TimingPolicy
from flashbench.measure.timing import BURST_MS, event_estimate_ms, flush_buffer, gpu_sleep

__all__ = ["GRAPH_MS", "GraphSampler", "ProfilerSampler", "TimerRefused"]

GRAPH_MS = 2.0  # work in one graph replay: launch costs paid once per this much
MAX_GRAPH_CALLS = 1000
PROFILER_BURST_MS = 100.0  # a profiler session costs the host milliseconds to start and stop
_MARKER = "spin_kernel"  # the kernel torch.cuda._sleep launches (aten/src/ATen/cuda/Sleep.cu)
_MARKER_CYCLES = 1000  # about half a microsecond: a marker, not a wait


class TimerRefused(RuntimeError):
    """The call cannot be timed this way (a CUDA graph cannot capture it)."""


class GraphSampler:
    """Replays of one CUDA graph holding ``calls_per_graph`` calls, cycling over ``calls`` (one
    per copy of the inputs)."""

    timer = "cuda-graph"

    def __init__(self, calls: Sequence[Callable[[], object]], device, policy: TimingPolicy):
        import torch

        self._device = device
        self.estimate_ms = event_estimate_ms(calls[0], device)
        per_graph = math.ceil(GRAPH_MS / self.estimate_ms)
        self.calls_per_graph = max(len(calls), min(MAX_GRAPH_CALLS, per_graph))
        # Warm up on a side stream before capturing (lazy initialisation, autotuning, cuBLAS
        # workspaces must not happen inside the capture).
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for call in calls:
                call()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self._graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self._graph):
                for i in range(self.calls_per_graph):
                    calls[i % len(calls)]()
        except Exception as e:  # capture refused (a host sync, a CPU tensor, an allocation rule)
            raise TimerRefused(f"the call cannot be captured in a CUDA graph (--timer graph): "
                               f"{' '.join(str(e).split())[:300]}") from None
        self._replay_ms = self.estimate_ms * self.calls_per_graph
        self._batch = 1

    def warm(self, ms: float) -> None:
        import torch

        for _ in range(max(2, math.ceil(ms / self._replay_ms))):
            self._graph.replay()
        torch.cuda.synchronize(self._device)
        self._batch = max(1, min(100, math.ceil(BURST_MS / self._replay_ms)))

    def burst(self, n: int) -> list[float]:
        import torch

        replays = max(1, min(n, self._batch))
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(replays)]
        gpu_sleep(self._device, 20e-6 * replays)  # a replay costs the host ~10 us to queue
        for s, e in pairs:
            s.record()
            self._graph.replay()
            e.record()
        torch.cuda.synchronize(self._device)
        return [s.elapsed_time(e) / self.calls_per_graph for s, e in pairs]


class ProfilerSampler:
    """The device time of the kernels each call launches, summed, from torch.profiler."""

    timer = "cuda-profiler"

    def __init__(self, fn: Callable[[], object], device, policy: TimingPolicy):
        self._fn, self._device = fn, device
        self._flush = flush_buffer(device) if policy.l2 == "cold" else None
        self.estimate_ms = event_estimate_ms(fn, device)
        self._batch = max(1, min(200, math.ceil(PROFILER_BURST_MS / self.estimate_ms)))

    def warm(self, ms: float) -> None:
        import torch

        for _ in range(max(2, math.ceil(ms / self.estimate_ms))):
            if self._flush is not None:
                self._flush.zero_()
            self._fn()
        torch.cuda.synchronize(self._device)

    def burst(self, n: int) -> list[float]:
        import torch
        from torch.profiler import ProfilerActivity, profile

        calls = max(1, min(n, self._batch))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*clears events.*")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    if self._flush is not None:
                        self._flush.zero_()
                    torch.cuda._sleep(_MARKER_CYCLES)
                    self._fn()
                    torch.cuda._sleep(_MARKER_CYCLES)
                torch.cuda.synchronize(self._device)
        return call_device_times(prof.events(), calls)


def call_device_times(events, calls: int) -> list[float]:
    """Per call, the summed device time (ms) of the events between its two markers."""
    from torch.autograd import DeviceType

    device_events = sorted((e for e in events if e.device_type == DeviceType.CUDA),
                           key=lambda e: e.time_range.start)
    times: list[float] = []
    inside, total = False, 0.0
    for event in device_events:
        if _MARKER in event.name:
            if inside:
                times.append(total / 1e3)
            inside, total = not inside, 0.0
        elif inside:
            total += event.time_range.elapsed_us()
    if len(times) != calls:
        raise RuntimeError(f"the profiler recorded {len(times)} of {calls} calls' kernels "
                           f"(--timer profiler); events were lost")
    return times

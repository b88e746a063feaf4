"""A comparison group measured on the device: the backends of one shape, prepared one by one, then timed in alternating rounds.

``measure_group`` is a generator of events, so that its caller (the worker, or the sweep itself
under ``--no-isolate``) can pass each row on the moment it is final and bound each step by a
timeout:

    Event("start", i)            case i is being prepared (inputs, reference, first call)
    Event("row", i, row)         case i's row is final (a refusal or a failure: no timing)
    Event("sampling", ids)       the prepared cases ids are being timed
    Event("sampled", ids)        their samples are in (the worker checks the CUDA context here)
    Event("row", i, row)         then each of their rows

With ``policy.interleave`` and more than one prepared case, the cases are sampled in
alternating rounds (flashbench.measure.rounds) and every row keeps its ``sample_rounds``;
otherwise one after another, each warmed up just before its own samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from flashbench.core.cases import Case, Status
from flashbench.core.config import TimingPolicy
from flashbench.measure.case import Prepared, fail, finish_row, prepare_case, release
from flashbench.measure.graph_timer import GraphSampler, ProfilerSampler
from flashbench.measure.rounds import Sampled, sample_rounds, settle_clock
from flashbench.measure.telemetry import TelemetrySampler, sm_clock_reader
from flashbench.measure.timing import CpuSampler, EventSampler, Sampler

__all__ = ["Event", "make_sampler", "measure_case", "measure_group"]


@dataclass(frozen=True)
class Event:
    kind: str  # start, row, sampling, sampled
    index: int | None = None
    row: dict[str, Any] | None = None
    indices: tuple[int, ...] = ()


def make_sampler(prepared: Prepared, device: torch.device, policy: TimingPolicy) -> Sampler:
    """The sampler of the policy's timer (a CPU has only its wall clock: the worker refuses
    the GPU timers there before any case)."""
    run = prepared.calls[0]
    if device.type != "cuda":
        return CpuSampler(run, device, policy)
    if policy.timer == "graph":
        return GraphSampler(prepared.calls, device, policy)
    if policy.timer == "profiler":
        return ProfilerSampler(run, device, policy)
    return EventSampler(run, device, policy)


def measure_group(cases: Sequence[Case], device: torch.device, policy: TimingPolicy,
                  nvml_handle: Any | None = None, ceilings: dict[str, Any] | None = None,
                  tainted: Callable[[int], bool] | None = None, fp32_precision: str = "tf32"
                  ) -> Iterator[Event]:
    """Measure ``cases`` (one shape's backends, or any cases), yielding events as above.

    ``tainted(i)``, asked after case i is prepared, says whether it left this process unfit
    to time others in (threads or processes running): then case i is timed alone at once, and
    the group ends there; the cases without a row are the caller's to measure elsewhere."""
    prepared: dict[int, Prepared] = {}
    for i, case in enumerate(cases):
        yield Event("start", i)
        row, ready = prepare_case(case, device, policy, nvml_handle, fp32_precision)
        if tainted is not None and tainted(i):
            for p in prepared.values():
                p.calls.clear()
            prepared = {i: ready} if ready is not None else {}
            if ready is None:
                yield Event("row", i, row)
            break
        if ready is None:
            yield Event("row", i, row)
        else:
            prepared[i] = ready
    if not prepared:
        return
    ids = tuple(prepared)
    yield Event("sampling", indices=ids)
    try:
        results = _sample(prepared, device, policy, nvml_handle)
    finally:
        for p in prepared.values():
            p.calls.clear()  # the inputs and saved graphs go with the calls
        release(device)
    yield Event("sampled", indices=ids)
    for i in ids:
        yield Event("row", i, _final_row(prepared[i], *results[i], ceilings))


def _sample(prepared: dict[int, Prepared], device: torch.device, policy: TimingPolicy,
            nvml_handle: Any | None
            ) -> dict[int, tuple[Sampled, str | None, dict[str, Any], bool]]:
    """Per case: its samples, its timer, its telemetry, and whether it was interleaved."""
    clock = sm_clock_reader(nvml_handle) if device.type == "cuda" else None
    samplers, failed = _samplers(prepared, device, policy)
    interleave = policy.interleave and len(samplers) > 1
    out: dict[int, tuple[Sampled, str | None, dict[str, Any], bool]] = {}
    with TelemetrySampler(nvml_handle) as telemetry:
        if interleave:
            _warm(samplers, failed, policy, clock)
            sampled = dict(zip(samplers, sample_rounds(list(samplers.values()), policy)))
        else:
            sampled = {}
            for i, sampler in samplers.items():
                if _warm({i: sampler}, failed, policy, clock):
                    sampled[i] = sample_rounds([sampler], policy)[0]
    for i, s in failed.items():
        out[i] = (s, None, {}, False)
    for i, s in sampled.items():
        out[i] = (s, samplers[i].timer, telemetry.summary(s.spans), interleave)
    return out


def _samplers(prepared: dict[int, Prepared], device: torch.device, policy: TimingPolicy
              ) -> tuple[dict[int, Sampler], dict[int, Sampled]]:
    samplers: dict[int, Sampler] = {}
    failed: dict[int, Sampled] = {}
    for i, p in prepared.items():
        try:
            samplers[i] = make_sampler(p, device, policy)
        except Exception as e:  # a timer that cannot take this call (graph capture refused)
            failed[i] = Sampled(error=e)
    return samplers, failed


def _warm(samplers: dict[int, Sampler], failed: dict[int, Sampled], policy: TimingPolicy,
          clock) -> bool:
    """Warm ``samplers`` up, time first, then until the clock settles; a sampler whose
    warm-up raised moves to ``failed`` (and out of ``samplers``). Whether any is left."""
    for i in list(samplers):
        try:
            samplers[i].warm(policy.warmup_ms)
        except Exception as e:  # this call fails when repeated: its status, not the group's
            failed[i] = Sampled(error=e)
            del samplers[i]
    try:
        settle_clock(list(samplers.values()), clock)
    except Exception:  # not hidden: the call that raised fails again in its own samples
        pass
    return bool(samplers)


def _final_row(p: Prepared, sampled: Sampled, timer: str | None, telemetry: dict[str, Any],
               interleaved: bool, ceilings: dict[str, Any] | None) -> dict[str, Any]:
    row = p.row
    if sampled.error is not None:
        fail(row, sampled.error)
        row["error"] = f"while timing: {row['error']}"[:500]
        return row
    if not sampled.samples:
        row.update(status=Status.ERROR, error="no samples were taken")
        return row
    finish_row(row, sampled.samples, timer or row["timer"],
               sampled.rounds if interleaved else None, telemetry, ceilings)
    return row


def measure_case(case: Case, device: torch.device, policy: TimingPolicy,
                 nvml_handle: Any | None = None, ceilings: dict[str, Any] | None = None,
                 fp32_precision: str = "tf32") -> dict[str, Any]:
    """One case alone, end to end; always returns a row, whatever happened."""
    rows = [e.row for e in measure_group([case], device, policy, nvml_handle, ceilings,
                                         fp32_precision=fp32_precision)
            if e.kind == "row"]
    return rows[-1]

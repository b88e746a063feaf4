"""Comparison groups, how long each should take to measure, and how groups are split among workers or shards.

A comparison group is every case of one shape (all case fields but ``backend``): its backends
are compared side by side, so a group is never split, and its ratios stay same-device ratios.

The duration estimate only has to order groups and balance them, not to predict a wall clock.
It models one case as flashbench.measure.case.measure_case spends it, on a nominal GPU (a fixed one, so that a
shard holds the same cases on every machine):

* the kernel: ``max(flops / 400 TFLOP/s, hbm_bytes / 2.5 TB/s)``, the roofline of the
  backend's algorithm from flashbench.core.costs; this is what makes naive and SDPA-math cases, whose
  N×N score traffic is counted there, long beside the fused kernels of the same shape;
* two untimed calls (correctness and peak memory), the warm-up, and the samples: about 20
  (the H100 reference sweeps took a median of 14–23; at least ``min_samples``), each
  the kernel plus an L2 flush, capped by the timing budget as the sampler caps them;
* the float32 reference, the forward's FLOPs (times 3.5 when gradients are checked) at a
  nominal 50 TFLOP/s;
* 0.4 s per case for inputs, allocator and messages.

Checked against the H100 reference runs in results/reference (whole sweeps; rows carry no
wall time): estimated against measured, default 67 s / 75 s, prefill 141 / 153, train 43 / 59,
decode 149 / 145.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from flashbench.core import costs
from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy

__all__ = ["case_seconds", "comparison_groups", "group_micros", "interpreter_call_seconds",
           "interpreter_warning", "longest_first", "partition", "step_label"]

NOMINAL_FLOPS_PER_S = 400e12
NOMINAL_BYTES_PER_S = 2.5e12
REFERENCE_FLOPS_PER_S = 50e12
L2_FLUSH_S = 40e-6  # zeroing a 100 MB buffer at the nominal bandwidth
TYPICAL_SAMPLES = 20
CASE_OVERHEAD_S = 0.4
_UNTIMED_CALLS = 2
# Triton's CPU interpreter runs our kernels at 30-100 MFLOP/s (numpy per tile; seen on a
# 2-core VM at N 64-512, D 64-128): a central figure, right to within a factor of about 3.
INTERPRETER_FLOPS_PER_S = 50e6
# Calls a sweep makes of a case slower than its budget: the first (checked), the estimate, the
# warm-up and the three samples the sampler always takes.
_INTERPRETED_CALLS = 6
# Longer than this in all, and a sweep or profile says so before it starts.
INTERPRETER_WARN_S = 600.0


def comparison_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases grouped by shape, groups in order of first appearance, cases in their given order."""
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.shape_key, []).append(case)
    return list(groups.values())


def step_label(kind: str, value: Any) -> str:
    """What a progress bar says of a group's step: the case being prepared, or the backends
    being timed alternately."""
    if kind == "sampling":
        names = ",".join(c.backend for c in value)
        return f"timing {names} alternately: {value[0].label().split(' ', 1)[1]}" \
            if len(value) > 1 else value[0].label()
    return value.label()


def case_seconds(case: Case, timing: TimingPolicy) -> float:
    """Estimated seconds to measure one case under ``timing`` (a TimingConfig as a dict)."""
    kernel = max(costs.flops(case) / NOMINAL_FLOPS_PER_S,
                 costs.hbm_bytes(case) / NOMINAL_BYTES_PER_S)
    sample = kernel + (L2_FLUSH_S if timing.l2 == "cold" else 0.0)
    min_samples = timing.min_samples
    budget = timing.budget_ms / 1e3
    # The sampler stops at the budget, but never before min_samples.
    sampling = max(min_samples * sample, min(budget, max(min_samples, TYPICAL_SAMPLES) * sample))
    forward_flops = costs.flops(replace(case, mode=Mode.FWD))
    reference = forward_flops * (1.0 if case.mode is Mode.FWD else costs.FWD_BWD_FACTOR) \
        / REFERENCE_FLOPS_PER_S
    warmup = timing.warmup_ms / 1e3
    return CASE_OVERHEAD_S + _UNTIMED_CALLS * kernel + warmup + sampling + reference


def group_micros(group: Sequence[Case], timing: TimingPolicy) -> int:
    """A group's estimate in whole microseconds: integers, so that every machine ranks alike."""
    return round(sum(case_seconds(c, timing) for c in group) * 1e6)


def longest_first(groups: Sequence[list[Case]], timing: TimingPolicy) -> list[list[Case]]:
    """Groups by estimated duration, longest first; equal ones keep their order."""
    cost = [group_micros(g, timing) for g in groups]
    return [groups[i] for i in sorted(range(len(groups)), key=lambda i: (-cost[i], i))]


def partition(groups: Sequence[list[Case]], parts: int,
              timing: TimingPolicy) -> list[list[list[Case]]]:
    """Groups split into ``parts`` lists of about equal estimated duration (longest first, each
    to the lightest part so far; ties to the lower part). Deterministic; a part may be empty.

    The longest-processing-time rule: no part exceeds the mean by more than its longest group.
    """
    cost = [group_micros(g, timing) for g in groups]
    loads = [0] * parts
    chosen: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(groups)), key=lambda i: (-cost[i], i)):
        part = min(range(parts), key=lambda p: (loads[p], p))
        loads[part] += cost[i]
        chosen[part].append(i)
    # Within a part, the groups' original order (the config's), not the dealing order.
    return [[groups[i] for i in sorted(indices)] for indices in chosen]


def interpreter_call_seconds(case: Case) -> float:
    """Estimated seconds one call of ``case`` takes with Triton's CPU interpreter."""
    return costs.flops(case) / INTERPRETER_FLOPS_PER_S


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 4 * 86400 else f"{seconds / 86400:.0f} days"


def interpreter_warning(cases: Sequence[Case], calls_per_case: int = _INTERPRETED_CALLS,
                        limit_s: float = INTERPRETER_WARN_S) -> str | None:
    """A warning when the cases that run under Triton's CPU interpreter (``cases`` are those)
    would take longer than ``limit_s`` in all; None otherwise."""
    if not cases:
        return None
    per_call = {c: interpreter_call_seconds(c) for c in cases}
    total = calls_per_case * sum(per_call.values())
    if total <= limit_s:
        return None
    worst = max(per_call, key=per_call.get)
    return (f"warning: {len(cases)} case(s) run under Triton's CPU interpreter, about "
            f"{_duration(total)} in all (estimated; {worst.label()}: about "
            f"{_duration(per_call[worst])} a call); smaller shapes (--seq-len 128), "
            f"--backends without triton, or a GPU would finish sooner")

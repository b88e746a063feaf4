"""Warm-up and sampling of one call, or of several in alternating rounds.

A power-capped GPU changes its clock every few tens of milliseconds: a case measured right after
an idle gap (compiling, the reference check) runs boosted until the power cap bites, and when
the backends of a shape are measured one after another, a clock change between them lands in
their ratio. So:

* warm-up runs the calls until the time-based warm-up is spent *and* the SM clock (NVML) is
  steady: ``STEADY_READINGS`` readings ``STEADY_GAP_MS`` apart within ``STEADY_SPREAD`` of each
  other, for at most ``MAX_WARMUP_MS``;
* sampling lasts at least ``policy.min_window_ms``, not only until the median is stable,
  and (``policy.detect``) until check could see a slowdown of that share in each call's own
  samples: in a group every call is judged on its own, and the group goes on while any call
  is not yet detectable and has budget left (``should_stop``);
* ``sample_rounds`` alternates the calls of a comparison group burst by burst, the order
  rotated each round (A B C, B C A, C A B, ...), for at least ``MIN_ROUNDS`` rounds (budget
  allowing), so that a clock change hits them alike; every
  sample keeps the round it was taken in, which pairs it with the other calls' samples of the
  same round (flashbench.results.compare bootstraps ratios over rounds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from flashbench.core.config import TimingPolicy
from flashbench.measure.timing import CpuSampler, EventSampler, Sampler, should_stop

__all__ = ["MAX_WARMUP_MS", "Sampled", "sample_alone", "sample_rounds", "settle_clock",
           "time_callable"]

STEADY_READINGS = 5
STEADY_GAP_MS = 20.0
STEADY_SPREAD = 0.01
MAX_WARMUP_MS = 2000.0
MIN_ROUNDS = 10  # alternating calls share at least this many rounds, budget allowing


@dataclass
class Sampled:
    """What one call's sampling gave: samples, their rounds, and when its bursts ran."""

    samples: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # perf_counter, per burst
    spent_ms: float = 0.0
    error: BaseException | None = None


def _steady(readings: list[float]) -> bool:
    last = readings[-STEADY_READINGS:]
    if len(last) < STEADY_READINGS:
        return False
    return (max(last) - min(last)) <= STEADY_SPREAD * max(last)


def settle_clock(samplers: Sequence[Sampler],
                 clock_mhz: Callable[[], float | None] | None) -> float:
    """After their time-based warm-up, run the calls until the SM clock is steady (or for
    MAX_WARMUP_MS); the milliseconds it took (0 without NVML)."""
    started = time.perf_counter()
    if clock_mhz is None or not samplers:
        return 0.0
    readings: list[float] = []
    while not _steady(readings) and (time.perf_counter() - started) * 1e3 < MAX_WARMUP_MS:
        for sampler in samplers:
            sampler.warm(STEADY_GAP_MS / len(samplers))
        reading = clock_mhz()
        if reading is None:
            break
        readings.append(reading)
    return (time.perf_counter() - started) * 1e3


def sample_alone(sampler: Sampler, policy: TimingPolicy) -> list[float]:
    """One call's samples, burst after burst, until ``should_stop``."""
    samples: list[float] = []
    started = time.perf_counter()
    while True:
        spent = (time.perf_counter() - started) * 1e3
        if should_stop(samples, spent, spent, policy):
            return samples
        samples.extend(sampler.burst(_wanted(samples, policy)))


def _wanted(samples: list[float], policy: TimingPolicy) -> int:
    """How many samples the next burst may take: the first stops at min_samples (a stable,
    cheap case needs no more), later ones at max_samples."""
    if len(samples) < policy.min_samples:
        return policy.min_samples - len(samples)
    return policy.max_samples - len(samples)


def _done(sampled: Sampled, window_ms: float, rounds_taken: int, calls: int,
          policy: TimingPolicy) -> bool:
    """``should_stop``, and alternating calls stay for MIN_ROUNDS rounds (unless their budget or
    max_samples is spent): a ratio is bootstrapped over the rounds both calls share."""
    if not should_stop(sampled.samples, sampled.spent_ms, window_ms, policy):
        return False
    return (calls == 1 or rounds_taken >= MIN_ROUNDS or sampled.spent_ms >= policy.budget_ms
            or len(sampled.samples) >= policy.max_samples)


def _rotated(active: list[int], round_index: int) -> list[int]:
    k = round_index % len(active)
    return active[k:] + active[:k]


def sample_rounds(samplers: Sequence[Sampler], policy: TimingPolicy) -> list[Sampled]:
    """Every call's samples, taken in alternating rounds: one burst per call per round.

    A call leaves the rotation when it has samples enough (``should_stop``: its own budget is
    the time of its own bursts; the window is the group's) or when a burst raised (kept in
    ``error``: that case's status, the others go on)."""
    out = [Sampled() for _ in samplers]
    active = list(range(len(samplers)))
    started = time.perf_counter()
    round_index = 0
    while active:
        for i in _rotated(active, round_index):
            t0 = time.perf_counter()
            wanted = _wanted(out[i].samples, policy)
            if len(samplers) > 1:  # room for MIN_ROUNDS bursts within max_samples
                wanted = min(wanted, max(1, policy.max_samples // MIN_ROUNDS))
            try:
                got = samplers[i].burst(wanted)
            except Exception as e:  # this call failed mid-sampling; the group goes on
                out[i].error = e
                continue
            t1 = time.perf_counter()
            out[i].samples.extend(got)
            out[i].rounds.extend([round_index] * len(got))
            out[i].spans.append((t0, t1))
            out[i].spent_ms += (t1 - t0) * 1e3
        window = (time.perf_counter() - started) * 1e3
        round_index += 1
        active = [i for i in active if out[i].error is None
                  and not _done(out[i], window, round_index, len(samplers), policy)]
    return out


def time_callable(fn: Callable[[], object], device, policy: TimingPolicy
                  ) -> tuple[list[float], str]:
    """Raw samples in milliseconds of one call alone, and the name of the timer that took
    them (calibrate's products and copies; a sweep's cases go through flashbench.measure.group)."""
    sampler = EventSampler(fn, device, policy) if device.type == "cuda" \
        else CpuSampler(fn, device, policy)
    sampler.warm(policy.warmup_ms)
    return sample_alone(sampler, policy), sampler.timer

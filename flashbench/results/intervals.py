"""Bootstrap intervals of ratios of medians: the gate's, the slowdown it could see, speedups paired by round.

Pure numpy, no torch. Every interval is deterministic for its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from flashbench.core.stats import GATE_CONFIDENCE, MIN_DETECTABLE_SAMPLES

__all__ = ["MIN_DETECTABLE_SAMPLES", "MIN_PAIRED_ROUNDS", "RatioEstimate", "Speedup",
           "bootstrap_medians", "detectable_slowdown", "ratio_of_medians", "round_medians",
           "speedup_interval"]

# Fewer shared rounds than this make a paired interval of two or three values: no better than
# the unpaired one, which then serves.
MIN_PAIRED_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """current/baseline ratio of medians with a bootstrap confidence interval."""

    ratio: float
    low: float
    high: float


def ratio_of_medians(baseline: list[float], current: list[float], *,
                     confidence: float = GATE_CONFIDENCE, resamples: int = 2000,
                     seed: int = 0) -> RatioEstimate:
    """Percentile bootstrap of median(current)/median(baseline); deterministic for a seed."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(current, dtype=np.float64)
    ratio = float(np.median(b) / np.median(a))
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(med_b / med_a, [tail, 100 - tail])
    return RatioEstimate(ratio, float(low), float(high))


def detectable_slowdown(est: RatioEstimate, n_baseline: int, n_current: int,
                        threshold: float) -> float:
    """The smallest slowdown the gate flags about half the time, given this case's interval.

    The gate flags a case when ratio > 1 + threshold and low > 1. The interval's relative lower
    width w = low / ratio does not change when the current run is scaled by a slowdown s, so s
    shows as ratio ≈ 1 + s with low ≈ (1 + s)·w, and both conditions hold once
    1 + s > max(1 + threshold, 1 / w). Infinite (nothing can be vouched for) with fewer than
    MIN_DETECTABLE_SAMPLES samples on a side, or an interval that reaches 0.
    """
    if min(n_baseline, n_current) < MIN_DETECTABLE_SAMPLES or est.low <= 0:
        return math.inf
    w = est.low / est.ratio
    return max(threshold, 1 / w - 1)


def bootstrap_medians(sorted_x: np.ndarray, resamples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Medians (as np.median takes them) of ``resamples`` bootstrap resamples of ``sorted_x``.

    Drawn without building the resamples: a resample is x[ceil(n·U)] for n uniforms U, so its
    k-th smallest value is x[ceil(n·U_(k))], and U_(k) ~ Beta(k, n − k + 1); given U_(k) = u,
    U_(k+1) = u + (1 − u)·Beta(1, n − k). O(resamples) instead of O(resamples·n), the same
    distribution as resampling.
    """
    n = sorted_x.size

    def at(u: np.ndarray) -> np.ndarray:
        return sorted_x[np.clip(np.ceil(n * u).astype(np.int64) - 1, 0, n - 1)]

    k = (n + 1) // 2
    u = rng.beta(k, n - k + 1, resamples)
    if n % 2:
        return at(u)
    upper = u + (1 - u) * rng.beta(1, n - k, resamples)
    return (at(u) + at(upper)) / 2


def round_medians(samples: Sequence[float], rounds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The rounds present, ascending, and the median of the samples taken in each."""
    s = np.asarray(samples, dtype=np.float64)
    r = np.asarray(rounds, dtype=np.int64)
    order = np.lexsort((s, r))
    s, r = s[order], r[order]
    keys, start, count = np.unique(r, return_index=True, return_counts=True)
    return keys, (s[start + (count - 1) // 2] + s[start + count // 2]) / 2


@dataclass(frozen=True, slots=True)
class Speedup:
    """A backend's speedup over the baseline (baseline time / backend time) and its interval;
    ``rounds``: the shared rounds it was paired over, 0 when unpaired."""

    speedup: float
    low: float
    high: float
    rounds: int


def _paired_ratios(base: dict[str, Any], row: dict[str, Any]) -> np.ndarray | None:
    """Per shared round, baseline median / backend median; None when the rows cannot pair."""
    rounds_a, rounds_b = base.get("sample_rounds"), row.get("sample_rounds")
    if not rounds_a or not rounds_b or len(rounds_a) != len(base["samples_ms"]) \
            or len(rounds_b) != len(row["samples_ms"]):
        return None  # not interleaved (or a row whose rounds do not match its samples)
    keys_a, med_a = round_medians(base["samples_ms"], rounds_a)
    keys_b, med_b = round_medians(row["samples_ms"], rounds_b)
    _, ia, ib = np.intersect1d(keys_a, keys_b, assume_unique=True, return_indices=True)
    if ia.size < MIN_PAIRED_ROUNDS:
        return None
    return med_a[ia] / med_b[ib]


def speedup_interval(base: dict[str, Any], row: dict[str, Any], *, confidence: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> Speedup:
    """median(baseline) / median(backend) of two rows of one shape, with a bootstrap interval.

    Paired when both rows carry ``sample_rounds`` and share at least MIN_PAIRED_ROUNDS rounds:
    the statistic is then the median over shared rounds of the per-round ratio (each side's
    median within the round), and rounds are resampled, so a drift that slows both backends in
    a round cancels in its ratio. Otherwise the two sample sets are resampled independently
    (as ratio_of_medians does) and the speedup is the ratio of their medians.
    """
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    ratios = _paired_ratios(base, row)
    if ratios is not None:
        ratios.sort()
        draws = bootstrap_medians(ratios, resamples, rng)
        low, high = np.percentile(draws, [tail, 100 - tail])
        return Speedup(float(np.median(ratios)), float(low), float(high), int(ratios.size))
    a = np.sort(np.asarray(base["samples_ms"], dtype=np.float64))
    b = np.sort(np.asarray(row["samples_ms"], dtype=np.float64))
    draws = bootstrap_medians(a, resamples, rng) / bootstrap_medians(b, resamples, rng)
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Speedup(float(np.median(a) / np.median(b)), float(low), float(high), 0)

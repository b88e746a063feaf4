"""Latency statistics over raw timing samples: pure functions, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

__all__ = ["GATE_CONFIDENCE", "LatencyStats", "MIN_DETECTABLE_SAMPLES", "aa_detectable",
           "median_rse", "summarize"]

# The standard error of a sample median is sqrt(pi/2)·sigma/sqrt(n) for normal data; sigma is
# estimated from the IQR so that a few outliers (a preempted sample) do not inflate it.
_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
_IQR_TO_SIGMA = 1.0 / 1.3489795
# check's bootstrap interval of the ratio of medians (flashbench.results.intervals), which the
# sweep's stopping rule predicts (aa_detectable).
GATE_CONFIDENCE = 0.99
# Below this many samples on a side the bootstrap interval says nothing about the noise (one
# sample gives an interval of zero width), so the gate cannot know what it could have seen.
MIN_DETECTABLE_SAMPLES = 3
# Quantile levels of the bootstrap median that stand in for the gate's 2000 resamples: their
# 128² pairs put 82 in the 0.5% tail the gate reads (10 of its 2000 draws).
_LEVELS = 128
_NORMAL_AT_LEVELS = np.array([NormalDist().inv_cdf((i + 0.5) / _LEVELS) for i in range(_LEVELS)])


@dataclass(frozen=True, slots=True)
class LatencyStats:
    n_samples: int
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p20_ms: float
    p80_ms: float
    iqr_ms: float

    @property
    def iqr_over_median(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf

    def to_row(self) -> dict[str, float | int]:
        """The latency fields of a result row (flashbench.core.rows, group "latency")."""
        return {
            "median_ms": self.median_ms, "mean_ms": self.mean_ms, "std_ms": self.std_ms,
            "min_ms": self.min_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms,
            "n_samples": self.n_samples,
        }


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Median, mean, spread and percentiles of raw samples (no sample is dropped)."""
    if len(samples_ms) == 0:
        raise ValueError("no samples to summarize")
    a = np.asarray(samples_ms, dtype=np.float64)
    p20, p25, p50, p75, p80 = np.percentile(a, [20, 25, 50, 75, 80])
    return LatencyStats(
        n_samples=int(a.size),
        median_ms=float(p50),
        mean_ms=float(a.mean()),
        std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        min_ms=float(a.min()),
        p20_ms=float(p20),
        p80_ms=float(p80),
        iqr_ms=float(p75 - p25),
    )


def median_rse(samples_ms: Sequence[float]) -> float:
    """Relative standard error of the median, robustly estimated; inf below 3 samples."""
    if len(samples_ms) < 3:
        return math.inf
    s = summarize(samples_ms)
    if s.median_ms <= 0:
        return math.inf
    sigma = s.iqr_ms * _IQR_TO_SIGMA
    return _MEDIAN_SE_FACTOR * sigma / math.sqrt(s.n_samples) / s.median_ms


def aa_detectable(samples_ms: Sequence[float], confidence: float = GATE_CONFIDENCE) -> float:
    """The smallest slowdown ``check`` could flag between two runs that both had these samples:
    an A/A pair's ``detectable`` before the threshold floor (ratio / interval low − 1, see
    flashbench.results.intervals.detectable_slowdown), cheap enough for the sweep to ask
    between bursts (0.16 ms at 1000 samples; the gate's bootstrap of them takes 100 ms and more).

    The gate bootstraps median(current) / median(baseline); in an A/A pair both medians are
    draws of one distribution, the bootstrap median of ``samples_ms``. As
    flashbench.results.intervals.bootstrap_medians draws it, that median is x[ceil(n·U)],
    U the k-th of n sorted uniforms, Beta(k, n − k + 1) (for even n averaged with the next,
    U + (1 − U)·Beta(1, n − k)). Here U is taken at _LEVELS quantiles of its normal
    approximation instead of 2000 random draws, and the gap at its median: the log ratio of
    two independent medians is then every pairwise difference of their logs, whose upper
    (1 + confidence)/2 quantile u makes the interval's low e^−u, the ratio being 1.
    Infinite below MIN_DETECTABLE_SAMPLES samples, as the gate's is.
    """
    n = len(samples_ms)
    if n < MIN_DETECTABLE_SAMPLES:
        return math.inf
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if x[0] <= 0:
        return math.inf
    k = (n + 1) // 2
    spread = math.sqrt(k * (n - k + 1) / ((n + 1) ** 2 * (n + 2)))
    u = np.clip(k / (n + 1) + spread * _NORMAL_AT_LEVELS, 0, 1)

    def at(v: np.ndarray) -> np.ndarray:
        return x[np.clip(np.ceil(n * v).astype(np.int64) - 1, 0, n - 1)]

    medians = at(u) if n % 2 else (at(u) + at(u + (1 - u) * (1 - 2 ** (-1 / (n - k))))) / 2
    logs = np.log(medians)
    pairs = np.subtract.outer(logs, logs).ravel()
    top = pairs.size - 1 - round((1 - confidence) / 2 * pairs.size)
    return math.expm1(float(np.partition(pairs, top)[top]))

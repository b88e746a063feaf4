"""Latency statistics over raw timing samples: pure functions, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["LatencyStats", "median_rse", "summarize"]

# The standard error of a sample median is sqrt(pi/2)·sigma/sqrt(n) for normal data; sigma is
# estimated from the IQR so that a few outliers (a preempted sample) do not inflate it.
_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
_IQR_TO_SIGMA = 1.0 / 1.3489795


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

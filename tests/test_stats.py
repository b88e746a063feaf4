"""Latency statistics and the stopping rule of the timing loop."""

import math

import pytest

from flashbench.core.stats import median_rse, summarize
from flashbench.core.config import TimingPolicy
from flashbench.measure.rounds import time_callable


def test_summarize_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.n_samples == 5
    assert s.median_ms == 3.0
    assert s.mean_ms == 22.0
    assert s.min_ms == 1.0
    assert s.p20_ms == pytest.approx(1.8)
    assert s.p80_ms == pytest.approx(23.2)
    assert s.std_ms == pytest.approx(math.sqrt(7610 / 4))  # deviations -21 -20 -19 -18 78
    assert s.iqr_ms == 2.0


def test_summarize_refuses_nothing():
    with pytest.raises(ValueError):
        summarize([])


def test_median_rse_is_robust_to_one_outlier_and_shrinks_with_n():
    base = [1.0, 1.01, 0.99, 1.02, 0.98] * 4
    assert median_rse(base + [50.0]) < 0.01
    assert median_rse(base * 4) < median_rse(base)
    assert math.isinf(median_rse([1.0, 2.0]))


def test_cpu_timing_stops_when_stable():
    import torch

    calls = []
    policy = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5_000, min_samples=10,
                          max_samples=500, target_rse=0.5, min_window_ms=0)
    samples, timer = time_callable(lambda: calls.append(1), torch.device("cpu"), policy)
    assert timer == "perf-counter"
    # A loose target is met as soon as min_samples exist.
    assert len(samples) == 10
    assert all(x > 0 for x in samples)


def test_cpu_timing_respects_budget_and_max_samples():
    import time

    import torch

    policy = TimingPolicy(l2="cold", warmup_ms=0, budget_ms=30, min_samples=1000,
                          max_samples=1000, target_rse=1e-9)
    started = time.perf_counter()
    samples, _ = time_callable(lambda: time.sleep(0.005), torch.device("cpu"), policy)
    assert 3 <= len(samples) < 20  # the budget ended it, not max_samples
    assert time.perf_counter() - started < 2
    assert min(samples) >= 5.0  # each sample timed the 5 ms sleep
    # min_samples may not exceed max_samples (TimingPolicy refuses it): at most 7 here.
    policy = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=60_000, min_samples=7,
                          max_samples=7, target_rse=1e-9)
    samples, _ = time_callable(lambda: None, torch.device("cpu"), policy)
    assert len(samples) == 7

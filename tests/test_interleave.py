"""Interleaved comparison groups: rounds, the stop rule, clock-aware warm-up, and a group whose
worker dies or hangs while its backends alternate (issue 15)."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from flashbench.core.config import TimingPolicy
from flashbench.core.stats import aa_detectable
from flashbench.measure import rounds
from flashbench.measure.rounds import sample_rounds, settle_clock
from flashbench.measure.timing import should_stop
from sweep_helpers import PLUGINS, rows_of, write_config


class FakeSampler:
    """Bursts of fixed samples; ``fail_at`` makes the n-th burst raise."""

    timer = "fake"
    estimate_ms = 1.0

    def __init__(self, value, per_burst=2, fail_at=None):
        self.value, self.per_burst, self.fail_at = value, per_burst, fail_at
        self.bursts = 0
        self.warmed_ms = 0.0

    def warm(self, ms):
        self.warmed_ms += ms

    def burst(self, n):
        self.bursts += 1
        if self.fail_at is not None and self.bursts >= self.fail_at:
            raise RuntimeError("kernel failed on a later call")
        return [self.value] * min(n, self.per_burst)


POLICY = TimingPolicy(warmup_ms=0, budget_ms=1000, min_samples=6, max_samples=100,
                      target_rse=0.01, min_window_ms=0)


def test_rounds_alternate_and_every_sample_keeps_its_round():
    a, b, c = FakeSampler(1.0), FakeSampler(2.0), FakeSampler(3.0)
    out = sample_rounds([a, b, c], POLICY)
    # Constant samples are stable at once, but alternating calls share MIN_ROUNDS rounds: the
    # ratio's interval is bootstrapped over them.
    assert rounds.MIN_ROUNDS == 10
    assert [len(s.samples) for s in out] == [20, 20, 20]
    assert [s.rounds for s in out] == [[r for r in range(10) for _ in (0, 1)]] * 3
    assert out[1].samples == [2.0] * 20
    # The order rotates each round (A B C, B C A, C A B): each burst's span says when it ran.
    starts = sorted((span[0], name) for name, s in zip("abc", out) for span in s.spans)
    assert "".join(name for _, name in starts)[:9] == "abc" + "bca" + "cab"
    # Alone, a call stops as soon as it is stable: min_samples, in bursts of two.
    (alone,) = sample_rounds([FakeSampler(1.0)], POLICY)
    assert len(alone.samples) == 6
    # Bursts leave room for MIN_ROUNDS rounds within max_samples: at most 40 // 10 a burst.
    wide = [FakeSampler(1.0, per_burst=50), FakeSampler(2.0, per_burst=50)]
    out = sample_rounds(wide, POLICY.model_copy(update={"max_samples": 40}))
    per_round = [out[0].rounds.count(r) for r in range(10)]
    assert max(per_round) == 4 and min(per_round) >= 2 and out[0].rounds[-1] == 9


def test_a_call_that_fails_mid_sampling_leaves_the_others_timed():
    good, bad = FakeSampler(1.0), FakeSampler(2.0, fail_at=2)
    out = sample_rounds([good, bad], POLICY)
    assert len(out[0].samples) == 20 and out[0].error is None
    assert out[1].samples == [2.0, 2.0] and "later call" in str(out[1].error)


def test_the_stop_rule_waits_for_the_window_and_gives_up_at_the_budget():
    policy = TimingPolicy(min_samples=3, max_samples=100, target_rse=0.01, budget_ms=50,
                          min_window_ms=100)
    steady = [1.0] * 10
    assert not should_stop(steady, spent_ms=10, window_ms=99, policy=policy)  # window not seen
    assert should_stop(steady, spent_ms=10, window_ms=100, policy=policy)
    noisy = [1.0, 2.0, 3.0, 1.5, 2.5]
    assert not should_stop(noisy, spent_ms=49, window_ms=1000, policy=policy)
    assert should_stop(noisy, spent_ms=50, window_ms=1000, policy=policy)  # budget spent
    assert not should_stop([1.0, 1.0], spent_ms=50, window_ms=1000, policy=policy)  # < 3
    assert should_stop([5.0] * 100, spent_ms=0, window_ms=0, policy=policy)  # max_samples


class ListSampler(FakeSampler):
    """One sample per burst, from a list (a case whose samples vary)."""

    def __init__(self, samples):
        super().__init__(None, per_burst=1)
        self.samples = iter(samples)

    def burst(self, n):
        self.bursts += 1
        return [next(self.samples)]


def test_in_a_group_each_call_samples_until_check_could_see_its_detect_slowdown():
    # 0.5% jitter with one sample in ten 20% slow: its RSE is met at 10 samples, but check of
    # two such runs could not have seen 5% then (flashbench.core.stats.aa_detectable).
    noisy = (np.random.default_rng(1).lognormal(0, 0.005, 200)
             * np.where(np.random.default_rng(2).random(200) < 0.1, 1.2, 1)).tolist()
    policy = POLICY.model_copy(update={"min_samples": 10})
    alone = next(n for n in range(1, 200) if should_stop(noisy[:n], 0, 0, policy))
    assert alone > rounds.MIN_ROUNDS and aa_detectable(noisy[:rounds.MIN_ROUNDS]) > 0.05
    steady, wobbly = FakeSampler(1.0, per_burst=1), ListSampler(noisy)
    out = sample_rounds([steady, wobbly], policy)
    # The steady call leaves after the shared MIN_ROUNDS rounds; the noisy one goes on alone
    # until its own samples can show 5%, as it would alone.
    assert len(out[0].samples) == rounds.MIN_ROUNDS
    assert out[1].samples == noisy[:alone] and out[1].rounds == list(range(alone))
    assert aa_detectable(out[1].samples) <= 0.05
    off = sample_rounds([FakeSampler(1.0, per_burst=1), ListSampler(noisy)],
                        policy.model_copy(update={"detect": None}))
    assert [len(s.samples) for s in off] == [rounds.MIN_ROUNDS] * 2  # the RSE rule alone


def test_warm_up_runs_until_the_clock_is_steady(monkeypatch):
    # A boost that decays to the power cap's clock: 1980, 1950, ..., then 1755 for good.
    readings = iter([1980, 1950, 1900, 1850, 1800] + [1755] * 100)
    sampler = FakeSampler(1.0)
    settle_clock([sampler], lambda: float(next(readings)))
    # Five readings within 1% end it: the five falling ones and five at 1755.
    assert sampler.warmed_ms == pytest.approx(10 * rounds.STEADY_GAP_MS)
    # A clock that never settles is given MAX_WARMUP_MS, then sampling starts anyway.
    monkeypatch.setattr(rounds, "MAX_WARMUP_MS", 30.0)
    zigzag = itertools.cycle([1980.0, 1700.0])
    assert settle_clock([FakeSampler(1.0)], lambda: next(zigzag)) >= 30.0
    assert settle_clock([sampler], None) == 0.0  # no NVML: nothing to wait for


def test_telemetry_of_one_case_comes_from_its_own_bursts():
    from flashbench.measure.telemetry import TelemetrySampler

    sampler = TelemetrySampler(None)
    base = {"mem": 2619, "power": 690.0, "temp": 60, "reasons": 0, "mem_util": 50,
            "mem_used": 1}
    sampler._samples = [base | {"t": t, "sm": sm} for t, sm in
                        [(0.0, 1980), (1.0, 1900), (2.0, 1755), (3.0, 1740)]]
    mine = sampler.summary([(1.5, 3.5)])
    assert (mine["sm_clock_min_mhz"], mine["sm_clock_max_mhz"]) == (1740, 1755)
    everything = sampler.summary()
    assert (everything["sm_clock_min_mhz"], everything["sm_clock_max_mhz"]) == (1740, 1980)
    # A burst shorter than the polling interval saw no reading: the group's readings stand in.
    assert sampler.summary([(0.2, 0.3)]) == everything


def _run(tmp_path, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "flashbench", "run", "--out", str(tmp_path),
                           *args], capture_output=True, text=True, timeout=timeout)


def test_a_sweep_interleaves_each_shape_and_no_interleave_does_not(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", ["naive", "sdpa"], seq_len=(16, 32))
    done = _run(tmp_path / "a", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "a").iterdir()
    rows = rows_of(run_dir)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert len(r["sample_rounds"]) == len(r["samples_ms"]) == r["n_samples"]
        assert r["sample_rounds"] == sorted(r["sample_rounds"]) and r["sample_rounds"][0] == 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["config"]["timing"]["interleave"] is True
    done = _run(tmp_path / "b", "--config", str(cfg), "--no-interleave")
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "b").iterdir()
    assert [r["sample_rounds"] for r in rows_of(run_dir)] == [None] * 4


@pytest.mark.parametrize("fault,status", [("late-crash", "crash"), ("late-hang", "timeout")])
def test_a_worker_lost_while_a_group_alternates_costs_only_the_culprit(tmp_path, fault, status):
    # The worker dies (or hangs) while three backends alternate: which one did it is unknown,
    # so each is timed again alone, in a fresh worker; only the culprit's row says so.
    cfg = write_config(tmp_path / "cfg.yaml", ["naive", fault, "sdpa"])
    done = _run(tmp_path / "out", "--config", str(cfg), "--plugin",
                str(PLUGINS / "late_faults.py"), "--case-timeout", "3")
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    rows = {r["backend"]: r for r in rows_of(run_dir)}
    assert set(rows) == {"naive", fault, "sdpa"}
    assert rows[fault]["status"] == status
    for name in ("naive", "sdpa"):
        assert rows[name]["status"] == "ok" and rows[name]["n_samples"] >= 1
        assert rows[name]["sample_rounds"] is None  # timed alone, after the group was lost


def test_gpu_timers_refuse_a_cpu_with_one_line_and_nothing_written(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", ["naive"])
    for timer in ("graph", "profiler"):
        done = _run(tmp_path / "out", "--config", str(cfg), "--timer", timer)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"error: --timer {timer} needs a CUDA GPU (a CUDA graph, or CUPTI's kernel times); "
            f"on a CPU only the wall clock times (--timer events)"]
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    done = _run(tmp_path / "out", "--config", str(cfg), "--timer", "cupti")
    assert done.returncode == 2 and "timer" in done.stderr and "Traceback" not in done.stderr

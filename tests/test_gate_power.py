"""What the gate cannot see: runs timed differently refused, `undetectable` cases, paired speedup intervals."""

import json
import math
import time
from pathlib import Path
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.results.compare import WIDE_SPEEDUP_INTERVAL, compare_backends, compare_runs
from flashbench.results.intervals import (RatioEstimate, bootstrap_medians, detectable_slowdown,
                                          ratio_of_medians, round_medians, speedup_interval)
from sweep_helpers import fake_row, write_fake_run

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def lognormal(seed, n, sigma, scale=1.0):
    return (np.random.default_rng(seed).lognormal(0, sigma, n) * scale).tolist()


# Four samples a side spread ±4%, as a short CPU or small-kernel case shows: no change, but
# nothing near 5% could have shown either.
FEW_BASE, FEW_CURRENT = [1.00, 1.03, 0.97, 1.05], [0.99, 1.04, 0.96, 1.02]


def three_cases(**fields):
    """Three tightly measured cases (200 samples, 1% noise): nothing to see but the mode."""
    return [fake_row("sdpa", lognormal(i, 200, 0.01), seq_len=64 * 2 ** i, **fields)
            for i in range(3)]


# --- runs timed differently -------------------------------------------------------------

@pytest.mark.parametrize("field, base, current", [("l2", "cold", "hot"),
                                                  ("timer", "cuda-events", "cuda-graph"),
                                                  ("matmul_precision", "tf32", "ieee")])
def test_check_and_compare_refuse_runs_timed_differently(tmp_path, field, base, current):
    a = write_fake_run(tmp_path / "a", three_cases(**{field: base}))
    b = write_fake_run(tmp_path / "b", three_cases(**{field: current}))
    summary, junit = tmp_path / "s.md", tmp_path / "j.xml"
    expected = (f"error: the two runs were timed differently ({field}: {base} vs {current}); "
                f"pass --allow-mixed to compare anyway\n")
    result = invoke("check", a, b, "--summary", summary, "--junit", junit)
    assert result.exit_code == 2 and result.stderr == expected and result.stdout == ""
    assert not summary.exists() and not junit.exists()
    for fmt in ("table", "json"):
        result = invoke("compare", a, b, "--format", fmt)
        assert result.exit_code == 2 and result.stderr == expected and result.stdout == ""


def test_allow_mixed_compares_and_says_what_differs(tmp_path):
    a = write_fake_run(tmp_path / "a", three_cases(l2="cold"))
    b = write_fake_run(tmp_path / "b", three_cases(l2="hot"))
    result = invoke("check", a, b, "--allow-mixed", "--summary", tmp_path / "s.md")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == ("check: no regression (3 unchanged; threshold "
                                              "5.0%; timed differently: l2: cold vs hot)")
    assert "note: timed differently: l2: cold vs hot" in result.stderr
    assert ("Compared anyway (`--allow-mixed`), though timed differently: l2: cold vs hot"
            in (tmp_path / "s.md").read_text())
    table = invoke("compare", a, b, "--allow-mixed")
    assert table.exit_code == 0
    assert "timed differently: l2: cold vs hot (compared anyway: --allow-mixed)" in \
        " ".join(table.stdout.split())
    as_json = invoke("compare", a, b, "--allow-mixed", "--format", "json")
    assert [r["timed_differently"] for r in json.loads(as_json.stdout)] == ["l2: cold vs hot"] * 3
    assert as_json.stderr == ("note: timed differently: l2: cold vs hot (compared anyway: "
                              "--allow-mixed)\n")


def test_differences_are_per_case_and_an_unrecorded_precision_is_none(tmp_path):
    cur = three_cases(matmul_precision="tf32")
    cur[0]["l2"] = "hot"
    a = write_fake_run(tmp_path / "a", three_cases(matmul_precision=None))  # old rows
    b = write_fake_run(tmp_path / "b", cur)
    result = invoke("check", a, b)
    assert result.exit_code == 2
    assert "(l2: cold vs hot in 1 of 3 cases)" in result.stderr
    cur[0]["l2"] = "cold"
    c = write_fake_run(tmp_path / "c", cur)
    assert invoke("check", a, c).exit_code == 0  # null precision on one side: no mismatch


def test_a_run_whose_backends_differ_in_mode_compares_side_by_side(tmp_path):
    rows = [fake_row("sdpa", lognormal(0, 50, 0.01), l2="cold"),
            fake_row("triton", lognormal(1, 50, 0.01, 0.8), l2="hot")]
    run = write_fake_run(tmp_path / "r", rows)
    result = invoke("compare", run, "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)[0]["triton:speedup"] == pytest.approx(1.25, rel=0.01)


# --- undetectable ----------------------------------------------------------------------

def test_detectable_slowdown_formula():
    # w = low / ratio = 0.9: a slowdown shows with low ≈ (1 + s)·0.9, above 1 from s = 1/0.9 − 1
    assert detectable_slowdown(RatioEstimate(1.0, 0.9, 1.1), 10, 10, 0.05) == \
        pytest.approx(1 / 0.9 - 1)
    assert detectable_slowdown(RatioEstimate(1.2, 1.08, 1.3), 10, 10, 0.05) == \
        pytest.approx(1 / 0.9 - 1)  # scale-free: the same width at another ratio
    assert detectable_slowdown(RatioEstimate(1.0, 0.99, 1.01), 10, 10, 0.05) == 0.05
    assert math.isinf(detectable_slowdown(RatioEstimate(1.0, 1.0, 1.0), 2, 10, 0.05))


def test_few_noisy_samples_are_undetectable_many_tight_ones_unchanged_a_real_slowdown_caught():
    base = [fake_row("sdpa", FEW_BASE, seq_len=64),
            fake_row("sdpa", lognormal(2, 200, 0.01), seq_len=128),
            fake_row("sdpa", lognormal(3, 200, 0.01), seq_len=256)]
    cur = [fake_row("sdpa", FEW_CURRENT, seq_len=64),
           fake_row("sdpa", lognormal(5, 200, 0.01), seq_len=128),
           fake_row("sdpa", lognormal(6, 200, 0.01, 1.3), seq_len=256)]
    frame = compare_runs(base, cur).set_index("seq_len")
    assert frame["verdict"].to_dict() == {64: "undetectable", 128: "unchanged", 256: "regression"}
    blind = frame.loc[64]
    assert blind["detectable"] == pytest.approx(blind["ratio"] / blind["ci_low"] - 1)
    assert blind["detectable"] == pytest.approx(0.0727, abs=1e-4)  # a 7% slowdown: not seen
    assert frame.loc[128, "detectable"] == 0.05  # the threshold binds
    assert (frame["base_n"].tolist(), frame["current_n"].tolist()) == ([4, 200, 200],
                                                                        [4, 200, 200])
    assert frame.loc[256, "ratio"] == pytest.approx(1.3, rel=0.01)


def _blind_runs(tmp_path):
    base = [fake_row("sdpa", FEW_BASE, seq_len=64),
            fake_row("sdpa", lognormal(2, 200, 0.01), seq_len=128)]
    cur = [fake_row("sdpa", FEW_CURRENT, seq_len=64),
           fake_row("sdpa", lognormal(5, 200, 0.01), seq_len=128)]
    detectable = compare_runs(base, cur)["detectable"].iloc[0]
    return write_fake_run(tmp_path / "a", base), write_fake_run(tmp_path / "b", cur), detectable


def test_check_lists_undetectable_cases_and_strict_fails_on_them(tmp_path):
    a, b, detectable = _blind_runs(tmp_path)
    result = invoke("check", a, b, "--summary", tmp_path / "s.md", "--junit", tmp_path / "j.xml")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == ("check: no regression (1 unchanged, 1 "
                                              "undetectable; threshold 5.0%)")
    listed = [line for line in result.stdout.splitlines() if "undetectable" in line and "│" in line]
    assert len(listed) == 1 and f"{detectable:.1%}" in listed[0] and "4/4" in listed[0]
    assert "cycles" not in result.stdout  # rows without clocks (a CPU): no clock columns
    summary = (tmp_path / "s.md").read_text()
    assert "| undetectable | 1 |" in summary
    assert (f"| sdpa fwd B1 H2 N64 D16 fp32 | {detectable:.1%} | 4 / 4 | ×" in summary)
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    note = suite[0].find("system-out").text
    assert note.startswith("undetectable: no slowdown seen, but the smallest its samples could "
                           f"show is {detectable:.1%}") and "4 / 4 samples" in note

    strict = invoke("check", a, b, "--strict", "--junit", tmp_path / "j2.xml")
    assert strict.exit_code == 1
    assert strict.stdout.splitlines()[-1] == ("check: 1 failing case(s) (1 unchanged, 1 "
                                              "undetectable; threshold 5.0%; --strict: "
                                              "undetectable and clock-changed cases fail)")
    suite = ET.parse(tmp_path / "j2.xml").getroot()
    assert suite.get("failures") == "1" and suite[0].find("failure") is not None
    assert suite[1].find("failure") is None


def test_strict_passes_when_every_case_could_show_the_threshold(tmp_path):
    a = write_fake_run(tmp_path / "a", three_cases())
    b = write_fake_run(tmp_path / "b", three_cases())
    assert invoke("check", a, b, "--strict").exit_code == 0


def test_fewer_than_three_samples_are_undetectable_at_any_size(tmp_path):
    base, cur = [fake_row("sdpa", [1.0, 1.01])], [fake_row("sdpa", [1.0, 1.02])]
    a, b = write_fake_run(tmp_path / "a", base), write_fake_run(tmp_path / "b", cur)
    frame = compare_runs(base, cur)
    assert frame["verdict"].iloc[0] == "undetectable" and math.isinf(frame["detectable"].iloc[0])
    result = invoke("compare", a, b, "--format", "json")
    assert json.loads(result.stdout)[0]["detectable"] is None  # JSON has no infinity
    summary = tmp_path / "s.md"
    assert invoke("check", a, b, "--summary", summary).exit_code == 0
    assert "| sdpa fwd B1 H2 N64 D16 fp32 | ∞ | 2 / 2 |" in summary.read_text()


# --- paired speedup intervals ----------------------------------------------------------

def drifting_pair(rounds=60, drift=0.05, noise=0.005, speedup=1.25, paired=True):
    """Two backends sampled in alternating rounds; every round's drift slows both alike."""
    rng = np.random.default_rng(7)
    common = rng.lognormal(0, drift, rounds)
    base = common * rng.lognormal(0, noise, rounds)
    fast = common * rng.lognormal(0, noise, rounds) / speedup
    r = range(rounds) if paired else None
    return [fake_row("sdpa", base, rounds=r), fake_row("triton", fast, rounds=r)]


def test_paired_rounds_narrow_the_speedup_interval_under_a_shared_drift():
    paired = compare_backends(drifting_pair(paired=True), "sdpa").iloc[0]
    unpaired = compare_backends(drifting_pair(paired=False), "sdpa").iloc[0]
    width = {name: (f["triton:speedup_high"] - f["triton:speedup_low"]) / f["triton:speedup"]
             for name, f in (("paired", paired), ("unpaired", unpaired))}
    assert width["paired"] < WIDE_SPEEDUP_INTERVAL < width["unpaired"]
    assert width["paired"] * 5 < width["unpaired"]  # the 5% drift cancels round by round
    # Within 1% of the truth at both ends (a 95% interval misses it 1 time in 20; this one
    # ends 0.004% above it), where the unpaired one spans the drift.
    assert paired["triton:speedup"] == pytest.approx(1.25, rel=0.002)
    assert 1.24 < paired["triton:speedup_low"] < paired["triton:speedup_high"] < 1.26
    assert (paired["triton:paired_rounds"], unpaired["triton:paired_rounds"]) == (60, 0)
    assert (paired["triton:wide"], unpaired["triton:wide"]) == (False, True)
    assert paired["sdpa:speedup"] == paired["sdpa:speedup_low"] == paired["sdpa:speedup_high"] == 1


def test_without_enough_shared_rounds_the_interval_is_unpaired():
    base, fast = drifting_pair()
    fast["sample_rounds"] = [r + 58 for r in fast["sample_rounds"]]  # two rounds in common
    row = compare_backends([base, fast], "sdpa").iloc[0]
    assert row["triton:paired_rounds"] == 0
    assert row["triton:speedup"] == pytest.approx(base["median_ms"] / fast["median_ms"])


def test_round_medians_take_each_rounds_own_samples():
    keys, medians = round_medians([5.0, 1.0, 2.0, 9.0, 3.0], [1, 0, 0, 1, 0])
    assert keys.tolist() == [0, 1] and medians.tolist() == [2.0, 7.0]


def test_bootstrap_medians_are_the_medians_of_resamples():
    rng = np.random.default_rng(3)
    for n in (5, 8, 31):
        x = np.sort(rng.lognormal(0, 0.1, n))
        brute = np.median(x[rng.integers(0, n, (100_000, n))], axis=1)
        fast = bootstrap_medians(x, 100_000, np.random.default_rng(1))
        q = [1, 5, 25, 50, 75, 95, 99]
        assert np.percentile(fast, q) == pytest.approx(np.percentile(brute, q), rel=2e-3)


def test_speedup_interval_is_deterministic_and_like_the_gates_bootstrap():
    base, fast = (dict(r, sample_rounds=None) for r in drifting_pair(drift=0.02))
    first, second = speedup_interval(base, fast), speedup_interval(base, fast)
    assert first == second
    gate = ratio_of_medians(fast["samples_ms"], base["samples_ms"], confidence=0.95)
    assert first.low == pytest.approx(gate.low, rel=0.01)
    assert first.high == pytest.approx(gate.high, rel=0.01)


def test_compare_marks_wide_speedups_and_carries_the_intervals(tmp_path):
    rows = drifting_pair(paired=False) + [dict(r, seq_len=128, kv_len=128)
                                          for r in drifting_pair(paired=True)]
    run = write_fake_run(tmp_path / "r", rows)
    table = invoke("compare", run, "--baseline-backend", "sdpa")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert [line.split()[-2] for line in lines if line.startswith("│")] == ["1.25±", "1.25"]
    assert "± speedup's 95% interval wider than 4% of it" in " ".join(table.stdout.split())
    markdown = invoke("compare", run, "--format", "markdown").stdout
    assert "| triton × | triton × 95% |" in markdown and "[1.2" in markdown
    csv_header = invoke("compare", run, "--format", "csv").stdout.splitlines()[0].split(",")
    assert {"triton:speedup_low", "triton:speedup_high", "triton:paired_rounds"} <= \
        set(csv_header)
    records = json.loads(invoke("compare", run, "--format", "json").stdout)
    assert records[0]["triton:speedup_low"] < 1.25 < records[0]["triton:speedup_high"]
    tight = write_fake_run(tmp_path / "t", drifting_pair(paired=True))
    assert "±" not in invoke("compare", tight).stdout  # the legend shows only marks present


def test_compare_of_300_cells_of_1000_samples_takes_well_under_a_second_or_two():
    rng = np.random.default_rng(0)
    rows = [fake_row(b, rng.lognormal(0, 0.02, 1000) * scale, seq_len=16 * (shape + 1),
                     rounds=range(1000) if shape % 2 else None)
            for shape in range(100) for b, scale in (("sdpa", 1), ("triton", .9), ("naive", 3))]
    start = time.perf_counter()
    frame = compare_backends(rows)
    elapsed = time.perf_counter() - start
    assert len(frame) == 100 and frame["triton:speedup_low"].notna().all()
    assert elapsed < 2.0, elapsed  # 0.16-0.28 s measured (scripts/gate_evidence.py)


# --- clock-changed ---------------------------------------------------------------------

H200_GATE = Path(__file__).resolve().parents[1] / "results" / "reference" / "h200-gate"


def clocked_pair(slowdown, base_mhz, current_mhz, n=40):
    """One case of two runs: 1% lognormal noise, the current run ``slowdown`` slower in time,
    each row with its median SM clock (None: no telemetry, as on a CPU)."""
    base = fake_row("sdpa-cudnn", lognormal(11, n, 0.01, 13.33), sm_clock_mhz=base_mhz)
    cur = fake_row("sdpa-cudnn", lognormal(12, n, 0.01, 13.33 * (1 + slowdown)),
                   sm_clock_mhz=current_mhz)
    return [base], [cur]


def test_a_slowdown_the_clocks_explain_is_clock_changed_and_its_cycles_are_time_times_clock():
    # The H200 A/A alarm: ×1.093 in time at 1860 vs 1755 MHz is ×1.031 in cycles.
    frame = compare_runs(*clocked_pair(0.093, 1860.0, 1755.0))
    record = frame.iloc[0]
    assert record["verdict"] == "clock-changed"
    assert record["ratio"] == pytest.approx(1.093, rel=0.01) and record["ci_low"] > 1
    scale = 1755 / 1860
    assert record["cycle_ratio"] == pytest.approx(record["ratio"] * scale)
    assert record["cycle_ci_low"] == pytest.approx(record["ci_low"] * scale)
    assert record["cycle_ci_high"] == pytest.approx(record["ci_high"] * scale)
    assert record["cycle_ratio"] < 1.05  # the regression test fails in cycles
    assert (record["base_clock_mhz"], record["current_clock_mhz"]) == (1860, 1755)
    # The mirror image: faster in time at a higher clock, no faster in cycles.
    faster = compare_runs(*clocked_pair(1 / 1.093 - 1, 1755.0, 1860.0)).iloc[0]
    assert faster["ratio"] < 1 / 1.05 and faster["verdict"] == "clock-changed"


@pytest.mark.parametrize("slowdown, base_mhz, current_mhz, verdict", [
    (0.15, 1860.0, 1755.0, "regression"),   # ×1.085 in cycles: a real slowdown survives
    (0.07, 1860.0, 1805.0, "regression"),   # clocks 2.96% apart: time decides (×1.038 in cycles)
    (0.093, None, None, "regression"),      # no telemetry: as before
    (0.093, 1860.0, None, "regression"),    # one side without telemetry: as before
    (0.0, 1860.0, 1755.0, "unchanged"),     # no change in time: the clocks change nothing
])
def test_clock_changed_needs_a_change_in_time_that_cycles_undo_and_clocks_apart(
        slowdown, base_mhz, current_mhz, verdict):
    record = compare_runs(*clocked_pair(slowdown, base_mhz, current_mhz)).iloc[0]
    assert record["verdict"] == verdict
    if base_mhz and current_mhz:
        assert record["cycle_ratio"] == pytest.approx(record["ratio"] * current_mhz / base_mhz)
    else:
        assert math.isnan(record["cycle_ratio"]) and math.isnan(record["cycle_ci_low"])


def test_check_lists_clock_changed_cases_passes_them_and_strict_fails_on_them(tmp_path):
    base, cur = clocked_pair(0.093, 1860.0, 1755.0)
    a, b = write_fake_run(tmp_path / "a", base), write_fake_run(tmp_path / "b", cur)
    record = compare_runs(base, cur).iloc[0]
    cycles = (f"×{record['cycle_ratio']:.3f} [{record['cycle_ci_low']:.3f}, "
              f"{record['cycle_ci_high']:.3f}]")
    result = invoke("check", a, b, "--summary", tmp_path / "s.md", "--junit", tmp_path / "j.xml")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == ("check: no regression (1 clock-changed; "
                                              "threshold 5.0%)")
    listed = [line for line in result.stdout.splitlines()
              if "clock-changed" in line and "│" in line]
    assert len(listed) == 1 and "1860→1755" in listed[0] and cycles[1:] in listed[0]
    summary = (tmp_path / "s.md").read_text()
    assert "| clock-changed | 1 |" in summary and "✅ no regression" in summary
    assert f"| sdpa-cudnn fwd B1 H2 N64 D16 fp32 | 1860 → 1755 | ×{record['ratio']:.3f}" \
        in summary and summary.count(cycles) == 1
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("failures") == "0" and suite[0].find("failure") is None
    note = suite[0].find("system-out").text
    assert note.startswith("clock-changed: slower in time, not in cycles: ×")
    assert f"{cycles} in cycles; median SM clock 1860 → 1755 MHz" in note

    strict = invoke("check", a, b, "--strict", "--junit", tmp_path / "j2.xml")
    assert strict.exit_code == 1
    assert strict.stdout.splitlines()[-1] == ("check: 1 failing case(s) (1 clock-changed; "
                                              "threshold 5.0%; --strict: undetectable and "
                                              "clock-changed cases fail)")
    suite = ET.parse(tmp_path / "j2.xml").getroot()
    assert suite.get("failures") == "1"
    assert suite[0].find("failure").get("message").startswith("clock-changed: slower in time")


def test_the_h200_aa_alarm_is_clock_changed_and_the_regression_plugin_still_fails():
    # Real runs (results/reference/h200-gate): prefill run twice, and SDPA flash with 10% more
    # work against its baseline (clocks within 3% there: the time decides).
    result = invoke("check", H200_GATE / "prefill-a", H200_GATE / "prefill-b")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == ("check: no regression (1 clock-changed, 8 "
                                              "not-timed, 147 unchanged, 4 undetectable; "
                                              "threshold 5.0%)")
    changed = [line for line in result.stdout.splitlines()
               if "clock-changed" in line and "│" in line]
    assert len(changed) == 1 and "sdpa-cudnn" in changed[0] and "1860→1755" in changed[0]
    assert "1.093 [1.041, 1.112]" in changed[0]
    slower = invoke("check", H200_GATE / "baseline", H200_GATE / "slower-1")
    assert slower.exit_code == 1 and "(8 regression;" in slower.stdout.splitlines()[-1]

"""Side-by-side comparisons: backends within a run, and the same cases across two runs.

Both return plain pandas DataFrames; rendering (Rich, Markdown, CSV, JSON) lives elsewhere.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from flashbench.core import registry
from flashbench.core.cases import CASE_FIELDS, SHAPE_FIELDS, Status, case_key
from flashbench.core.rows import by_shape
from flashbench.core.stats import GATE_CONFIDENCE, summarize
from flashbench.results.clocks import clocks_differ, off_clock, run_clock
from flashbench.results.intervals import (RatioEstimate, detectable_slowdown, ratio_of_medians,
                                          speedup_interval)
from flashbench.results.modes import pair_differences

__all__ = [
    "CLOCK_CHANGED",
    "NOISY_IQR_OVER_MEDIAN",
    "RatioEstimate",
    "WIDE_SPEEDUP_INTERVAL",
    "compare_backends",
    "compare_runs",
    "ratio_of_medians",
    "timing_verdict",
]

# A cell whose samples spread this much (IQR over median) is marked noisy rather than hidden.
NOISY_IQR_OVER_MEDIAN = 0.05
# A speedup whose 95% interval spans more than this share of it is marked: its second digit is
# not to be read (high - low over the speedup, so 4% is about ±2%).
WIDE_SPEEDUP_INTERVAL = 0.04
_TIMED = (Status.OK, Status.MISMATCH)
# A change in time that is no change in cycles, between cases whose SM clocks differed: the
# card, not the code (a power cap that clocked one run lower).
CLOCK_CHANGED = "clock-changed"


def _is_noisy(row: dict[str, Any]) -> bool:
    samples = row.get("samples_ms") or []
    return len(samples) >= 3 and summarize(samples).iqr_over_median > NOISY_IQR_OVER_MEDIAN


def _pick_baseline(ok: dict[str, float], baseline: str | None, baselines: set[str]) -> str | None:
    if baseline is not None:
        return baseline if baseline in ok else None
    candidates = {b: t for b, t in ok.items() if b in baselines}
    return min(candidates, key=candidates.get) if candidates else None


def _speedup_fields(b: str, base: str | None, cells: dict[str, dict[str, Any]],
                    t: float | None) -> dict[str, Any]:
    """speedup, its 95% interval, the rounds it was paired over, and whether it is wide."""
    out: dict[str, Any] = {f"{b}:speedup": None, f"{b}:speedup_low": None,
                           f"{b}:speedup_high": None, f"{b}:paired_rounds": None,
                           f"{b}:wide": False}
    if not (t and base):
        return out
    base_row, row = cells[base], cells[b]
    if b == base:  # the baseline against itself is exactly 1, whatever its noise
        est_speedup, low, high, rounds = 1.0, 1.0, 1.0, None
    elif base_row.get("samples_ms") and row.get("samples_ms"):
        est = speedup_interval(base_row, row)
        # Unpaired, the speedup stays the ratio of the rows' medians (what the table shows);
        # paired, the median of per-round ratios, the estimate its interval is about.
        est_speedup = est.speedup if est.rounds else base_row["median_ms"] / t
        low, high, rounds = est.low, est.high, est.rounds
    else:  # medians without samples (a hand-made row): a speedup, but no interval
        out[f"{b}:speedup"] = base_row["median_ms"] / t
        return out
    out.update({f"{b}:speedup": est_speedup, f"{b}:speedup_low": low,
                f"{b}:speedup_high": high, f"{b}:paired_rounds": rounds,
                f"{b}:wide": (high - low) / est_speedup > WIDE_SPEEDUP_INTERVAL})
    return out


def compare_backends(rows: list[dict[str, Any]], baseline: str | None = None) -> pd.DataFrame:
    """One row per case, backends side by side: median, TFLOP/s, speedup over the baseline.

    The baseline is ``baseline`` when given, else per case the fastest of the backends declared
    as baselines (flashbench.core.registry: the SDPA backends, and plugins that say so).
    Speedup > 1 means faster than the baseline; ``speedup_low`` and ``speedup_high`` bound it
    (95% bootstrap, paired by round where both rows have ``sample_rounds``: see
    flashbench.results.intervals.speedup_interval), ``paired_rounds`` says over how many
    rounds (0: unpaired) and ``wide`` marks an interval wider than WIDE_SPEEDUP_INTERVAL of
    the speedup. Each backend also gets its status and flags (``noisy``: IQR/median above
    NOISY_IQR_OVER_MEDIAN; ``throttled``: NVML reported throttling or the SM clock strayed
    from the run's median; ``tf32``: its fp32 products ran in TF32), and ``fastest`` names
    the fastest backend.
    """
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    baselines = set(registry.baseline_names())
    clock = run_clock(rows)
    records = []
    for key, cells in by_shape(rows).items():
        timed = {b: r["median_ms"] for b, r in cells.items()
                 if r["status"] in _TIMED and r.get("median_ms")}
        ok = {b: t for b, t in timed.items() if cells[b]["status"] == Status.OK}
        base = _pick_baseline(ok, baseline, baselines)
        record: dict[str, Any] = dict(zip(SHAPE_FIELDS, key))
        record["baseline"] = base
        record["fastest"] = min(ok, key=ok.get) if ok else None
        for b in backends:
            r = cells.get(b)
            t = timed.get(b)
            record[f"{b}:status"] = r["status"] if r else None
            record[f"{b}:median_ms"] = t
            record[f"{b}:tflops"] = r.get("tflops") if t else None
            record.update(_speedup_fields(b, base, cells, t))
            record[f"{b}:noisy"] = bool(r and t and _is_noisy(r))
            record[f"{b}:throttled"] = bool(r and t and off_clock(r, clock))
            record[f"{b}:tf32"] = bool(r and t and r.get("matmul_precision") == "tf32")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _verdict(est: RatioEstimate, threshold: float) -> str:
    """The gate's test of one ratio and its interval: beyond the threshold, and excluding 1."""
    if est.ratio > 1 + threshold and est.low > 1:
        return "regression"
    if est.ratio < 1 / (1 + threshold) and est.high < 1:
        return "improvement"
    return "unchanged"


def timing_verdict(baseline: list[float], current: list[float], *, threshold: float,
                   confidence: float = GATE_CONFIDENCE) -> tuple[str, RatioEstimate]:
    """regression / improvement / unchanged for two sets of raw samples of one case.

    A change counts only when it is both large (the ratio of medians beyond the threshold) and
    real (the bootstrap interval excludes 1): noise alone rarely passes the second test, and
    a small but real drift between runs (clocks, another driver) does not pass the first.
    """
    est = ratio_of_medians(baseline, current, confidence=confidence)
    return _verdict(est, threshold), est


def _cycle_fields(a: dict[str, Any], b: dict[str, Any], est: RatioEstimate, verdict: str,
                  threshold: float) -> tuple[dict[str, Any], str]:
    """Both rows' median SM clocks, the ratio in cycles (time × clock) with its interval, and
    the verdict: ``clock-changed`` where a change in time is none in cycles and the clocks
    differ by more than CLOCK_DEVIATION (a real change survives the normalisation)."""
    base_clock, cur_clock = a.get("sm_clock_mhz"), b.get("sm_clock_mhz")
    fields: dict[str, Any] = dict(base_clock_mhz=base_clock, current_clock_mhz=cur_clock)
    if not (base_clock and cur_clock):  # no telemetry (a CPU): time is all there is
        return fields, verdict
    scale = cur_clock / base_clock
    cycles = RatioEstimate(est.ratio * scale, est.low * scale, est.high * scale)
    fields.update(cycle_ratio=cycles.ratio, cycle_ci_low=cycles.low, cycle_ci_high=cycles.high)
    if verdict in ("regression", "improvement") and clocks_differ(base_clock, cur_clock) \
            and _verdict(cycles, threshold) != verdict:
        verdict = CLOCK_CHANGED
    return fields, verdict


def _status_rank(status: str | None) -> int:
    """Lower is better; every status other than ok is a failure of the case."""
    return 0 if status == Status.OK else 1


def _timed_fields(a: dict[str, Any], b: dict[str, Any], threshold: float,
                  confidence: float) -> dict[str, Any]:
    """The columns of a case both runs timed ok: medians, ratio, interval, what the samples
    could have shown, the verdict."""
    verdict, est = timing_verdict(a["samples_ms"], b["samples_ms"], threshold=threshold,
                                  confidence=confidence)
    n_a, n_b = len(a["samples_ms"]), len(b["samples_ms"])
    detectable = detectable_slowdown(est, n_a, n_b, threshold)
    # No slowdown seen, but none at the threshold could have been: not "unchanged", "blind".
    if verdict == "unchanged" and detectable > threshold:
        verdict = "undetectable"
    clocks, verdict = _cycle_fields(a, b, est, verdict, threshold)
    return dict(base_median_ms=a["median_ms"], current_median_ms=b["median_ms"],
                ratio=est.ratio, ci_low=est.low, ci_high=est.high, detectable=detectable,
                **clocks, verdict=verdict)


_NUMBERS = ("base_median_ms", "current_median_ms", "ratio", "ci_low", "ci_high", "detectable",
            "base_clock_mhz", "current_clock_mhz", "cycle_ratio", "cycle_ci_low",
            "cycle_ci_high")


def compare_runs(base_rows: list[dict[str, Any]], cur_rows: list[dict[str, Any]], *,
                 threshold: float = 0.05, confidence: float = GATE_CONFIDENCE) -> pd.DataFrame:
    """The same cases of two runs side by side, with a verdict per case.

    Verdicts: ``regression`` (current slower than the baseline by more than ``threshold`` and
    the bootstrap interval of the ratio of medians lies wholly above 1), ``improvement`` (the
    mirror image), ``clock-changed`` (a regression or improvement in time that is none in
    cycles, time × median SM clock, between rows whose clocks differ by more than
    CLOCK_DEVIATION: ``base_clock_mhz``, ``current_clock_mhz``, ``cycle_ratio`` and its
    interval ``cycle_ci_low``/``cycle_ci_high``, the time's scaled by the clocks' ratio),
    ``unchanged``, ``undetectable`` (no change seen, but the samples could not
    have shown a slowdown at the threshold: ``detectable``, the smallest they could, is above
    it; see flashbench.results.intervals.detectable_slowdown), ``status-regression`` (ok
    became a failure), ``status-improvement``, ``missing`` (in the baseline only), ``new`` (in
    current only) and ``not-timed`` (neither side has samples, e.g. unsupported on both).
    ``base_n`` and ``current_n`` count the samples; ``timed_differently`` says how the two
    rows' timer, L2 mode or matmul precision differ (flashbench.results.modes), if they do.
    """
    base = {case_key(r): r for r in base_rows}
    cur = {case_key(r): r for r in cur_rows}
    records = []
    for key in list(base) + [k for k in cur if k not in base]:
        a, b = base.get(key), cur.get(key)
        record: dict[str, Any] = dict(zip(CASE_FIELDS, key))
        record.update(base_status=a and a["status"], current_status=b and b["status"],
                      base_n=len(a["samples_ms"]) if a else None,
                      current_n=len(b["samples_ms"]) if b else None,
                      timed_differently=None, **dict.fromkeys(_NUMBERS))
        if a is None or b is None:
            record["verdict"] = "new" if a is None else "missing"
            records.append(record)
            continue
        if a["samples_ms"] and b["samples_ms"]:
            differences = pair_differences(a, b)
            record["timed_differently"] = "; ".join(f"{f}: {x} vs {y}"
                                                    for f, x, y in differences) or None
        if a["status"] == b["status"] == Status.OK and a["samples_ms"] and b["samples_ms"]:
            record.update(_timed_fields(a, b, threshold, confidence))
        elif _status_rank(b["status"]) > _status_rank(a["status"]):
            record["verdict"] = "status-regression"
        elif _status_rank(b["status"]) < _status_rank(a["status"]):
            record["verdict"] = "status-improvement"
        else:
            record["verdict"] = "not-timed"
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for col in _NUMBERS:
        frame[col] = frame[col].astype(float)
    for col in ("base_n", "current_n"):
        frame[col] = frame[col].astype("Int64")  # a count, missing where the case is
    return frame

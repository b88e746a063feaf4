"""Side-by-side comparisons: backends within a run, and the same cases across two runs.

Both return plain pandas DataFrames; rendering (Rich, Markdown, CSV, JSON) lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flashbench.core import registry
from flashbench.core.cases import CASE_FIELDS, SHAPE_FIELDS, Status, case_key
from flashbench.core.rows import by_shape
from flashbench.core.stats import summarize
from flashbench.results.clocks import off_clock, run_clock

__all__ = [
    "NOISY_IQR_OVER_MEDIAN",
    "RatioEstimate",
    "compare_backends",
    "compare_runs",
    "ratio_of_medians",
    "timing_verdict",
]

# A cell whose samples spread this much (IQR over median) is marked noisy rather than hidden.
NOISY_IQR_OVER_MEDIAN = 0.05
_TIMED = (Status.OK, Status.MISMATCH)


def _is_noisy(row: dict[str, Any]) -> bool:
    samples = row.get("samples_ms") or []
    return len(samples) >= 3 and summarize(samples).iqr_over_median > NOISY_IQR_OVER_MEDIAN


def compare_backends(rows: list[dict[str, Any]], baseline: str | None = None) -> pd.DataFrame:
    """One row per case, backends side by side: median, TFLOP/s, speedup over the baseline.

    The baseline is ``baseline`` when given, else per case the fastest of the backends declared
    as baselines (flashbench.core.registry: the SDPA backends, and plugins that say so).
    Speedup > 1 means faster than the baseline. Each backend also gets its status and flags
    (``noisy``: IQR/median above NOISY_IQR_OVER_MEDIAN; ``throttled``: NVML reported throttling
    or the SM clock strayed from the run's median; ``tf32``: its fp32 products ran in TF32),
    and ``fastest`` names the fastest backend.
    """
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    baselines = registry.baseline_names()
    clock = run_clock(rows)
    records = []
    for key, cells in by_shape(rows).items():
        timed = {b: r["median_ms"] for b, r in cells.items()
                 if r["status"] in _TIMED and r.get("median_ms")}
        ok = {b: t for b, t in timed.items() if cells[b]["status"] == Status.OK}
        if baseline is not None:
            base = baseline if baseline in ok else None
        else:
            candidates = {b: t for b, t in ok.items() if b in baselines}
            base = min(candidates, key=candidates.get) if candidates else None
        record: dict[str, Any] = dict(zip(SHAPE_FIELDS, key))
        record["baseline"] = base
        record["fastest"] = min(ok, key=ok.get) if ok else None
        for b in backends:
            r = cells.get(b)
            t = timed.get(b)
            record[f"{b}:status"] = r["status"] if r else None
            record[f"{b}:median_ms"] = t
            record[f"{b}:tflops"] = r.get("tflops") if t else None
            record[f"{b}:speedup"] = ok[base] / t if (t and base) else None
            record[f"{b}:noisy"] = bool(r and t and _is_noisy(r))
            record[f"{b}:throttled"] = bool(r and t and off_clock(r, clock))
            record[f"{b}:tf32"] = bool(r and t and r.get("matmul_precision") == "tf32")
        records.append(record)
    return pd.DataFrame.from_records(records)


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """current/baseline ratio of medians with a bootstrap confidence interval."""

    ratio: float
    low: float
    high: float


def ratio_of_medians(baseline: list[float], current: list[float], *, confidence: float = 0.99,
                     resamples: int = 2000, seed: int = 0) -> RatioEstimate:
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


def timing_verdict(baseline: list[float], current: list[float], *, threshold: float,
                   confidence: float = 0.99) -> tuple[str, RatioEstimate]:
    """regression / improvement / unchanged for two sets of raw samples of one case.

    A change counts only when it is both large (the ratio of medians beyond the threshold) and
    real (the bootstrap interval excludes 1): noise alone rarely passes the second test, and
    a small but real drift between runs (clocks, another driver) does not pass the first.
    """
    est = ratio_of_medians(baseline, current, confidence=confidence)
    if est.ratio > 1 + threshold and est.low > 1:
        return "regression", est
    if est.ratio < 1 / (1 + threshold) and est.high < 1:
        return "improvement", est
    return "unchanged", est


def _status_rank(status: str | None) -> int:
    """Lower is better; every status other than ok is a failure of the case."""
    return 0 if status == Status.OK else 1


def compare_runs(base_rows: list[dict[str, Any]], cur_rows: list[dict[str, Any]], *,
                 threshold: float = 0.05, confidence: float = 0.99) -> pd.DataFrame:
    """The same cases of two runs side by side, with a verdict per case.

    Verdicts: ``regression`` (current slower than the baseline by more than ``threshold`` and
    the bootstrap interval of the ratio of medians lies wholly above 1), ``improvement`` (the
    mirror image), ``unchanged``, ``status-regression`` (ok became a failure),
    ``status-improvement``, ``missing`` (in the baseline only), ``new`` (in current only) and
    ``not-timed`` (neither side has samples, e.g. unsupported on both).
    """
    base = {case_key(r): r for r in base_rows}
    cur = {case_key(r): r for r in cur_rows}
    records = []
    for key in list(base) + [k for k in cur if k not in base]:
        a, b = base.get(key), cur.get(key)
        record: dict[str, Any] = dict(zip(CASE_FIELDS, key))
        record.update(base_status=a and a["status"], current_status=b and b["status"],
                      base_median_ms=None, current_median_ms=None, ratio=None, ci_low=None,
                      ci_high=None)
        if a is None or b is None:
            record["verdict"] = "new" if a is None else "missing"
        elif a["status"] == b["status"] == Status.OK and a["samples_ms"] and b["samples_ms"]:
            verdict, est = timing_verdict(a["samples_ms"], b["samples_ms"], threshold=threshold,
                                          confidence=confidence)
            record.update(base_median_ms=a["median_ms"], current_median_ms=b["median_ms"],
                          ratio=est.ratio, ci_low=est.low, ci_high=est.high, verdict=verdict)
        elif _status_rank(b["status"]) > _status_rank(a["status"]):
            record["verdict"] = "status-regression"
        elif _status_rank(b["status"]) < _status_rank(a["status"]):
            record["verdict"] = "status-improvement"
        else:
            record["verdict"] = "not-timed"
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for col in ("ratio", "ci_low", "ci_high"):
        frame[col] = frame[col].astype(float)
    return frame

"""The CI regression gate: per-case verdicts between a baseline and a current run, and its reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pandas as pd

from flashbench.core.cases import Case
from flashbench.core.environment import COMPARABLE, environment_differences
from flashbench.results.compare import compare_runs
from flashbench.core.errors import UserError, quoted
from flashbench.results.reading import load_run

__all__ = ["CheckResult", "env_differences", "junit_xml", "parse_threshold", "run_check",
           "summary_markdown"]

FAILING = ("regression", "status-regression")


# A slowdown of more than ten times is no threshold: it would let everything through.
MAX_THRESHOLD = 10.0


def parse_threshold(text: str) -> float:
    """'5%', '5' and '0.05' all mean five percent."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"--threshold: {quoted(text)} is not a percentage such as 5%") from None
    if not math.isfinite(value):  # float() takes 'inf' and 'nan'; no comparison holds for nan
        raise UserError(f"--threshold: {quoted(text)} is not a finite percentage; give one "
                        f"such as 5%")
    if text.strip().endswith("%") or value >= 1:
        value /= 100
    if not 0 < value < MAX_THRESHOLD:
        raise UserError(f"--threshold: {quoted(text)} must be above 0% and below "
                        f"{MAX_THRESHOLD:.0%}")
    return value


def env_differences(base_meta: dict[str, Any], cur_meta: dict[str, Any]) -> list[str]:
    """How the two runs' environments differ where timings stop being comparable."""
    return [f"{k}: {a!r} vs {b!r}" for k, a, b in environment_differences(
        base_meta.get("environment"), cur_meta.get("environment"), COMPARABLE)]


@dataclass
class CheckResult:
    frame: pd.DataFrame
    threshold: float
    baseline: Path
    current: Path
    allow_missing: bool = False
    env_notes: list[str] = field(default_factory=list)

    def cases(self, *verdicts: str) -> pd.DataFrame:
        return self.frame[self.frame["verdict"].isin(verdicts)]

    @property
    def failing(self) -> pd.DataFrame:
        verdicts = FAILING if self.allow_missing else FAILING + ("missing",)
        return self.cases(*verdicts)

    @property
    def passed(self) -> bool:
        return self.failing.empty

    def verdict_line(self) -> str:
        """``check: no regression (12 unchanged; threshold 5.0%)``, or how many cases fail."""
        counts = ", ".join(f"{n} {v}" for v, n in
                           sorted(self.frame["verdict"].value_counts().items()))
        verdict = "no regression" if self.passed else f"{len(self.failing)} failing case(s)"
        return f"check: {verdict} ({counts}; threshold {self.threshold:.1%})"


def run_check(baseline: str, current: str, *, root: Path, threshold: float = 0.05,
              allow_missing: bool = False, allow_env_mismatch: bool = False) -> CheckResult:
    """Compare two runs (folders, ids or results files); refuse different environments."""
    base_rows, base_meta, base_path = load_run(baseline, root)
    cur_rows, cur_meta, cur_path = load_run(current, root)
    differences = env_differences(base_meta, cur_meta)
    if differences and not allow_env_mismatch:
        raise UserError("the two runs come from different environments ("
                        + "; ".join(differences) + "); pass --allow-env-mismatch to compare anyway")
    base_uuid = base_meta.get("environment", {}).get("gpu_uuid")
    cur_uuid = cur_meta.get("environment", {}).get("gpu_uuid")
    if base_uuid and cur_uuid and base_uuid != cur_uuid:
        # Same model, another card: cards differ by a few percent on some shapes, for real.
        differences.append(f"another card of the same model ({base_uuid} vs {cur_uuid})")
    frame = compare_runs(base_rows, cur_rows, threshold=threshold)
    return CheckResult(frame, threshold, base_path, cur_path, allow_missing, differences)


def _label(record: dict[str, Any]) -> str:
    return Case.from_dict(record).label()


def _ratio_text(record: dict[str, Any]) -> str:
    if pd.isna(record["ratio"]):
        return f"{record['base_status']} → {record['current_status']}"
    return (f"×{record['ratio']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}] "
            f"({record['base_median_ms']:.4g} → {record['current_median_ms']:.4g} ms)")


def summary_markdown(result: CheckResult) -> str:
    """A Markdown summary fit for a CI job summary."""
    verdicts = result.frame["verdict"].value_counts().to_dict()
    head = "✅ no regression" if result.passed else f"❌ {len(result.failing)} failing case(s)"
    lines = [
        f"## flashbench check: {head}",
        "",
        f"Baseline `{result.baseline}` vs current `{result.current}`; threshold "
        f"{result.threshold:.1%}, 99% bootstrap interval of the ratio of medians.",
        "",
        "| verdict | cases |", "| --- | ---: |",
        *(f"| {v} | {n} |" for v, n in sorted(verdicts.items())),
    ]
    if result.env_notes:
        lines += ["", "Environments differ: " + "; ".join(result.env_notes)]
    notable = result.cases("regression", "status-regression", "missing", "improvement",
                           "status-improvement", "new")
    if not notable.empty:
        lines += ["", "| case | verdict | current / baseline [99% CI] |", "| --- | --- | --- |"]
        for record in notable.to_dict("records"):
            lines.append(f"| {_label(record)} | {record['verdict']} | {_ratio_text(record)} |")
    return "\n".join(lines) + "\n"


def junit_xml(result: CheckResult) -> str:
    """JUnit XML with one test per case; failing verdicts are failures, the rest pass."""
    records = result.frame.to_dict("records")
    failing = set(result.failing.index)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name="flashbench check" tests="{len(records)}" '
           f'failures="{len(failing)}">']
    for i, record in enumerate(records):
        name = quoteattr(_label(record))
        if i in failing:
            message = quoteattr(f"{record['verdict']}: {_ratio_text(record)}")
            out.append(f'  <testcase classname="flashbench" name={name}>'
                       f'<failure message={message}>{escape(_ratio_text(record))}</failure>'
                       f'</testcase>')
        else:
            out.append(f'  <testcase classname="flashbench" name={name}>'
                       f'<system-out>{escape(record["verdict"])}</system-out></testcase>')
    out.append("</testsuite>")
    return "\n".join(out) + "\n"

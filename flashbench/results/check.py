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
from flashbench.core.errors import UserError, quoted
from flashbench.results.clocks import CLOCK_DEVIATION
from flashbench.results.compare import CLOCK_CHANGED, compare_runs
from flashbench.results.modes import mixed_notes
from flashbench.results.reading import load_run

__all__ = ["CheckResult", "env_differences", "junit_xml", "parse_threshold", "run_check",
           "summary_markdown"]

FAILING = ("regression", "status-regression")
# Cases whose samples could not have shown a slowdown at the threshold: they pass, listed,
# unless --strict asks that the gate see every case.
BLIND = "undetectable"
# Under --strict these fail too: a blind case, and a change in time the clocks explain (which
# may also hide a real slowdown of a memory-bound kernel that coincided with a clock drop).
STRICT_FAILING = (BLIND, CLOCK_CHANGED)


# A slowdown of more than ten times is no threshold: it would let everything through.
MAX_THRESHOLD = 10.0


def parse_threshold(text: str, flag: str = "--threshold") -> float:
    """'5%', '5' and '0.05' all mean five percent (``run --detect`` reads them alike)."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{flag}: {quoted(text)} is not a percentage such as 5%") from None
    if not math.isfinite(value):  # float() takes 'inf' and 'nan'; no comparison holds for nan
        raise UserError(f"{flag}: {quoted(text)} is not a finite percentage; give one "
                        f"such as 5%")
    if text.strip().endswith("%") or value >= 1:
        value /= 100
    if not 0 < value < MAX_THRESHOLD:
        raise UserError(f"{flag}: {quoted(text)} must be above 0% and below "
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
    strict: bool = False  # undetectable cases fail too
    mode_notes: list[str] = field(default_factory=list)  # timing modes compared anyway

    def cases(self, *verdicts: str) -> pd.DataFrame:
        return self.frame[self.frame["verdict"].isin(verdicts)]

    @property
    def failing(self) -> pd.DataFrame:
        verdicts = FAILING + (() if self.allow_missing else ("missing",)) \
            + (STRICT_FAILING if self.strict else ())
        return self.cases(*verdicts)

    @property
    def passed(self) -> bool:
        return self.failing.empty

    def verdict_line(self) -> str:
        """``check: no regression (12 unchanged; threshold 5.0%)``, or how many cases fail."""
        counts = ", ".join(f"{n} {v}" for v, n in
                           sorted(self.frame["verdict"].value_counts().items()))
        verdict = "no regression" if self.passed else f"{len(self.failing)} failing case(s)"
        notes = "".join(f"; {n}" for n in self.mode_notes)
        strict = "; --strict: undetectable and clock-changed cases fail" if self.strict else ""
        return f"check: {verdict} ({counts}; threshold {self.threshold:.1%}{strict}{notes})"


def run_check(baseline: str, current: str, *, root: Path, threshold: float = 0.05,
              allow_missing: bool = False, allow_env_mismatch: bool = False,
              allow_mixed: bool = False, strict: bool = False) -> CheckResult:
    """Compare two runs (folders, ids or results files); refuse different environments, and
    runs timed differently (flashbench.results.modes) unless ``allow_mixed``."""
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
    modes = mixed_notes(base_rows, cur_rows, allow_mixed=allow_mixed)
    frame = compare_runs(base_rows, cur_rows, threshold=threshold)
    return CheckResult(frame, threshold, base_path, cur_path, allow_missing, differences,
                       strict, modes)


def _label(record: dict[str, Any]) -> str:
    return Case.from_dict(record).label()


def _ratio_text(record: dict[str, Any]) -> str:
    if pd.isna(record["ratio"]):
        return f"{record['base_status']} → {record['current_status']}"
    return (f"×{record['ratio']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}] "
            f"({record['base_median_ms']:.4g} → {record['current_median_ms']:.4g} ms)")


def _blind_text(record: dict[str, Any], threshold: float) -> str:
    """Why an undetectable case is one: the smallest slowdown its samples could show."""
    smallest = "none can be vouched for" if math.isinf(record["detectable"]) else \
        f"the smallest its samples could show is {record['detectable']:.1%}"
    return (f"no slowdown seen, but {smallest} (threshold {threshold:.1%}; "
            f"{record['base_n']} / {record['current_n']} samples)")


def _clock_text(record: dict[str, Any], threshold: float) -> str:
    """Why a clock-changed case is one: its ratio in time, in cycles, and the two clocks."""
    way = "slower" if record["ratio"] > 1 else "faster"
    return (f"{way} in time, not in cycles: {_ratio_text(record)} in time, "
            f"{_cycles_text(record)} in cycles; median SM clock "
            f"{record['base_clock_mhz']:.0f} → {record['current_clock_mhz']:.0f} MHz "
            f"(threshold {threshold:.1%})")


def _cycles_text(record: dict[str, Any]) -> str:
    return (f"×{record['cycle_ratio']:.3f} [{record['cycle_ci_low']:.3f}, "
            f"{record['cycle_ci_high']:.3f}]")


def _clock_lines(result: CheckResult) -> list[str]:
    """The Markdown of the clock-changed cases: what they are, and the table of them."""
    changed = result.cases(CLOCK_CHANGED)
    if changed.empty:
        return []
    fails = " Under `--strict` they fail." if result.strict else ""
    lines = ["", f"{len(changed)} case(s) clock-changed: beyond {result.threshold:.1%} in "
             f"time but not in cycles (time × median SM clock), their clocks more than "
             f"{CLOCK_DEVIATION:.0%} apart: the card, not the code.{fails}", "",
             "| case | SM clock MHz (baseline → current) | current / baseline [99% CI] | "
             "in cycles [99% CI] |", "| --- | ---: | --- | --- |"]
    for record in changed.to_dict("records"):
        lines.append(f"| {_label(record)} | {record['base_clock_mhz']:.0f} → "
                     f"{record['current_clock_mhz']:.0f} | {_ratio_text(record)} | "
                     f"{_cycles_text(record)} |")
    return lines


def _blind_lines(result: CheckResult) -> list[str]:
    """The Markdown of the undetectable cases: what they are, and the table of them."""
    blind = result.cases(BLIND)
    if blind.empty:
        return []
    fails = " Under `--strict` they fail." if result.strict else ""
    lines = ["", f"{len(blind)} case(s) undetectable: no change seen, but their samples could "
             f"not have shown a slowdown of {result.threshold:.1%}.{fails} More samples "
             "(a larger timing budget or `min_samples`) narrow the interval.", "",
             "| case | smallest detectable slowdown | samples (baseline / current) | "
             "current / baseline [99% CI] |", "| --- | ---: | ---: | --- |"]
    for record in blind.to_dict("records"):
        smallest = "∞" if math.isinf(record["detectable"]) else f"{record['detectable']:.1%}"
        lines.append(f"| {_label(record)} | {smallest} | {record['base_n']} / "
                     f"{record['current_n']} | {_ratio_text(record)} |")
    return lines


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
    if result.mode_notes:
        lines += ["", "Compared anyway (`--allow-mixed`), though "
                  + "; ".join(result.mode_notes)]
    notable = result.cases("regression", "status-regression", "missing", "improvement",
                           "status-improvement", "new")
    if not notable.empty:
        lines += ["", "| case | verdict | current / baseline [99% CI] |", "| --- | --- | --- |"]
        for record in notable.to_dict("records"):
            lines.append(f"| {_label(record)} | {record['verdict']} | {_ratio_text(record)} |")
    return "\n".join(lines + _clock_lines(result) + _blind_lines(result)) + "\n"


def _note(record: dict[str, Any], threshold: float) -> str:
    """What a case's test says: why it is blind or clock-changed, else its ratio."""
    if record["verdict"] == BLIND:
        return _blind_text(record, threshold)
    if record["verdict"] == CLOCK_CHANGED:
        return _clock_text(record, threshold)
    return _ratio_text(record)


def _testcase(record: dict[str, Any], failing: bool, threshold: float) -> str:
    name = quoteattr(_label(record))
    text = _note(record, threshold)
    if failing:
        message = quoteattr(f"{record['verdict']}: {text}")
        return (f'  <testcase classname="flashbench" name={name}>'
                f'<failure message={message}>{escape(text)}</failure></testcase>')
    note = f"{record['verdict']}: {text}" if record["verdict"] in STRICT_FAILING \
        else record["verdict"]
    return (f'  <testcase classname="flashbench" name={name}>'
            f'<system-out>{escape(note)}</system-out></testcase>')


def junit_xml(result: CheckResult) -> str:
    """JUnit XML with one test per case; failing verdicts are failures, the rest pass (an
    undetectable or clock-changed case with a note saying what it could not see or why the
    clocks explain it, a failure under --strict)."""
    records = result.frame.to_dict("records")
    failing = set(result.failing.index)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name="flashbench check" tests="{len(records)}" '
           f'failures="{len(failing)}">']
    out += [_testcase(record, i in failing, result.threshold) for i, record in enumerate(records)]
    out.append("</testsuite>")
    return "\n".join(out) + "\n"

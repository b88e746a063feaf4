"""Runs read back: found by folder, id or file, and checked, so that a damaged or foreign run is bad input (exit 2), never a traceback or a wrong number."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from flashbench.core.cases import NEWER_CASE_FIELDS, Case, RunStatus, case_key
from flashbench.core.errors import UserError, quoted
from flashbench.core.rows import RowError, check_row
from flashbench.results.store import META, RESULTS

__all__ = ["check_meta", "find_run", "load_run", "read_meta", "read_rows"]


def find_run(ref: str | Path | None, root: Path) -> Path:
    """A run folder from a path, a run id under ``root``, or the latest run when None."""
    if ref is None:
        # profile-* folders (flashbench profile) hold no results: not a run to compare.
        runs = sorted((p for p in root.glob("*/") if (p / META).exists()
                       and not p.name.startswith("profile-")),
                      key=lambda p: (p / META).stat().st_mtime) if root.is_dir() else []
        if not runs:
            raise UserError(f"no runs under {root}; run `flashbench run` first")
        return runs[-1]
    path = Path(ref)
    if not path.exists() and (root / str(ref)).exists():
        path = root / str(ref)
    if not path.exists():
        raise UserError(f"no such run or results file: {ref}")
    if path.is_file() and path.name == RESULTS:
        path = path.parent
    if not path.is_dir() or not (path / RESULTS).exists() and not (path / META).exists():
        raise UserError(f"not a flashbench run folder: {ref}")
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_ceilings(value: Any) -> str | None:
    """What is wrong with environment.ceilings (flashbench calibrate's record), if anything."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return "environment.ceilings: expected a mapping or null"
    rates = value.get("matmul_tflops")
    if not isinstance(rates, dict) or not all(_is_number(v) for v in rates.values()):
        return "environment.ceilings.matmul_tflops: expected a mapping of dtypes to numbers"
    if not _is_number(value.get("copy_gbps")):
        return "environment.ceilings.copy_gbps: expected a number"
    return None


# The keys of meta.json that readers use, and what each must be when present: what the
# writers (runner, merge) make. Anything else is kept as it is (a newer flashbench's).
_META_KEYS: dict[str, tuple[Any, str]] = {
    "run_id": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: isinstance(v, str) and v in {s.value for s in RunStatus},
               f"one of {', '.join(RunStatus)}"),
    "n_cases": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                "a whole number, 0 or more"),
    "environment": (lambda v: isinstance(v, dict), "a mapping"),
    "config": (lambda v: isinstance(v, dict), "a mapping"),
    "plugins": (lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
                "a list of plugin paths"),
    "shard": (lambda v: isinstance(v, dict) and all(
        isinstance(v.get(k), int) and not isinstance(v.get(k), bool) for k in ("index", "count"))
        and 1 <= v["index"] <= v["count"],
        "a mapping with whole numbers index and count, 1 <= index <= count"),
    "devices": (lambda v: isinstance(v, list) and all(
        isinstance(d, dict) and isinstance(d.get("device"), str) for d in v),
        "a list of mappings, each naming its device"),
    "resumed": (lambda v: isinstance(v, list), "a list"),
    **{key: (lambda v: v is None or isinstance(v, list) and len(v) == 3
             and all(_is_number(x) for x in v),
             "null or the 1-, 5- and 15-minute load averages") for key in ("load_before",
                                                                        "load_after")},
}


def check_meta(data: Any, path: Path) -> dict[str, Any]:
    """``data`` if it is a run's meta.json as flashbench writes it, else bad input naming
    ``path``, the key and what is allowed: a reader never works from a value of another type."""
    def refuse(problem: str) -> UserError:
        return UserError(f"{path}: not a flashbench meta.json ({problem})")

    if not isinstance(data, dict):
        raise refuse(f"expected a JSON object, got {type(data).__name__}")
    for key, (valid, allowed) in _META_KEYS.items():
        if key in data and not valid(data[key]):
            raise refuse(f"{key}: expected {allowed}, got {quoted(data[key], 80)}")
    problem = _check_ceilings((data.get("environment") or {}).get("ceilings"))
    if problem:
        raise refuse(problem)
    return data


def _read_text_lines(path: Path, appended: bool) -> tuple[list[str], bool]:
    """The lines of a file and whether it ends with a newline; bad input when it cannot be
    read or a line is not UTF-8 (but for an unfinished last line of an ``appended`` file: it
    is torn)."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    raw = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            if appended and number == len(raw) and not complete:
                # Torn in the middle of a character: what is left fails as JSON, as torn.
                lines.append(line.decode("utf-8", errors="replace"))
                continue
            raise UserError(f"{path}:{number}: not UTF-8 text (byte {line[e.start]:#04x} at "
                            f"column {e.start + 1}); flashbench writes UTF-8 JSON") from None
    return lines, complete


def read_meta(run: Path) -> dict[str, Any]:
    """A run's meta.json, checked (check_meta); empty when there is none."""
    path = run / META
    if not path.exists():
        return {}
    lines, _ = _read_text_lines(path, appended=False)
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise UserError(f"{path}: not a flashbench meta.json (nested too deeply)") from None
    return check_meta(data, path)


def _parse_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise UserError(f"{path}:{number}: not a flashbench result row (nested too deeply)"
                        ) from None


def _read(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Each row of a results file, checked against the row schema (flashbench.core.rows), and
    the number of a torn last line (the writer died mid-row), skipped, if there is one."""
    lines, complete = _read_text_lines(path, appended=True)
    rows, seen = [], {}  # case key -> its line: a run holds each case once
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = _parse_line(path, number, line)
        except json.JSONDecodeError:
            if number == len(lines) and not complete:  # no newline yet: torn, not damaged
                return rows, number
            raise UserError(f"{path}:{number}: not a JSON object (a results file holds one "
                            f"JSON object per line)") from None
        try:
            row = check_row(data)
        except RowError as e:
            raise UserError(f"{path}:{number}: not a flashbench result row ({e})") from None
        for f in NEWER_CASE_FIELDS:  # a row from before these fields: the dense case
            row.setdefault(f, None)
        first = seen.setdefault(case_key(row), number)
        if first != number:
            raise UserError(f"{path}:{number}: the case {Case.from_dict(row).label()} is on "
                            f"line {first} already; a run holds each case once")
        rows.append(row)
    return rows, None


def _results_path(run_or_file: Path) -> Path:
    path = run_or_file / RESULTS if run_or_file.is_dir() else run_or_file
    if not path.exists():
        raise UserError(f"no results file at {path}")
    return path


def _warn_torn(path: Path, number: int | None) -> None:
    if number is not None:
        print(f"warning: {path}:{number}: skipping a torn last line", file=sys.stderr)


def read_rows(run_or_file: Path) -> list[dict[str, Any]]:
    """Every row of a run folder or a results.jsonl file."""
    path = _results_path(run_or_file)
    rows, torn = _read(path)
    _warn_torn(path, torn)
    return rows


def load_run(ref: str | Path | None, root: Path) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """Rows, meta and location of a run folder, a run id, a results file, or the latest run.

    A results file may stand alone (a committed baseline): its meta is the meta.json beside
    it when there is one, else empty. A run without rows is bad input.
    """
    path = Path(ref) if ref is not None else None
    if path is None or not path.is_file():
        path = find_run(ref, root)
    meta = read_meta(path.parent if path.is_file() else path)
    results = _results_path(path)
    rows, torn = _read(results)
    if not rows:  # one line, not a warning about the torn line and then this
        raise UserError(f"{path} has no results" + (
            f" (its only line, {results}:{torn}, is unfinished)" if torn else ""))
    _warn_torn(results, torn)
    return rows, meta, path

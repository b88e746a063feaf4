"""Run folders on disk: meta.json written atomically, results.jsonl appended and flushed row by row."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from flashbench.core.cases import Case, RunStatus, case_key
from flashbench.core.errors import UserError, quoted
from flashbench.core.rows import RowError, check_row, finite_or_none

__all__ = ["RunFolder", "check_meta", "check_root", "create_run", "find_run", "load_run",
           "open_run", "prepare_root", "read_meta", "read_rows"]

META = "meta.json"
RESULTS = "results.jsonl"
LOCK = ".lock"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunFolder:
    """One run: ``meta.json`` plus ``results.jsonl``, one line per finished case."""

    def __init__(self, path: Path):
        self.path = path
        self._results = None
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold the run for this process: a second writer (a resume while it runs) is refused.

        An flock, so that the kernel releases it when the process dies, however it dies.
        """
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"run {self.path} is being written by another flashbench process"
                            ) from None
        self._lock = fd

    def drop_torn_tail(self) -> bool:
        """Cut a last line that a dying writer left unfinished, so that new rows start clean."""
        try:
            with open(self.results_path, "rb+") as f:
                data = f.read()
                if not data or data.endswith(b"\n"):
                    return False
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return False
        return True

    @property
    def meta_path(self) -> Path:
        return self.path / META

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def write_meta(self, meta: dict[str, Any]) -> None:
        _write_atomic(self.meta_path, json.dumps(meta, indent=2, default=str) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and push it to the disk now, so that an interrupted run loses nothing."""
        if self._results is None:
            self._results = open(self.results_path, "a")
        line = json.dumps({k: finite_or_none(v) for k, v in row.items()}, default=str)
        self._results.write(line + "\n")
        self._results.flush()
        os.fsync(self._results.fileno())

    def close(self) -> None:
        if self._results is not None:
            self._results.close()
            self._results = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None


def check_root(root: Path) -> None:
    """Refuse, without creating anything, a results folder that could not be made or written."""
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the results folder {root}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"the results folder {root} is not writable"
                        + (f" ({existing} is not)" if existing != root else ""))


def prepare_root(root: Path) -> None:
    """Make sure run folders can be made under ``root`` (bad input when they cannot)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the results folder {root}: {e.strerror}") from None
    if not os.access(root, os.W_OK):
        raise UserError(f"the results folder {root} is not writable")


def create_run(root: Path, run_id: str | None = None) -> RunFolder:
    """A new, empty run folder under ``root``; two runs never share one."""
    prepare_root(root)
    run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    path = root / run_id
    try:
        path.mkdir()  # exclusive: fails if another run took the name
    except FileExistsError:
        raise UserError(f"run folder {path} already exists") from None
    except OSError as e:
        raise UserError(f"cannot create the run folder {path}: {e.strerror}") from None
    return RunFolder(path)


def open_run(path: Path) -> RunFolder:
    """An existing run folder, locked for appending (a resume)."""
    if not os.access(path, os.W_OK):
        raise UserError(f"run {path} is not writable")
    run = RunFolder(path)
    run.lock()
    return run


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

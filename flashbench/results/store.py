"""Run folders on disk: meta.json written atomically, results.jsonl appended and flushed row by row."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from flashbench.core.cases import case_key
from flashbench.core.errors import UserError
from flashbench.core.rows import RowError, check_row, finite_or_none

__all__ = ["RunFolder", "WriteFailed", "check_root", "create_run", "find_run", "load_run",
           "open_run", "prepare_root", "read_meta", "read_rows"]

META = "meta.json"
RESULTS = "results.jsonl"


class WriteFailed(Exception):
    """A run's file could not be written (a full disk, a vanished folder): the sweep stops,
    and what was written before stays."""


def _write_atomic(path: Path, text: str) -> None:
    """The file whole, or as it was: a temporary file beside it, then a rename; no temporary
    file is left behind when the write fails (ENOSPC)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteFailed(f"cannot write {path}: {e.strerror or e}") from None


def _complete_row(line: bytes) -> bool:
    """Whether a line is a whole, valid row (a writer that died after it, before its newline)."""
    try:
        check_row(json.loads(line))
    except (ValueError, RowError):
        return False
    return True


class RunFolder:
    """One run: ``meta.json`` plus ``results.jsonl``, one line per finished case."""

    def __init__(self, path: Path):
        self.path = path
        self._results = None
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold the run for this process: a second writer (a resume while it runs) is refused.

        An flock on the run folder itself, so that the kernel releases it when the process
        dies, however it dies, and no lock file is left behind.
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"run {self.path} is being written by another flashbench process"
                            ) from None
        self._lock = fd

    def repair_tail(self) -> str | None:
        """Mend the end of ``results.jsonl`` after a writer died, before anything reads it.

        A last line without its newline is kept (the newline added) when it is a whole, valid
        row (the writer died between the two writes), and cut when it is torn (its case runs
        again). Returns "kept", "cut", or None when there was nothing to mend.
        """
        try:
            with open(self.results_path, "rb+") as f:
                data = f.read()
                if not data or data.endswith(b"\n"):
                    return None
                start = data.rfind(b"\n") + 1
                if _complete_row(data[start:]):
                    f.write(b"\n")
                    outcome = "kept"
                else:
                    f.truncate(start)
                    outcome = "cut"
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return None
        return outcome

    def remove_stale_temporaries(self) -> None:
        """Temporary meta files of writers that died mid-write (never a complete meta.json)."""
        for stale in self.path.glob(f".{META}.*.tmp"):
            stale.unlink(missing_ok=True)

    @property
    def meta_path(self) -> Path:
        return self.path / META

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def write_meta(self, meta: dict[str, Any]) -> None:
        _write_atomic(self.meta_path, json.dumps(meta, indent=2, default=str) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and push it to the disk now, so that an interrupted run loses nothing.

        Raises WriteFailed when the disk refuses it (full, gone)."""
        line = json.dumps({k: finite_or_none(v) for k, v in row.items()}, default=str)
        try:
            if self._results is None:
                self._results = open(self.results_path, "a")
            self._results.write(line + "\n")
            self._results.flush()
            os.fsync(self._results.fileno())
        except OSError as e:
            raise WriteFailed(f"cannot write {self.results_path}: {e.strerror or e}") from None
        if self.vanished():  # rows now go to a deleted file: stop before more are lost
            raise WriteFailed(f"{self.results_path} was deleted while the run wrote to it")

    def vanished(self) -> bool:
        """Whether results.jsonl was deleted (or replaced) while this run was writing it."""
        if self._results is None:
            return not self.results_path.exists()
        try:
            return os.stat(self.results_path).st_ino != os.fstat(self._results.fileno()).st_ino
        except FileNotFoundError:
            return True

    def close(self) -> None:
        if self._results is not None:
            try:
                self._results.close()
            except OSError:  # the last flush failed (a full disk): the rows before it are kept
                pass
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


def read_meta(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / META).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise UserError(f"{run / META} is not valid JSON: {e.msg} at line {e.lineno}") from None


def _iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Each row of a results file, checked against the row schema (flashbench.core.rows)."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a torn last line: the writer died mid-row
                print(f"warning: {path}:{number}: skipping a torn last line", file=sys.stderr)
                continue
            raise UserError(f"{path}:{number}: not a JSON object") from None
        try:
            yield check_row(data)
        except RowError as e:
            raise UserError(f"{path}:{number}: not a flashbench result row ({e})") from None


def read_rows(run_or_file: Path) -> list[dict[str, Any]]:
    """Every row of a run folder or a results.jsonl file; a case twice is damage (a run
    measures each case once, a resume only what has no row)."""
    path = run_or_file / RESULTS if run_or_file.is_dir() else run_or_file
    if not path.exists():
        raise UserError(f"no results file at {path}")
    rows, seen = [], {}
    for number, row in enumerate(_iter_rows(path), start=1):
        key = case_key(row)
        if key in seen:
            raise UserError(f"{path}: row {number} repeats the case of row {seen[key]} "
                            f"({row['backend']} N{row['seq_len']}): a damaged results file")
        seen[key] = number
        rows.append(row)
    return rows


def load_run(ref: str | Path | None, root: Path) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """Rows, meta and location of a run folder, a run id, a results file, or the latest run.

    A results file may stand alone (a committed baseline): its meta is the meta.json beside
    it when there is one, else empty. A run without rows is bad input.
    """
    path = Path(ref) if ref is not None else None
    if path is not None and path.is_file():
        rows, meta = read_rows(path), read_meta(path.parent)
    else:
        path = find_run(ref, root)
        rows, meta = read_rows(path), read_meta(path)
    if not rows:
        raise UserError(f"{path} has no results")
    return rows, meta, path

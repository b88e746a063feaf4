"""Run folders on disk, as a sweep writes them: meta.json written atomically, results.jsonl appended and flushed row by row.

Reading runs back, checked, is flashbench.results.reading.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from flashbench.core.errors import UserError
from flashbench.core.rows import RowError, check_row, finite_or_none

__all__ = ["META", "RESULTS", "RunFolder", "WriteFailed", "check_root", "create_run", "open_run",
           "prepare_root"]

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
        if not self.results_path.is_file():  # missing, or a folder: the reader says so
            return None
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

"""Plugin backends from files (``--plugin FILE``) and installed packages (entry points).

Importing a plugin registers its backends with flashbench.core.registry. Anything that goes
wrong while importing one is the user's: one line naming it, exit code 2, nothing half
registered. A plugin's import is user code that may also end the process (``os._exit``),
crash it (a broken C extension) or never return, none of which an ``except`` can catch: so
plugins are first imported in a child process, the probe (flashbench.core.plugin_probe),
bounded by a timeout, and only imported here once that went well. While they import here, their
prints go to stderr: stdout is for the table. This module imports neither torch nor the
plugins' own dependencies until asked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from flashbench.core import registry
from flashbench.core.errors import UserError
from flashbench.core.subprocesses import (describe_exit, end_group, exit_status,
                                          python_module_command, reason_line)

__all__ = ["ENTRY_POINT_GROUP", "PROBE_TIMEOUT_ENV", "PROBE_TIMEOUT_S", "load_entry_points",
           "load_plugin_file", "load_plugins", "probe_plugins"]

ENTRY_POINT_GROUP = "flashbench.backends"
PROBE_TIMEOUT_S = 60.0  # per plugin: importing torch and friends on a busy machine, not a hang
PROBE_TIMEOUT_ENV = "FLASHBENCH_PLUGIN_PROBE_TIMEOUT_S"

_LOADED_FILES: set[Path] = set()
_LOADED_ENTRY_POINTS: set[str] = set()
Announce = Callable[[str], None]  # told the label of each plugin before it is imported


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _checked_file(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--plugin {path}: no such file")
    return file.resolve()


def load_plugin_file(path: str | Path) -> Path:
    """Import a plugin file (once per process); returns its absolute path.

    Anything that goes wrong while importing it is bad input: one line naming the file.
    """
    file = _checked_file(path)
    if file in _LOADED_FILES:
        return file
    # A stable, unique module name: two plugins may share a file name in different folders.
    stem = re.sub(r"\W", "_", file.stem)
    module_name = f"flashbench_plugin_{stem}_{zlib.crc32(bytes(file)):08x}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise UserError(f"--plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so that the plugin's own pickling and dataclasses work
    before = registry.plugin_specs()
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # whatever the plugin raises, it is the plugin's fault
        del sys.modules[module_name]
        registry.restore_plugins(before)  # nothing half-registered stays behind
        raise UserError(f"plugin {path} does not import: {_one_line(e)}") from None
    if registry.plugin_specs() == before:
        raise UserError(f"plugin {path} registers no backend "
                        f"(decorate a function with @flashbench.register_backend(\"name\"))")
    _LOADED_FILES.add(file)
    return file


def _entry_point_label(ep: Any) -> str:
    dist = getattr(ep.dist, "name", None) or "an installed package"
    return f"plugin entry point {ep.name!r} = {ep.value} ({ENTRY_POINT_GROUP}, from {dist})"


def _pending_entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return [ep for ep in entry_points(group=ENTRY_POINT_GROUP)
            if f"{ep.name}={ep.value}" not in _LOADED_ENTRY_POINTS]


def load_entry_points(announce: Announce | None = None) -> list[str]:
    """Import every module named in the ``flashbench.backends`` entry-point group."""
    loaded = []
    for ep in _pending_entry_points():
        if announce is not None:
            announce(_entry_point_label(ep))
        try:
            ep.load()
        except (Exception, SystemExit) as e:
            raise UserError(f"{_entry_point_label(ep)} does not import: {_one_line(e)}") from None
        _LOADED_ENTRY_POINTS.add(f"{ep.name}={ep.value}")
        loaded.append(f"{ep.name}={ep.value}")
    return loaded


def load_plugins(files: list[str] | list[Path] | tuple[str | Path, ...] = (), *,
                 probe: bool = True) -> list[str]:
    """Entry points, then plugin files; returns the files' absolute paths (for a worker, a resume).

    With ``probe`` (everywhere but in a worker), plugins not yet imported here are imported in
    a probe process first, then here with stdout sent to stderr.
    """
    given = list(dict.fromkeys(str(f) for f in files))
    paths = [_checked_file(f) for f in given]
    if not probe:
        return _import_all(given)
    new = [f for f, p in zip(given, paths) if p not in _LOADED_FILES]
    pending = bool(_pending_entry_points())
    if new or pending:
        probe_plugins(new, entry_points=pending)
    with _stdout_to_stderr():
        return _import_all(given)


def _import_all(files: list[str]) -> list[str]:
    load_entry_points()
    return [str(load_plugin_file(f)) for f in files]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Python's prints and C's writes to fd 1 go to stderr, and stdout is left as it was."""
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            stream.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no fd 1 or 2 (a daemon): nothing reaches a terminal anyway
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()  # what was printed through fd 1 meanwhile: to stderr
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def probe_timeout_s() -> float:
    """How long one plugin's import may take in the probe ($FLASHBENCH_PLUGIN_PROBE_TIMEOUT_S)."""
    text = os.environ.get(PROBE_TIMEOUT_ENV)
    if not text:
        return PROBE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise UserError(f"{PROBE_TIMEOUT_ENV}: {text!r} is not a positive number of seconds")
    return value


def probe_plugins(files: list[str], *, entry_points: bool) -> None:
    """Import the entry points (when ``entry_points``) and ``files`` in a child process, as
    this process would (its environment, its ``sys.path``); UserError with one line when that
    fails, ends or crashes the child, or one import takes longer than ``probe_timeout_s()``."""
    timeout_s = probe_timeout_s()
    request = json.dumps({"files": files, "entry_points": entry_points, "sys_path": sys.path,
                          "parent": os.getpid()})
    # Unnamed files (O_TMPFILE where the file system has it): nothing is left if we are killed.
    with tempfile.TemporaryFile() as report, tempfile.TemporaryFile() as output:
        proc = subprocess.Popen([*python_module_command("flashbench.core.plugin_probe"), request],
                                stdin=subprocess.DEVNULL, stdout=report, stderr=output,
                                start_new_session=True)  # its group: whatever it starts
        try:
            outcome, label, status = _watch(proc, report.fileno(), timeout_s)
        finally:
            end_group(proc)
        if outcome.get("ok"):
            return
        if "error" in outcome:
            raise UserError(outcome["error"])
        where = label or "the plugin probe (python -P -m flashbench.core.plugin_probe)"
        if status is None:
            raise UserError(f"{where} does not import: still importing after {timeout_s:g} s "
                            f"(a hang? {PROBE_TIMEOUT_ENV} sets how long one import may take)")
        output.seek(0)
        why = reason_line(output.read().decode(errors="replace"))
        raise UserError(f"{where} does not import: the import ended the process "
                        f"({describe_exit(status)}{'; ' + why if why else ''})")


def _watch(proc: subprocess.Popen, report_fd: int, timeout_s: float
           ) -> tuple[dict[str, Any], str | None, int | None]:
    """The probe's outcome (``ok`` or ``error``, else empty), the plugin it was importing,
    and its exit status (None: still running when one import took too long)."""
    label, deadline, seen = None, time.monotonic() + timeout_s, 0
    while True:
        status = exit_status(proc)  # before reading: a probe that ended has said all it will
        text = os.pread(report_fd, 1 << 20, 0).decode(errors="replace")
        lines = [line for line in text.splitlines(keepends=True) if line.endswith("\n")]
        for line in lines[seen:]:  # a line without its newline is still being written
            event = json.loads(line)
            if "importing" not in event:
                return event, label, status
            label, deadline = event["importing"], time.monotonic() + timeout_s  # its own time
        seen = len(lines)
        if status is not None or time.monotonic() >= deadline:
            return {}, label, status
        time.sleep(0.05)

"""How flashbench starts, watches and ends a Python child (the worker, the plugin probe, the profiled call).

A child that runs user code (a plugin) leads its own process group, so that ending it ends
whatever it started. Its exit is detected without reaping it: until it is reaped its pid, and
so the id of its group, cannot be taken by another process, so killing the group afterwards
cannot hit a stranger.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time

__all__ = ["describe_exit", "die_with_parent", "end_group", "exit_status", "python_module_command",
           "reason_line", "wait_exit"]

_POLL_S = 0.02
# The line an uncaught exception ends a traceback with: "ModuleNotFoundError: No module ...".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)(:|$)")


def python_module_command(module: str) -> list[str]:
    """``python -P -m module``: this interpreter, without the current folder on ``sys.path``.

    Plain ``-m`` puts the current folder first, so that, run from a checkout of flashbench, the
    source folder ``./flashbench`` (which lacks the ``kernels`` subpackage setuptools maps in)
    would shadow the installed package with whatever that folder holds. ``-P`` (Python 3.11+)
    keeps ``sys.path`` as installed;
    PYTHONPATH still applies.
    """
    return [sys.executable, "-P", "-m", module]


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies, so that no hung child outlives it.

    Called first thing in the child. PR_SET_PDEATHSIG follows the thread that started the
    child, not the parent process: start children from a thread that lives as long as they do.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a closed pipe or a timeout ends the child
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def exit_status(proc: subprocess.Popen) -> int | None:
    """``proc``'s exit status as Popen gives it (``-N``: killed by signal N), or None while it
    runs; a child that has ended stays unreaped (a zombie) until ``end_group``."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped behind Popen's back: Popen knows no better
        return proc.poll()
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """Wait up to ``timeout_s`` for ``proc`` to end (without reaping it); its status, or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = exit_status(proc)
        if status is not None or time.monotonic() >= deadline:
            return status
        time.sleep(_POLL_S)


def end_group(proc: subprocess.Popen) -> int:
    """Kill ``proc`` and every process left in its group (whatever it started), then reap it.

    ``proc`` must lead its group (started with ``start_new_session=True``).
    """
    if proc.returncode is None:  # not reaped: its pid still names its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # nothing is left in the group
            pass
    return proc.wait()


def describe_exit(returncode: int) -> str:
    """'killed by SIGSEGV', 'exited with code 3'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def reason_line(output: str) -> str:
    """The one line of a dead child's output that says why: Python's fault handler's ``Fatal
    Python error`` line, else the last exception line of a traceback, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Fatal Python error"):
            return line[:200]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line[:200]
    return lines[-1][:200] if lines else ""

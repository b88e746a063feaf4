"""One worker process as the parent holds it: started, spoken to, waited for, and ended with everything it started.

The worker (flashbench.sweep.worker) is a fresh interpreter, never a fork, leading its own
process group. Its stdout and stderr go to an unnamed file (flashbench.core.subprocesses
explains why its exit is seen without reaping it): nothing of it stays on disk however the
parent ends, SIGKILL included. Ending it always kills its group, so that no process a plugin
started outlives the sweep.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from flashbench.core.subprocesses import (describe_exit, end_group, exit_status,
                                          python_module_command, reason_line, wait_exit)
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.worker import receive as _receive, send as _send

__all__ = ["ABANDONED", "STDERR_TAIL_LINES", "TIMED_OUT", "Died", "StartFailed", "WorkerProcess",
           "fatal_line"]

STDERR_TAIL_LINES = 20
_POLL_S = 0.2  # how often a wait looks at the interrupt flags and at the worker's life
_STOP_WAIT_S = 10.0  # how long a worker asked to stop may take before it is killed

TIMED_OUT = object()
ABANDONED = object()


@dataclass(frozen=True)
class Died:
    returncode: int


@dataclass(frozen=True)
class StartFailed:
    how: str  # "killed by SIGSEGV while importing plugins"
    reason: str  # the one line of its output that says why, or ""


def fatal_line(tail: str) -> str:
    """What Python's fault handler said killed the worker ('Segmentation fault'), if it did."""
    for line in tail.splitlines():
        if line.startswith("Fatal Python error"):
            return "; " + line.strip()[:200]
    return ""


class WorkerProcess:
    """One worker process: two pipes, and an unnamed file that holds its stdout and stderr."""

    def __init__(self, hello: dict[str, Any], env: dict[str, str]):
        # O_TMPFILE where the file system has it (else created and unlinked at once): the file
        # has no name, so no kill of this process leaves it behind.
        self._log = tempfile.TemporaryFile(prefix="flashbench-worker-", suffix=".log")
        fd = self._log.fileno()
        # Append: the worker's stdout and stderr, and whatever it starts, never overwrite each
        # other; this process reads with pread, which moves no offset.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self._forwarded = 0
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            # A fresh interpreter (never a fork): it imports nothing of the caller's, its
            # __main__ included, and no CUDA state can be inherited.
            self.proc = subprocess.Popen(
                [*python_module_command("flashbench.sweep.worker"), str(request_r), str(reply_w),
                 str(os.getpid())],
                pass_fds=(request_r, reply_w), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                # Its own session: a terminal's Ctrl-C reaches only the parent, which
                # decides, and a kill of the group reaches whatever the worker started.
                start_new_session=True)
        except BaseException:
            for end in (request_r, request_w, reply_r, reply_w):
                os.close(end)
            self._log.close()
            raise
        os.close(request_r)  # the worker's ends: closed here so that its death reads as EOF
        os.close(reply_w)
        self._requests = Connection(request_w, readable=False)
        self._replies = Connection(reply_r, writable=False)
        _send(self._requests, hello)

    def send(self, message: dict[str, Any]) -> None:
        _send(self._requests, message)

    def receive(self, deadline: float | None, interrupt: Interrupt) -> Any:
        """The next message, or Died, TIMED_OUT or ABANDONED."""
        while True:
            if interrupt.abandon:
                return ABANDONED
            wait = _POLL_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return TIMED_OUT
                wait = min(wait, left)
            try:
                if self._replies.poll(wait):
                    return _receive(self._replies)
            except (EOFError, OSError):  # the worker closed its end: it is dying or dead
                return Died(self._reap())
            status = exit_status(self.proc)
            if status is not None:
                try:  # a last message may have arrived just before it exited
                    if self._replies.poll(0):
                        return _receive(self._replies)
                except (EOFError, OSError):
                    pass
                return Died(status)

    def wait_ready(self, timeout_s: float, plugin_timeout_s: float, interrupt: Interrupt) -> Any:
        """The worker's ``ready`` or ``bad_input`` message, ABANDONED, or StartFailed.

        The whole start may take ``timeout_s``; the plugins' import alone (their code: it may
        hang) ``plugin_timeout_s``.
        """
        deadline, phase_deadline, phase = time.monotonic() + timeout_s, None, "start"
        while True:
            reply = self.receive(min(deadline, phase_deadline or deadline), interrupt)
            if not (isinstance(reply, dict) and reply.get("kind") == "phase"):
                break
            phase = reply["phase"]
            phase_deadline = time.monotonic() + plugin_timeout_s if phase == "plugins" else None
        if reply is ABANDONED or isinstance(reply, dict) and reply["kind"] in ("ready",
                                                                                "bad_input"):
            return reply
        during = " while importing plugins" if phase == "plugins" else ""
        if reply is TIMED_OUT:
            how = f"its plugins were still importing after {plugin_timeout_s:g} s" \
                if phase_deadline is not None and phase_deadline < deadline \
                else f"not ready after {timeout_s:g} s"
        elif isinstance(reply, Died):
            how = describe_exit(reply.returncode) + during
        else:
            how = f"sent {str(reply)[:100]}"
        return StartFailed(how, reason_line(self.tail()))

    def _reap(self) -> int:
        status = wait_exit(self.proc, _STOP_WAIT_S)
        if status is None:
            self.kill()
            return self.proc.returncode
        return status

    def kill(self) -> None:
        """Kill the worker and its whole group (whatever it started dies with it)."""
        end_group(self.proc)

    def _read(self, offset: int) -> bytes:
        try:
            size = os.fstat(self._log.fileno()).st_size
            return os.pread(self._log.fileno(), max(0, size - offset), offset)
        except (OSError, ValueError):  # closed
            return b""

    def forward_output(self) -> None:
        """Pass on what the worker printed since last time (warnings, plugins' prints): to stderr."""
        data = self._read(self._forwarded)
        if data:
            self._forwarded += len(data)
            sys.stderr.write(data.decode(errors="replace"))
            sys.stderr.flush()

    def tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """The last lines the worker wrote (its fault handler's traceback, after a crash)."""
        try:
            size = os.fstat(self._log.fileno()).st_size
        except (OSError, ValueError):
            return ""
        text = self._read(max(0, size - 64 * 1024)).decode(errors="replace")
        kept = [line.rstrip() for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def close(self, graceful: bool = True, forward: bool = True) -> None:
        """Stop the worker (asking first when ``graceful``), kill what is left of its group,
        forward its output (unless not ``forward``: a failed start says it in one line)."""
        if graceful and exit_status(self.proc) is None:
            try:
                self.send({"kind": "stop"})
                wait_exit(self.proc, _STOP_WAIT_S)
            except OSError:
                pass
        self.kill()  # always: a process a plugin started may outlive a worker that exited
        if forward:
            self.forward_output()
        for conn in (self._requests, self._replies):
            conn.close()
        self._log.close()

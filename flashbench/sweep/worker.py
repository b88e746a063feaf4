"""The worker process (``python -m flashbench.sweep.worker``): measures the cases its parent sends, one at a time.

The parent (flashbench.sweep.executors) never touches CUDA; this process owns the device. Messages
are JSON objects (plain data: unpickling could import torch into the parent) over two pipes
whose descriptors are given on the command line:

    parent -> worker   {"kind": "hello", "device", "plugins", "backends", "timing",
                        "fp32_precision"},
                       then {"kind": "group", "cases"} per comparison group, or {"kind": "stop"}
    worker -> parent   {"kind": "phase", "phase": "plugins"} while it imports the plugins,
                       {"kind": "phase", "phase": "kernels"} once they are in,
                       {"kind": "ready", "device", "environment"} or {"kind": "bad_input", "message"},
                       then per group: {"kind": "start", "index"} as each case is prepared,
                       {"kind": "row", "index", "row", "fatal"} as each row is final,
                       {"kind": "sampling", "indices"} while the prepared ones are timed,
                       and {"kind": "group_done", "replace"}, or {"kind": "group_failed",
                       "reason"} when the CUDA context was lost while they were timed

``fatal`` says the CUDA context is unusable after the case: the worker exits after the row and
the parent sends the rest of the group to a new one; ``group_failed`` that it was lost while
several cases alternated, so the parent times each of them alone, to learn which one it was.
``replace`` says the group left threads or processes running (the rows' ``warnings`` say which:
flashbench.sweep.leftovers); the worker exits after it. Either way the parent kills its process
group and starts another.
stdout and stderr go to a file the parent reads: Python's fault handler writes the traceback
of a segfault or an abort there.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["main", "receive", "send"]

EXIT_BAD_INPUT = 2
EXIT_CONTEXT_LOST = 3
EXIT_LEFTOVERS = 4  # a case left threads or processes running
EXIT_BROKEN = 5  # measuring a group raised past its rows: the rest goes to a new worker


def send(conn: Connection, message: dict[str, Any]) -> None:
    """One message as JSON; anything JSON lacks (a torch version object) goes as its text."""
    conn.send_bytes(json.dumps(message, default=str).encode())


def receive(conn: Connection) -> dict[str, Any]:
    return json.loads(conn.recv_bytes())


def _context_lost(device: Any) -> str | None:
    """Why the CUDA context cannot be used any more (an illegal address, a device assert), or None.

    Such errors are sticky: every later CUDA call in this process fails the same way.
    """
    if device.type != "cuda":
        return None
    import torch

    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as e:  # whatever CUDA raised, this context is finished
        from flashbench.core.errors import one_line

        return one_line(e, 300)
    return None


def _preload(backend_names: list[str]) -> None:
    """Import the kernel modules the sweep's backends declare (SDPA's pulls in torch._dynamo,
    Triton's defines its kernels: seconds), so that the first case's timeout is about the case."""
    from flashbench.core import registry

    specs = registry.backends()
    for module in sorted({specs[n].preload for n in backend_names if n in specs} - {None}):
        try:
            importlib.import_module(module)
        except Exception:  # not hidden: the same import fails again inside the case, as its row
            pass


def _start(hello: dict[str, Any], replies: Connection) -> tuple[Any, ...] | None:
    """Device, plugins, kernels and environment as the hello asks; None after bad input."""
    from flashbench.core.errors import UserError

    try:
        # The device first: on a CPU it sets TRITON_INTERPRET before anything imports triton.
        from flashbench.measure.device import select_device

        device = select_device(hello["device"])
        timer = hello["timing"].get("timer", "events")
        if device.type != "cuda" and timer != "events":
            raise UserError(f"--timer {timer} needs a CUDA GPU (a CUDA graph, or CUPTI's "
                            f"kernel times); on a CPU only the wall clock times (--timer events)")
        from flashbench.core.plugins import load_plugins

        # The parent bounds the plugins' import by the case timeout (their own code, which
        # may hang), the rest of the start by its own, longer, timeout (torch, CUDA).
        send(replies, {"kind": "phase", "phase": "plugins"})
        load_plugins(hello["plugins"], probe=False)  # the parent probed them already
        send(replies, {"kind": "phase", "phase": "kernels"})
    except UserError as e:
        send(replies, {"kind": "bad_input", "message": str(e)})
        return None
    from flashbench.core.config import TimingPolicy
    from flashbench.core.nvml import nvml_handle
    from flashbench.measure.device import use_threads
    from flashbench.measure.machine import capture_environment

    policy = TimingPolicy.model_validate(hello["timing"])
    use_threads(device, policy.threads)  # before anything runs, so inter-op threads obey too
    _preload(hello["backends"])
    environment = capture_environment(device)  # records the threads torch now uses
    handle = nvml_handle(environment.get("gpu_uuid")) if device.type == "cuda" else None
    send(replies, {"kind": "ready", "device": str(device), "environment": environment})
    return device, policy, environment, handle, hello.get("fp32_precision", "tf32")


def _measure_group(message: dict[str, Any], replies: Connection, device, policy, environment,
                   handle, fp32_precision) -> int | None:
    """One comparison group, its events passed on as they happen (module docstring); the exit
    code when this worker must end after it (a lost context, leftovers), else None."""
    from flashbench.core.cases import Case, Status
    from flashbench.core.errors import one_line
    from flashbench.core.rows import blank_row
    from flashbench.measure.group import measure_group

    cases = [Case.from_dict(c) for c in message["cases"]]
    blame = _Blame()
    events = measure_group(cases, device, policy, handle, environment.get("ceilings"),
                           tainted=blame.case, fp32_precision=fp32_precision)
    index = None
    while True:
        try:
            event = next(events)
        except StopIteration:
            break
        except Exception as e:  # its own clean-up failed (a broken CUDA context): still a row
            if index is None:
                raise
            event = _Failure(index, blank_row(cases[index], str(device), policy.l2)
                             | {"status": Status.ERROR, "error": one_line(e)})
        if event.kind in ("start", "sampling"):
            index = event.index
            send(replies, {"kind": event.kind, "index": event.index,
                           "indices": list(event.indices)})
            continue
        if event.kind == "sampled":
            lost = _context_lost(device)
            if lost:  # which of the cases broke it is unknown: the parent times them alone
                send(replies, {"kind": "group_failed", "reason": lost})
                return EXIT_CONTEXT_LOST
            blame.cases(event.indices)
            continue
        row = event.row
        lost = _context_lost(device)
        if lost:
            cause = row["error"] if row["status"] != Status.OK and row["error"] else lost
            row.update(status=Status.CRASH, error=f"the CUDA context is unusable after this "
                                                  f"case (worker replaced): {cause}"[:500])
        if blame.of(event.index):
            row["warnings"] = blame.of(event.index)
        send(replies, {"kind": "row", "index": event.index, "row": row, "fatal": bool(lost)})
        if lost:
            return EXIT_CONTEXT_LOST
        if isinstance(event, _Failure):  # the group cannot go on: the rest to a new worker
            send(replies, {"kind": "group_done", "replace": True})
            return EXIT_BROKEN
    send(replies, {"kind": "group_done", "replace": blame.any})
    return EXIT_LEFTOVERS if blame.any else None


class _Blame:
    """Threads and processes left running (flashbench.sweep.leftovers), each blamed on the
    case after whose preparation it appeared, or on the cases timed while it appeared."""

    def __init__(self):
        from flashbench.sweep.leftovers import snapshot

        self._before = snapshot()
        self._seen: set[str] = set()
        self._by_case: dict[int, list[str]] = {}

    def _new(self) -> list[str]:
        from flashbench.sweep.leftovers import left_since

        found = [w for w in left_since(self._before) if w not in self._seen]
        self._seen.update(found)
        return found

    def case(self, index: int) -> bool:
        """After case ``index`` was prepared: whether it left something running."""
        found = self._new()
        if found:
            self._by_case[index] = found
        return bool(found)

    def cases(self, indices) -> None:
        found = self._new()
        for i in indices:
            self._by_case.setdefault(i, []).extend(found)

    def of(self, index: int) -> list[str]:
        return self._by_case.get(index, [])

    @property
    def any(self) -> bool:
        return bool(self._seen)


class _Failure:
    """A row made here for a case whose measurement raised past measure_group."""

    kind = "row"

    def __init__(self, index: int, row: dict[str, Any]):
        self.index, self.row = index, row


def _serve(requests: Connection, replies: Connection) -> int:
    started = _start(receive(requests), replies)
    if started is None:
        return EXIT_BAD_INPUT
    while True:
        try:
            message = receive(requests)
        except EOFError:  # the parent is gone or done
            return 0
        if message["kind"] == "stop":
            return 0
        exit_code = _measure_group(message, replies, *started)
        if exit_code is not None:
            return exit_code


def main(argv: list[str]) -> int:
    requests_fd, replies_fd, parent_pid = (int(a) for a in argv)
    from flashbench.core.subprocesses import die_with_parent

    die_with_parent(parent_pid)  # no hung worker outlives a sweep
    # Ctrl-C is the parent's to handle; this process is stopped by a message or killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable(all_threads=True)
    requests = Connection(requests_fd, writable=False)
    replies = Connection(replies_fd, readable=False)
    try:
        return _serve(requests, replies)
    except (BrokenPipeError, EOFError):  # the parent went away mid-message
        return 0


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    # Skip the interpreter's teardown (a second with torch loaded): nothing is left to save.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)

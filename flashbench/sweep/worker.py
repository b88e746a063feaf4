"""The worker process (``python -m flashbench.sweep.worker``): measures the cases its parent sends, one at a time.

The parent (flashbench.sweep.executors) never touches CUDA; this process owns the device. Messages
are JSON objects (plain data: unpickling could import torch into the parent) over two pipes
whose descriptors are given on the command line:

    parent -> worker   {"kind": "hello", "device", "plugins", "backends", "timing",
                        "fp32_precision"},
                       then {"kind": "case", "case"} per case, or {"kind": "stop"}
    worker -> parent   {"kind": "phase", "phase": "plugins"} while it imports the plugins,
                       {"kind": "phase", "phase": "kernels"} once they are in,
                       {"kind": "ready", "device", "environment"} or {"kind": "bad_input", "message"},
                       then per case {"kind": "row", "row", "fatal", "replace"}

``fatal`` says the CUDA context is unusable after the case; ``replace`` that the case left
threads or processes running (the row's ``warnings`` say which: flashbench.sweep.leftovers).
Either way the worker exits after the row, and the parent kills its process group and starts
another.
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


def _measure(case_data: dict[str, Any], device, policy, environment, handle, fp32_precision
             ) -> tuple[dict[str, Any], bool, bool]:
    """One case's row, whether the CUDA context is lost after it, and whether it left threads
    or processes running (either way the worker exits, to be replaced)."""
    from flashbench.core.cases import Case, Status
    from flashbench.core.errors import one_line
    from flashbench.core.rows import blank_row
    from flashbench.measure.case import measure_case
    from flashbench.sweep.leftovers import left_since, snapshot

    case = Case.from_dict(case_data)
    before = snapshot()
    try:
        row = measure_case(case, device, policy, handle, environment.get("ceilings"),
                           fp32_precision)
    except Exception as e:  # its own clean-up failed (a broken CUDA context): still a row
        row = blank_row(case, str(device), policy.l2) | {"status": Status.ERROR,
                                                         "error": one_line(e)}
    lost = _context_lost(device)
    if lost:
        cause = row["error"] if row["status"] != Status.OK and row["error"] else lost
        row.update(status=Status.CRASH, error=f"the CUDA context is unusable after this case "
                                              f"(worker replaced): {cause}"[:500])
    warnings = left_since(before)
    if warnings:
        row["warnings"] = warnings
    return row, lost is not None, bool(warnings)


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
        row, fatal, replace = _measure(message["case"], *started)
        send(replies, {"kind": "row", "row": row, "fatal": fatal, "replace": replace})
        if fatal:
            return EXIT_CONTEXT_LOST
        if replace:
            return EXIT_LEFTOVERS


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

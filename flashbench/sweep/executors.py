"""Where cases run: in a worker process that may die or hang without ending the sweep, or in this process.

``WorkerExecutor`` keeps one long-lived worker (flashbench.sweep.worker) for the sweep's device. A
worker that dies makes its case a ``crash`` row carrying the last lines of its stderr; a case
that outlives the timeout is a ``timeout`` row and its worker is killed; a case that leaves
threads or processes running keeps its row, with ``warnings``. Either way the next case gets a
fresh worker (flashbench.sweep.worker_process: the process itself, its group killed whenever it
ends). This module imports neither torch nor CUDA: the parent of a sweep must not hold a CUDA
context, and each worker is a fresh interpreter, never a fork.
``InProcessExecutor`` (``--no-isolate``) runs cases here, for debugging: no timeouts, no recovery.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable, Iterator, Protocol

from flashbench.core.cases import Case, Status
from flashbench.core.config import TimingPolicy
from flashbench.core.errors import UserError
from flashbench.core.rows import blank_row
from flashbench.core.subprocesses import describe_exit
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.worker_process import (ABANDONED, STDERR_TAIL_LINES, TIMED_OUT, Died,
                                             StartFailed, WorkerProcess, fatal_line)

__all__ = ["STARTUP_TIMEOUT_S", "STDERR_TAIL_LINES", "Executor", "GroupEvent", "InProcessExecutor",
           "Interrupted", "WorkerExecutor", "WorkerStartError", "plugin_import_timeout_s",
           "row_of"]

STARTUP_TIMEOUT_S = 300.0  # importing torch and initializing CUDA, on a busy machine
PLUGIN_IMPORT_FLOOR_S = 15.0  # a plugin that imports torch's extras takes seconds (the probe warmed the disk cache)


def plugin_import_timeout_s(case_timeout_s: float) -> float:
    """How long the worker's import of the plugins may take: as long as a case (their code may
    hang just as a case may), but at least 15 s and at most the whole start-up's 300 s."""
    return min(STARTUP_TIMEOUT_S, max(case_timeout_s, PLUGIN_IMPORT_FLOOR_S))


# What measuring a comparison group gives, in order: ("start", case) as each case is prepared,
# ("sampling", cases) while the prepared ones are timed, ("row", row) as each row is final, and
# ("abandoned", None) when the user abandoned the sweep (the cases without a row have none).
GroupEvent = tuple[str, Any]


def row_of(events: Iterable[GroupEvent]) -> dict[str, Any] | None:
    """The row of a group of one case, or None when it was abandoned."""
    rows = [value for kind, value in events if kind == "row"]
    return rows[-1] if rows else None


@dataclass
class _Outcome:
    done: set[int] = field(default_factory=set)  # indices of the batch that have their row
    abandoned: bool = False
    split: bool = False  # the rest is to be timed again, each case alone


class Interrupted(Exception):
    """The user stopped the sweep before its first case: nothing was written."""


class WorkerStartError(RuntimeError):
    """A worker process could not start (it died, or hung, before it was ready)."""


class Executor(Protocol):
    device: str
    environment: dict[str, Any]

    def measure(self, case: Case, timeout_s: float) -> dict[str, Any] | None:
        """The case's row; None when the user abandoned it (no row: a resume runs it again)."""

    def measure_group(self, cases: list[Case], timeout_s: float) -> Iterator[GroupEvent]:
        """A comparison group's events (GroupEvent), its backends timed alternately."""

    def close(self) -> None: ...


class WorkerExecutor:
    """Cases in a worker process, replaced after a crash, a timeout or a case that left
    threads or processes running."""

    def __init__(self, device: str, plugins: list[str], backends: list[str],
                 timing: TimingPolicy, interrupt: Interrupt,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S, env: dict[str, str] | None = None,
                 wait: bool = True, plugin_timeout_s: float = STARTUP_TIMEOUT_S,
                 fp32_precision: str = "tf32"):
        self._hello = {"kind": "hello", "device": device, "plugins": list(plugins),
                       "backends": list(backends), "timing": timing.model_dump(),
                       "fp32_precision": fp32_precision}
        # ``env`` adds to this process's environment (--devices pins a GPU with it).
        self._env = dict(os.environ) | (env or {})
        if device == "cpu":
            # Triton picks its interpreter when first imported; the worker imports it fresh.
            self._env.setdefault("TRITON_INTERPRET", "1")
        self._interrupt = interrupt
        self._startup_timeout_s = startup_timeout_s
        self._plugin_timeout_s = plugin_timeout_s
        self._worker: WorkerProcess | None = None
        self.device: str = device
        self.environment: dict[str, Any] = {}
        # Started in the caller's thread: the worker asks Linux to kill it when the thread that
        # started it ends (PR_SET_PDEATHSIG follows threads, not processes), so a thread that
        # only waits for it to be ready must not start it.
        self._first: WorkerProcess | None = WorkerProcess(self._hello, self._env)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the first worker (another thread may wait, for several workers at once)."""
        worker, self._first = self._first, None
        if worker is None:
            return
        ready = self._start(first=True, worker=worker)
        self.device = ready["device"]
        self.environment = ready["environment"]

    def _start(self, *, first: bool, worker: WorkerProcess | None = None) -> dict[str, Any]:
        """A ready worker; bad input (the first time only) is the user's, anything else ours."""
        worker = worker or WorkerProcess(self._hello, self._env)
        reply = worker.wait_ready(self._startup_timeout_s, self._plugin_timeout_s,
                                  self._interrupt)
        if not isinstance(reply, dict) or reply["kind"] != "ready":
            # Not forwarded: a failed start is one line (its reason), not the fault handler's
            # twenty.
            worker.close(graceful=False, forward=False)
        if reply is ABANDONED:
            raise Interrupted("interrupted while the worker process started; nothing was written")
        if isinstance(reply, dict) and reply["kind"] == "bad_input":
            if first:
                raise UserError(reply["message"])
            raise WorkerStartError(f"a new worker refused what the first accepted: "
                                   f"{reply['message']}")
        if isinstance(reply, StartFailed):
            raise WorkerStartError(f"the worker process did not start ({reply.how})"
                                   + (f": {reply.reason}" if reply.reason else ""))
        worker.forward_output()
        self._worker = worker
        return reply

    def measure(self, case: Case, timeout_s: float) -> dict[str, Any] | None:
        return row_of(self.measure_group([case], timeout_s))

    def measure_group(self, cases: list[Case], timeout_s: float) -> Iterator[GroupEvent]:
        """A comparison group in the worker, as events (GroupEvent); each case ends with a
        row, or the group with ("abandoned", None). A worker that dies or hangs while a case is
        prepared gives that case its row, the rest goes to a new worker; one that dies or hangs
        while several cases alternate is not told apart: they are timed again, each alone."""
        queue = [list(cases)]
        while queue:
            batch = queue.pop(0)
            outcome = yield from self._one_group(batch, timeout_s)
            if outcome.abandoned:
                yield ("abandoned", None)
                return
            rest = [c for i, c in enumerate(batch) if i not in outcome.done]
            if outcome.split:
                queue[:0] = [[c] for c in rest]
            elif rest:
                queue.insert(0, rest)

    def _send_group(self, batch: list[Case]) -> WorkerProcess | None:
        """The group sent to a ready worker (a new one if the last ended); None if the user
        abandoned the sweep while it started."""
        for attempt in range(2):
            if self._worker is None:  # the last one crashed, timed out or was replaced
                try:
                    self._start(first=False)
                except Interrupted:
                    return None
            worker = self._worker
            assert worker is not None
            try:
                worker.send({"kind": "group", "cases": [c.to_dict() for c in batch]})
                return worker
            except OSError:  # it died while idle (killed from outside): it never got the group
                self._drop(graceful=False)
        raise WorkerStartError("the worker process died before it received a case")

    def _one_group(self, batch: list[Case], timeout_s: float
                   ) -> Generator[GroupEvent, None, _Outcome]:
        worker = self._send_group(batch)
        outcome = _Outcome()
        if worker is None:
            outcome.abandoned = True
            return outcome
        current, sampling = 0, []
        deadline = time.monotonic() + timeout_s
        while True:
            reply = worker.receive(deadline, self._interrupt)
            if reply is ABANDONED:
                self._drop(graceful=False)
                outcome.abandoned = True
                return outcome
            if reply is TIMED_OUT or isinstance(reply, Died):
                if len(sampling) > 1:  # one of them hung or crashed the worker: which one?
                    self._drop(graceful=False)
                    outcome.split = True
                    return outcome
                i = sampling[0] if sampling else current
                yield ("row", self._lost(batch[i], reply, timeout_s))
                outcome.done.add(i)
                return outcome
            kind = reply["kind"]
            if kind == "start":
                current, deadline = reply["index"], time.monotonic() + timeout_s
                yield ("start", batch[current])
            elif kind == "sampling":
                sampling = reply["indices"]
                deadline = time.monotonic() + timeout_s * len(sampling)
                yield ("sampling", [batch[i] for i in sampling])
            elif kind == "row":
                yield ("row", self._kept(batch[reply["index"]], reply))
                outcome.done.add(reply["index"])
                if reply.get("fatal"):
                    return outcome
            elif kind == "group_failed":
                self._drop(graceful=True)
                outcome.split = True
                if len(sampling) == 1:
                    yield ("row", self._failed(batch[sampling[0]], Status.CRASH,
                                               f"the CUDA context is unusable after this case "
                                               f"(worker replaced): {reply['reason']}", ""))
                    outcome.done.add(sampling[0])
                return outcome
            else:  # group_done
                if reply.get("replace"):
                    self._drop(graceful=True)
                else:
                    worker.forward_output()
                return outcome

    def _lost(self, case: Case, reply: Any, timeout_s: float) -> dict[str, Any]:
        """The row of a case during which the worker hung (killed) or died."""
        tail = self._drop(graceful=False)
        if reply is TIMED_OUT:
            return self._failed(case, Status.TIMEOUT, f"exceeded the case timeout of "
                                f"{timeout_s:g} s; worker killed and replaced", tail)
        return self._failed(case, Status.CRASH, f"worker {describe_exit(reply.returncode)}"
                            f"{fatal_line(tail)}; replaced", tail)

    def _kept(self, case: Case, reply: dict[str, Any]) -> dict[str, Any]:
        row = reply["row"]
        if reply.get("fatal"):
            row["stderr_tail"] = self._drop(graceful=True)
        for warning in row.get("warnings") or []:
            print(f"warning: {case.label()}: {warning}", file=sys.stderr)
        return row

    def _drop(self, *, graceful: bool) -> str:
        """End the current worker (the next case starts another); returns its last lines."""
        worker, self._worker = self._worker, None
        if worker is None:
            return ""
        if not graceful:
            worker.kill()
        tail = worker.tail()
        worker.close(graceful=graceful)
        return tail

    def _failed(self, case: Case, status: Status, error: str, tail: str) -> dict[str, Any]:
        """The row of a case whose worker died or hung: what the case was, and how it ended."""
        blank = blank_row(case, self.device, self._hello["timing"]["l2"])
        return blank | {"status": status, "error": error[:500], "stderr_tail": tail}

    def close(self) -> None:
        if self._first is not None:  # started, never waited for
            self._first.close(graceful=False)
            self._first = None
        self._drop(graceful=True)


class InProcessExecutor:
    """Cases in this process (``--no-isolate``): a crash ends the sweep, a hang hangs it."""

    def __init__(self, device: str, timing: TimingPolicy, fp32_precision: str = "tf32"):
        import torch

        from flashbench.core.nvml import nvml_handle
        from flashbench.measure.device import select_device, use_threads
        from flashbench.measure.machine import capture_environment

        self._device = select_device(device)
        self._policy = timing
        self._fp32_precision = fp32_precision
        # This process goes on after the sweep (a notebook, a test): its threads are put back.
        self._threads_before = torch.get_num_threads()
        use_threads(self._device, timing.threads)
        self.device = str(self._device)
        self.environment = capture_environment(self._device)
        self._handle = nvml_handle(self.environment.get("gpu_uuid")) \
            if self._device.type == "cuda" else None

    def measure(self, case: Case, timeout_s: float) -> dict[str, Any] | None:
        return row_of(self.measure_group([case], timeout_s))

    def measure_group(self, cases: list[Case], timeout_s: float) -> Iterator[GroupEvent]:
        from flashbench.measure.group import measure_group

        for event in measure_group(cases, self._device, self._policy, self._handle,
                                   self.environment.get("ceilings"),
                                   fp32_precision=self._fp32_precision):
            if event.kind == "start":
                yield ("start", cases[event.index])
            elif event.kind == "sampling":
                yield ("sampling", [cases[i] for i in event.indices])
            elif event.kind == "row":
                yield ("row", event.row)

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)

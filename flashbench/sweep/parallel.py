"""Several workers measuring one sweep at once: whole comparison groups, longest first, to whichever worker is free.

Each worker (an Executor, flashbench.sweep.executors) is driven by a thread of this process that
takes the next group when its last one is done, so that the workers finish together (the
dynamic form of the longest-processing-time rule); the first groups go one to each worker, in
order. Rows reach ``record`` one at a time, under one lock, as each case finishes. Ctrl-C and
SIGTERM are read from the Interrupt flags as in a one-worker sweep. A worker that can no longer
be started (its device gone) retires: what was left of its group goes back to the front of the
queue for the others, and the sweep fails only when no worker is left.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

from flashbench.core.cases import Case, case_key
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.devices import Device
from flashbench.sweep.executors import Executor, WorkerStartError

__all__ = ["PoolOutcome", "measure_in_parallel", "start_all"]


@dataclass
class PoolOutcome:
    completed: bool  # every case has a row
    retired: list[str] = field(default_factory=list)  # why workers stopped early, one line each


class _Dealer:
    """The shared queue of groups and what the workers' threads report back, under one lock."""

    def __init__(self, executors: Sequence[Executor], groups: Sequence[list[Case]],
                 interrupt: Interrupt):
        self.queue = deque(list(g) for g in groups[len(executors):])
        first: list[list[Case] | None] = [list(g) for g in groups[:len(executors)]]
        self.first = first + [None] * (len(executors) - len(first))
        # One lock for the queue and for appending rows (their order on disk). An idle worker
        # waits while others are busy: a worker that retires puts the rest of its group back.
        self.lock = threading.Condition()
        self.busy = sum(g is not None for g in self.first)
        self.halt = threading.Event()  # another thread failed: stop between cases
        self.interrupt = interrupt
        self.left_undone: list[Case] = []
        self.retired: list[str] = []
        self.failures: list[BaseException] = []

    def stopping(self) -> bool:
        return self.interrupt.stop or self.halt.is_set()

    def take(self, worker: int) -> list[Case] | None:
        with self.lock:
            if self.first[worker] is not None:
                group, self.first[worker] = self.first[worker], None
                return group
            while not self.queue and self.busy > 0 and not self.stopping():
                self.lock.wait(0.2)
            if self.queue and not self.stopping():
                self.busy += 1
                return self.queue.popleft()
            return None

    def give_back(self, rest: list[Case], *, to_queue: bool) -> None:
        """A worker is done with its group; ``rest`` of it was not measured."""
        with self.lock:
            if to_queue and rest:
                self.queue.appendleft(rest)
            else:
                self.left_undone.extend(rest)
            self.busy -= 1
            self.lock.notify_all()


def _work(dealer: _Dealer, worker: int, executor: Executor, name: str, timeout_s: float,
          record: Callable[[int, dict[str, Any]], None],
          started: Callable[[int, str, Any], None], interleave: bool) -> None:
    """One worker's thread: groups from the dealer until none is left or the sweep stops."""
    group = dealer.take(worker)
    while group is not None:
        batches = [group] if interleave else [[c] for c in group]
        done: set[tuple] = set()

        def rest() -> list[Case]:
            return [c for c in group if case_key(c.to_dict()) not in done]

        for batch in batches:
            if dealer.stopping():
                dealer.give_back(rest(), to_queue=False)
                return
            try:
                for kind, value in executor.measure_group(batch, timeout_s):
                    if kind == "row":
                        with dealer.lock:
                            record(worker, value)
                        done.add(case_key(value))
                    elif kind == "abandoned":  # SIGTERM, a second Ctrl-C: a resume runs the rest
                        dealer.give_back(rest(), to_queue=False)
                        return
                    else:
                        started(worker, kind, value)
            except WorkerStartError as e:  # the rest of this group goes to another worker
                with dealer.lock:
                    dealer.retired.append(f"{name}: {e}")
                print(f"warning: the worker on {name} stopped ({e}); the other workers take "
                      f"its cases", file=sys.stderr)
                dealer.give_back(rest(), to_queue=True)
                return
            except BaseException as e:  # record failed (a full disk): stop everything
                dealer.failures.append(e)
                dealer.halt.set()
                dealer.give_back(rest(), to_queue=False)
                return
        dealer.give_back([], to_queue=False)
        group = dealer.take(worker)


def measure_in_parallel(executors: Sequence[Executor], names: Sequence[str],
                        groups: Sequence[list[Case]], interrupt: Interrupt, timeout_s: float,
                        record: Callable[[int, dict[str, Any]], None],
                        started: Callable[[int, str, Any], None] = lambda worker, kind, value:
                        None, interleave: bool = True) -> PoolOutcome:
    """Measure ``groups`` (longest first) on ``executors``; ``record(worker, row)`` keeps each row.

    ``started(worker, kind, value)`` is told of each step as it starts (a case prepared, a
    group's backends timed alternately: flashbench.sweep.executors.GroupEvent), for a progress
    bar. With ``interleave`` off, a group's cases are timed one after another. Raises
    WorkerStartError when every worker retired with cases left, and re-raises whatever
    ``record`` raised (a full disk), after stopping the other workers between cases.
    """
    dealer = _Dealer(executors, groups, interrupt)
    threads = [threading.Thread(target=_work, args=(dealer, w, executors[w], names[w], timeout_s,
                                                    record, started, interleave),
                                name=f"flashbench-{names[w]}", daemon=True)
               for w in range(len(executors))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: signal handlers run in this (the main) thread between them
    if dealer.failures:
        raise dealer.failures[0]
    left = dealer.left_undone + [c for g in dealer.queue for c in g]
    if left and not interrupt.stop and len(dealer.retired) == len(executors):
        raise WorkerStartError("; ".join(dealer.retired))
    return PoolOutcome(completed=not left, retired=dealer.retired)


class _Starting(Protocol):
    def wait_ready(self) -> None: ...

    def close(self) -> None: ...


_S = TypeVar("_S", bound=_Starting)


def start_all(devices: Sequence[Device], spawn: Callable[[Device], _S]) -> list[_S]:
    """``spawn(device)`` for every device here, then wait until all are ready, at once.

    Spawning stays in this thread (a worker dies with the thread that started it); waiting,
    seconds per worker for importing torch, happens in one thread each. If any fails, all are
    closed and the first failure, in device order, raised.
    """
    started: list[_S] = []
    try:
        for device in devices:
            started.append(spawn(device))
    except BaseException:
        for executor in started:
            executor.close()
        raise
    errors: list[BaseException | None] = [None] * len(started)

    def wait(i: int) -> None:
        try:
            started[i].wait_ready()
        except BaseException as e:  # re-raised below, in the caller's thread
            errors[i] = e

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(started))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: signal handlers run in this (the main) thread between them
    failure = next((e for e in errors if e is not None), None)
    if failure is not None:
        for executor in started:
            executor.close()
        raise failure
    return started

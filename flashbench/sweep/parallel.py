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
from typing import Any, Callable, Sequence

from flashbench.core.cases import Case
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.executors import Executor, WorkerStartError

__all__ = ["PoolOutcome", "measure_in_parallel"]


@dataclass
class PoolOutcome:
    completed: bool  # every case has a row
    retired: list[str] = field(default_factory=list)  # why workers stopped early, one line each


def measure_in_parallel(executors: Sequence[Executor], names: Sequence[str],
                        groups: Sequence[list[Case]], interrupt: Interrupt, timeout_s: float,
                        record: Callable[[int, dict[str, Any]], None],
                        started: Callable[[int, Case], None] = lambda worker, case: None
                        ) -> PoolOutcome:
    """Measure ``groups`` (longest first) on ``executors``; ``record(worker, row)`` keeps each row.

    ``started(worker, case)`` is told of each case as it starts (for a progress bar). Raises
    WorkerStartError when every worker retired with cases left, and re-raises whatever
    ``record`` raised (a full disk), after stopping the other workers between cases.
    """
    queue = deque(list(g) for g in groups[len(executors):])
    first: list[list[Case] | None] = [list(g) for g in groups[:len(executors)]]
    first += [None] * (len(executors) - len(first))
    # One lock for the queue and for appending rows (their order on disk). An idle worker
    # waits while others are busy: a worker that retires puts the rest of its group back.
    lock = threading.Condition()
    busy = [sum(g is not None for g in first)]
    halt = threading.Event()  # another thread failed: stop between cases
    left_undone: list[Case] = []
    retired: list[str] = []
    failures: list[BaseException] = []

    def stopping() -> bool:
        return interrupt.stop or halt.is_set()

    def take(worker: int) -> list[Case] | None:
        with lock:
            if first[worker] is not None:
                group, first[worker] = first[worker], None
                return group
            while not queue and busy[0] > 0 and not stopping():
                lock.wait(0.2)
            if queue and not stopping():
                busy[0] += 1
                return queue.popleft()
            return None

    def give_back(rest: list[Case], *, to_queue: bool) -> None:
        """This worker is done with its group; ``rest`` of it was not measured."""
        with lock:
            if to_queue and rest:
                queue.appendleft(rest)
            else:
                left_undone.extend(rest)
            busy[0] -= 1
            lock.notify_all()

    def work(worker: int) -> None:
        executor = executors[worker]
        group = take(worker)
        while group is not None:
            for i, case in enumerate(group):
                if stopping():
                    give_back(group[i:], to_queue=False)
                    return
                started(worker, case)
                try:
                    row = executor.measure(case, timeout_s)
                    if row is not None:
                        with lock:
                            record(worker, row)
                except WorkerStartError as e:  # the rest of this group goes to another worker
                    with lock:
                        retired.append(f"{names[worker]}: {e}")
                    print(f"warning: the worker on {names[worker]} stopped ({e}); the other "
                          f"workers take its cases", file=sys.stderr)
                    give_back(group[i:], to_queue=True)
                    return
                except BaseException as e:  # record failed (a full disk): stop everything
                    failures.append(e)
                    halt.set()
                    give_back(group[i:], to_queue=False)
                    return
                if row is None:  # abandoned (SIGTERM, a second Ctrl-C): no row, a resume runs it
                    give_back(group[i:], to_queue=False)
                    return
            give_back([], to_queue=False)
            group = take(worker)

    threads = [threading.Thread(target=work, args=(w,), name=f"flashbench-{names[w]}",
                                daemon=True) for w in range(len(executors))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: signal handlers run in this (the main) thread between them
    if failures:
        raise failures[0]
    left = left_undone + [c for g in queue for c in g]
    if left and not interrupt.stop and len(retired) == len(executors):
        raise WorkerStartError("; ".join(retired))
    return PoolOutcome(completed=not left, retired=retired)

"""One sweep per device at a time: an advisory lock per GPU (by UUID), or per host for its CPU.

Two sweeps on one device corrupt each other's timings without an error: each kernel shares the
SMs (or cores) and the memory bandwidth with the other's. A sweep takes the lock of every
device it measures on before its first case and holds it to the end; a second sweep waits for
it (saying so), or with ``refuse`` stops with one line naming the other run. ``share`` skips
the lock, for those who mean to measure side by side. The locks are flocks on files in the
user's cache folder, so the kernel releases them when a process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal, Sequence

from flashbench.core.cache import cache_dir
from flashbench.core.errors import UserError
from flashbench.sweep.executors import Interrupted
from flashbench.sweep.interrupts import Interrupt

__all__ = ["LockMode", "device_locks"]

LockMode = Literal["wait", "refuse", "share"]
_POLL_S = 0.5


def _key(environment: dict[str, Any]) -> tuple[str, str]:
    """(lock file stem, how a message names the device)."""
    uuid = environment.get("gpu_uuid")
    if uuid:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", uuid), f"GPU {uuid}"
    host = environment.get("host") or platform.node() or "localhost"
    return f"cpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}", f"the CPU of {host}"


def _holder(fd: int) -> str:
    """What the lock's holder wrote of itself: its run and pid."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"`{info.get('command')}` (pid {info.get('pid')})"
    except (OSError, ValueError, AttributeError):
        return "another flashbench process"


def _acquire(fd: int, name: str, mode: LockMode, interrupt: Interrupt,
             log: Callable[[str], None]) -> None:
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if mode == "refuse":
            raise UserError(f"{name} is in use by {_holder(fd)}; wait for it, or pass "
                            f"--allow-shared-device to measure beside it (the timings of "
                            f"both then suffer)")
        if not said:
            log(f"waiting for {name}: in use by {_holder(fd)} (--no-wait refuses instead)")
            said = True
        if interrupt.stop:
            raise Interrupted("interrupted while waiting for the device; nothing was written")
        time.sleep(_POLL_S)


@contextmanager
def device_locks(environments: Sequence[dict[str, Any]], command: str, *, mode: LockMode,
                 interrupt: Interrupt, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock of each device the sweep's executors measure on, while the block runs."""
    if mode == "share":
        yield
        return
    folder = cache_dir() / "locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log(f"warning: cannot lock the device ({folder}: {e.strerror}); measuring anyway")
        yield
        return
    held: list[int] = []
    try:
        for stem, name in sorted({_key(env) for env in environments}):
            fd = os.open(folder / f"{stem}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            held.append(fd)
            _acquire(fd, name, mode, interrupt, log)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid()}).encode(), 0)
        yield
    finally:
        for fd in held:
            os.close(fd)  # releases the flock

"""Plugin backends that leave things running after they return: a busy thread, a child process.

Each writes ``NAME PID THREADS`` (the process it ran in, and how many Python threads run there)
to $FLASHBENCH_TEST_PIDFILE when set, and ``leak-process`` writes ``child PID`` for the child
it leaves. Imported in the sweep's worker
with $FLASHBENCH_TEST_DAEMON_PIDFILE set, the module itself starts a ``sleep 300`` and writes
its pid there: a helper process a plugin starts at import, which no case is to blame for.
"""

import os
import subprocess
import sys
import threading

import flashbench

_KEEP = []  # what was started, so that nothing here is collected (and reaped) early


def _note(name: str, pid: int) -> None:
    path = os.environ.get("FLASHBENCH_TEST_PIDFILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{name} {pid} {threading.active_count()}\n")


def _in_worker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "flashbench.sweep.worker"


if _in_worker() and os.environ.get("FLASHBENCH_TEST_DAEMON_PIDFILE"):
    _KEEP.append(subprocess.Popen(["sleep", "300"]))
    with open(os.environ["FLASHBENCH_TEST_DAEMON_PIDFILE"], "w") as f:
        f.write(str(_KEEP[-1].pid))


def _sdpa(q, k, v, causal, scale):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)


def _spin() -> None:
    while True:  # holds the GIL as much as Python lets it: every later case would be slowed
        pass


@flashbench.register_backend("leak-thread")
def leak_thread(q, k, v, *, causal, scale):
    """PyTorch SDPA that leaves a busy non-daemon thread behind (once per process)."""
    _note("leak-thread", os.getpid())
    if not any(t.name == "leak-thread-spin" for t in threading.enumerate()):
        threading.Thread(target=_spin, name="leak-thread-spin").start()
    return _sdpa(q, k, v, causal, scale)


@flashbench.register_backend("leak-process")
def leak_process(q, k, v, *, causal, scale):
    """PyTorch SDPA that leaves a `sleep 300` child behind (once per process)."""
    _note("leak-process", os.getpid())
    if not _KEEP or _KEEP[-1].poll() is not None:
        _KEEP.append(subprocess.Popen(["sleep", "300"]))
        _note("child", _KEEP[-1].pid)
    return _sdpa(q, k, v, causal, scale)


@flashbench.register_backend("pid-sdpa")
def pid_sdpa(q, k, v, *, causal, scale):
    """PyTorch SDPA that notes the pid of the process it runs in."""
    _note("pid-sdpa", os.getpid())
    return _sdpa(q, k, v, causal, scale)

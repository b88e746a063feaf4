"""Plugin backends that fail for real, for the fault-injection tests: each really crashes, hangs or raises."""

import ctypes
import os
import time

import flashbench


@flashbench.register_backend("fault-segfault")
def segfault(q, k, v, *, causal, scale):
    """Reads address 0: the process dies of SIGSEGV."""
    return ctypes.string_at(0)


@flashbench.register_backend("fault-abort")
def abort(q, k, v, *, causal, scale):
    """Calls abort(3), as a failed C++ assertion does: SIGABRT."""
    os.abort()


@flashbench.register_backend("fault-hang")
def hang(q, k, v, *, causal, scale):
    """Never returns (a deadlocked kernel); writes its pid first when asked, for the tests."""
    pidfile = os.environ.get("FLASHBENCH_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(3600)


@flashbench.register_backend("fault-raise")
def raises(q, k, v, *, causal, scale):
    """Raises, as a kernel with a bad launch configuration does."""
    raise RuntimeError("plugin kernel failed: invalid launch configuration")


@flashbench.register_backend("fault-oom")
def oom(q, k, v, *, causal, scale):
    """Raises the exception PyTorch's CUDA allocator raises when memory runs out."""
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (simulated)")

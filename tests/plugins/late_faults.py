"""Plugin backends that pass their first (checked) call and fail later, while they are timed."""

import os
import time

import flashbench

_calls = {"crash": 0, "hang": 0}
LATE = 4  # the first call is checked, the next ones are warm-up and samples


def _attention(q, k, v, scale):
    return (q @ k.transpose(-1, -2) * scale).softmax(-1) @ v


@flashbench.register_backend("late-crash")
def late_crash(q, k, v, *, causal, scale):
    """Correct at first; the worker dies (os._exit) on a later call, mid-sampling."""
    _calls["crash"] += 1
    if _calls["crash"] >= LATE:
        os._exit(9)
    return _attention(q, k, v, scale)


@flashbench.register_backend("late-hang")
def late_hang(q, k, v, *, causal, scale):
    """Correct at first; hangs on a later call, mid-sampling."""
    _calls["hang"] += 1
    if _calls["hang"] >= LATE:
        time.sleep(3600)
    return _attention(q, k, v, scale)

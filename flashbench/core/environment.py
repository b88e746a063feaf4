"""Whether two recorded environments (meta.json's ``environment``) may share one run or one comparison.

One function answers it, with the keys that matter for each question; the sets differ because
the questions do:

* ``SAME_MACHINE``: the workers of one run (``--devices``), and a resumed run against its first
  session. Its rows are compared side by side, so the device kind, the GPU model, the driver and
  the libraries that run the kernels must agree; another GPU of the same model may take part.
* ``SAME_SWEEP``: the shards of one sweep (``merge``). Beyond the machine, the same CUDA and the
  same flashbench (version and commit), since shards were split and measured by that code.
* ``COMPARABLE``: a baseline and a current run (``check``). Timings of another card model,
  driver or torch build are not comparable case by case; triton or flashbench may change, as
  that is often what is being checked.

Each set also holds ``torch_threads``, which counts only between two CPU environments: a CPU
case's time depends on how many threads torch divides it over (``timing.threads``), while on
a GPU the host threads only launch kernels. A run recorded before flashbench kept the figure
(null) ran with torch's default of one thread per core, and differs from one that says 1.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["COMPARABLE", "CPU_ONLY", "SAME_MACHINE", "SAME_SWEEP", "environment_differences"]

SAME_MACHINE: tuple[str, ...] = ("device", "gpu_name", "driver", "torch", "triton",
                                 "torch_threads")
SAME_SWEEP: tuple[str, ...] = ("device", "gpu_name", "driver", "cuda", "torch", "triton",
                               "flashbench", "git_commit", "torch_threads")
COMPARABLE: tuple[str, ...] = ("gpu_name", "driver", "torch", "torch_threads")
CPU_ONLY: frozenset[str] = frozenset({"torch_threads"})  # compared between CPU runs alone


def _value(env: dict[str, Any], key: str) -> Any:
    value = env.get(key)
    if key == "device" and isinstance(value, str):
        return value.partition(":")[0]  # cuda:0 and cuda:1 are one kind of device
    return value


def environment_differences(a: dict[str, Any] | None, b: dict[str, Any] | None,
                            keys: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for each of ``keys`` on which the two differ."""
    a, b = a or {}, b or {}
    both_cpu = _value(a, "device") == _value(b, "device") == "cpu"
    return [(k, _value(a, k), _value(b, k)) for k in keys
            if _value(a, k) != _value(b, k) and (both_cpu or k not in CPU_ONLY)]

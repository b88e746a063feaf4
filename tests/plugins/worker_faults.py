"""A plugin whose import fails only in the sweep's worker process (the probe and the parent import it fine).

$FLASHBENCH_TEST_WORKER_IMPORT says how: ``hang`` (sleeps for an hour) or ``segfault`` (reads
address 0), as a plugin that waits for a GPU lock or initializes a broken driver would.
"""

import ctypes
import os
import sys
import time

import flashbench


def _in_worker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "flashbench.sweep.worker"


if _in_worker():
    fault = os.environ.get("FLASHBENCH_TEST_WORKER_IMPORT")
    if fault == "hang":
        time.sleep(3600)
    elif fault == "segfault":
        ctypes.string_at(0)


@flashbench.register_backend("worker-faults-sdpa")
def sdpa(q, k, v, *, causal, scale):
    """PyTorch SDPA."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)

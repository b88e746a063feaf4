"""A correct plugin backend that takes 0.1 s per call, so that a test can interrupt a sweep mid-way."""

import os
import time

import flashbench


@flashbench.register_backend("slow-sdpa")
def slow_sdpa(q, k, v, *, causal, scale):
    """PyTorch SDPA after a 0.1 s sleep; writes the pid of the process that runs it when asked."""
    import torch.nn.functional as F

    pidfile = os.environ.get("FLASHBENCH_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(0.1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)

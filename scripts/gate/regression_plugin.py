"""A plugin for the gate's evidence: SDPA's flash kernel, and with FLASHBENCH_REGRESSION=1 the same
plus 10% more work (the attention of a tenth of the queries against every key, once more).

    flashbench run --plugin scripts/gate/regression_plugin.py --backends flash-plugin ...
"""

import os

import flashbench

SLOWER = os.environ.get("FLASHBENCH_REGRESSION") == "1"


@flashbench.register_backend("flash-plugin")
def flash_plugin(q, k, v, *, causal, scale):
    """SDPA's flash backend; 10% more work when FLASHBENCH_REGRESSION=1 (non-causal shapes)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        if SLOWER:
            tenth = max(1, q.shape[2] // 10)
            F.scaled_dot_product_attention(q[:, :, :tenth], k, v, scale=scale)
    return out

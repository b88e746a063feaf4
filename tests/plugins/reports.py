"""Test plugin: tells, through rows' errors, what reached the worker process.

Backend ``threads`` fails with the torch threads of the process measuring it. In a worker
process (never in the flashbench process or a test's, which also import this file), our
forward kernel's launch fails with the DOT_PRECISION constexpr it was given.
"""

import sys

import torch

import flashbench


@flashbench.register_backend("threads")
def threads(q, k, v, *, causal, scale):
    """Fails, naming torch's threads."""
    raise RuntimeError(f"torch threads {torch.get_num_threads()}, "
                       f"inter-op {torch.get_num_interop_threads()}")


class _Tell:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError(f"DOT_PRECISION={kwargs['DOT_PRECISION']}")
        return launch


_main = getattr(sys.modules.get("__main__"), "__spec__", None)
if _main is not None and _main.name == "flashbench.sweep.worker":
    from flashbench.kernels import triton_flash

    triton_flash._attn_fwd_kernel = _Tell()

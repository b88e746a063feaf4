"""Test-session set-up: run Triton kernels under its CPU interpreter when there is no GPU."""
import os

import pytest
import torch

# The tests' own cache folder (tuning winners, ceilings, device locks): never the user's, and
# never shared with another test session on the same machine.
if "FLASHBENCH_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["FLASHBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="flashbench-tests-cache-")

# Must happen before anything imports triton: the interpreter is chosen at import time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

"""Which torch device a case runs on; on a CPU, Triton's interpreter is chosen before triton loads."""

from __future__ import annotations

import os

import torch

from flashbench.core.errors import UserError

__all__ = ["select_device", "use_threads"]

DEVICES = ("auto", "cuda", "cpu")


def select_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu. On a CPU, Triton runs under its interpreter."""
    if name not in DEVICES:
        raise UserError(f"--device: {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA device is visible "
                        "(use --device cpu or --config cpu)")
    if name == "cpu":
        # Must precede the first import of triton, which decides at import time.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return torch.device(name, torch.cuda.current_device()) if name == "cuda" else torch.device(name)


def use_threads(device: torch.device, threads: int | None) -> None:
    """On a CPU, the torch threads a sweep times with (``timing.threads``): intra-op, and
    inter-op while torch still allows it (only before the process's first inter-op work).
    None keeps torch's default (one per core); on a GPU nothing changes, as the CPU threads
    only launch kernels there. The environment record says what torch uses afterwards."""
    if device.type != "cpu" or threads is None:
        return
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # set already, or inter-op work has begun: intra-op is what matters
        pass

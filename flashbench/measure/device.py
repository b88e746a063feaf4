"""Which torch device a case runs on; on a CPU, Triton's interpreter is chosen before triton loads."""

from __future__ import annotations

import os

import torch

from flashbench.core.errors import UserError

__all__ = ["select_device"]

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

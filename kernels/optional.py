"""What the backends over optional packages (flash-attn, flashinfer) share: importing the package only when asked, and saying why not."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

__all__ = ["package", "package_unavailable", "version"]


def package(name: str) -> ModuleType:
    """The installed package ``name`` (imported once; ImportError when it is not there)."""
    return importlib.import_module(name)


def package_unavailable(name: str, label: str, pip_name: str, device: torch.device
                        ) -> str | None:
    """Why the package ``name`` (``label`` to a user, ``pip_name`` to pip) cannot run on
    ``device``: not installed, failing to import (a build for another torch or CUDA, say), or
    no CUDA device. A stand-in module (the tests' fake packages) may declare the device types
    it runs on as ``__flashbench_devices__``."""
    try:
        module = package(name)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == name:
            return f"{label}: not installed (pip install {pip_name})"
        return f"{label} does not import: {e}"
    except Exception as e:  # an extension built against another torch or CUDA, say
        return f"{label} does not import: {type(e).__name__}: {e}"
    devices = getattr(module, "__flashbench_devices__", ("cuda",))
    if device.type not in devices:
        return f"{label} needs a CUDA device"
    return None


def version(name: str) -> str:
    """The package's version, for ``resolved_backend``."""
    return str(getattr(package(name), "__version__", "?"))

"""flashbench: benchmark and profile attention kernels."""

from flashbench.plugins import register_backend

__all__ = ["__version__", "register_backend"]

__version__ = "0.1.0"

"""flashbench: benchmark and profile attention kernels."""

__version__ = "0.1.0"

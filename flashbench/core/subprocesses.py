"""How flashbench starts a Python child (the worker, the profiled call): this interpreter, the installed package."""

from __future__ import annotations

import sys

__all__ = ["python_module_command"]


def python_module_command(module: str) -> list[str]:
    """``python -P -m module``: this interpreter, without the current folder on ``sys.path``.

    Plain ``-m`` puts the current folder first, so that, run from a checkout of flashbench, the
    source folder ``./flashbench`` (which lacks the ``kernels`` subpackage setuptools maps in)
    would shadow the installed package with whatever that folder holds. ``-P`` (Python 3.11+)
    keeps ``sys.path`` as installed;
    PYTHONPATH still applies.
    """
    return [sys.executable, "-P", "-m", module]

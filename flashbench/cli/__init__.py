"""The flashbench command line: each command parses its flags and delegates to the library.

Importing it imports neither torch, pandas nor triton: every command imports what it needs
when it runs, so ``flashbench --help`` is quick.
"""

# The order of registration is the order of `flashbench --help`: sweep, read, machine.
from flashbench.cli import sweep  # noqa: F401,I001
from flashbench.cli import results  # noqa: F401
from flashbench.cli import machine  # noqa: F401
from flashbench.cli.app import app

__all__ = ["app"]

"""flashbench: benchmark and profile attention kernels."""

from pathlib import Path as _Path

from flashbench.core.registry import register_backend

__all__ = ["__version__", "register_backend"]

__version__ = "0.1.0"

# Imported from a checkout rather than an install (`python -m flashbench` in its root), the
# kernels/ and configs/ folders that the wheel installs as flashbench.kernels and
# flashbench.configs sit beside this folder: look for subpackages there too, so that both
# layouts import alike. An installed package has them inside and is left as it is.
_here = _Path(__file__).resolve().parent
if not (_here / "kernels").is_dir() and (_here.parent / "kernels" / "__init__.py").is_file():
    __path__.append(str(_here.parent))
del _here, _Path

"""Plugin backends from files (``--plugin FILE``) and installed packages (entry points).

Importing a plugin registers its backends with flashbench.core.registry. Anything that goes
wrong while importing one is the user's: one line naming it, exit code 2, nothing half
registered. This module imports neither torch nor the plugins' own dependencies until asked.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zlib
from pathlib import Path

from flashbench.core import registry
from flashbench.core.errors import UserError

__all__ = ["ENTRY_POINT_GROUP", "load_entry_points", "load_plugin_file", "load_plugins"]

ENTRY_POINT_GROUP = "flashbench.backends"

_LOADED_FILES: set[Path] = set()
_LOADED_ENTRY_POINTS: set[str] = set()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_plugin_file(path: str | Path) -> Path:
    """Import a plugin file (once per process); returns its absolute path.

    Anything that goes wrong while importing it is bad input: one line naming the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--plugin {path}: no such file")
    file = file.resolve()
    if file in _LOADED_FILES:
        return file
    # A stable, unique module name: two plugins may share a file name in different folders.
    stem = re.sub(r"\W", "_", file.stem)
    module_name = f"flashbench_plugin_{stem}_{zlib.crc32(bytes(file)):08x}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise UserError(f"--plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so that the plugin's own pickling and dataclasses work
    before = registry.plugin_specs()
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # whatever the plugin raises, it is the plugin's fault
        del sys.modules[module_name]
        registry.restore_plugins(before)  # nothing half-registered stays behind
        raise UserError(f"plugin {path} does not import: {_one_line(e)}") from None
    if registry.plugin_specs() == before:
        raise UserError(f"plugin {path} registers no backend "
                        f"(decorate a function with @flashbench.register_backend(\"name\"))")
    _LOADED_FILES.add(file)
    return file


def load_entry_points() -> list[str]:
    """Import every module named in the ``flashbench.backends`` entry-point group."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _LOADED_ENTRY_POINTS:
            continue
        try:
            ep.load()
        except (Exception, SystemExit) as e:
            dist = getattr(ep.dist, "name", None) or "an installed package"
            raise UserError(f"plugin entry point {ep.name!r} = {ep.value} ({ENTRY_POINT_GROUP}, "
                            f"from {dist}) does not import: {_one_line(e)}") from None
        _LOADED_ENTRY_POINTS.add(key)
        loaded.append(key)
    return loaded


def load_plugins(files: list[str] | list[Path] | tuple[str | Path, ...] = ()) -> list[str]:
    """Entry points, then plugin files; returns the files' absolute paths (for a worker, a resume)."""
    load_entry_points()
    return [str(load_plugin_file(f)) for f in dict.fromkeys(str(f) for f in files)]

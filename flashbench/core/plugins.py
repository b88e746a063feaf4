"""Third-party backends: the ``register_backend`` decorator, plugin files and the entry-point group.

A plugin is a Python module that, when imported, registers attention functions::

    @flashbench.register_backend("my-attention")
    def my_attention(q, k, v, *, causal: bool, scale: float):
        ...  # q: (batch, heads, seq, head_dim); k, v: (batch, kv_heads, kv_len, head_dim)

Modules come from ``--plugin FILE`` or from installed packages' ``flashbench.measure.backends`` entry
points. This module imports neither torch nor the plugins' own dependencies until asked to load.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from flashbench.core.errors import UserError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginBackend",
    "load_entry_points",
    "load_plugin_file",
    "load_plugins",
    "plugin_backends",
    "register_backend",
]

ENTRY_POINT_GROUP = "flashbench.backends"

Forward = Callable[..., Any]  # (q, k, v, *, causal: bool, scale: float) -> output tensor
F = TypeVar("F", bound=Forward)

# Names travel through comma-separated flags, table headers and file names.
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass(frozen=True, slots=True)
class PluginBackend:
    name: str
    forward: Forward
    description: str
    source: str  # the file or module that registered it, for messages


_REGISTERED: dict[str, PluginBackend] = {}
_LOADED_FILES: set[Path] = set()
_LOADED_ENTRY_POINTS: set[str] = set()


def _source_of(fn: Callable[..., Any]) -> str:
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    return str(getattr(module, "__file__", None) or getattr(fn, "__module__", "?"))


def register_backend(name: str, *, description: str | None = None) -> Callable[[F], F]:
    """Register the decorated ``fn(q, k, v, *, causal, scale) -> out`` as backend ``name``.

    It then runs like a built-in backend: same inputs, correctness check, timing, isolation
    and reporting. ``description`` defaults to the first line of the function's docstring.
    """
    from flashbench.core.config import BUILTIN_BACKENDS

    if not isinstance(name, str) or not _VALID_NAME.match(name):
        raise ValueError(f"backend name {name!r} must be 1-64 letters, digits or . _ + - "
                         f"(starting with a letter or digit)")
    if name in BUILTIN_BACKENDS:
        raise ValueError(f"backend name {name!r} is a built-in backend; choose another")

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"register_backend({name!r}) decorates a function, got {fn!r}")
        source = _source_of(fn)
        known = _REGISTERED.get(name)
        # The same file loaded again (a resumed run, a test) may re-register its own names.
        if known is not None and known.source != source:
            raise ValueError(f"backend {name!r} is already registered by {known.source}")
        doc = (fn.__doc__ or "").strip().splitlines()
        text = description or (doc[0] if doc else f"plugin from {Path(source).name}")
        _REGISTERED[name] = PluginBackend(name, fn, text, source)
        return fn

    return decorate


def plugin_backends() -> dict[str, PluginBackend]:
    """Every plugin backend registered in this process so far, by name."""
    return dict(_REGISTERED)


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
    before = dict(_REGISTERED)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # whatever the plugin raises, it is the plugin's fault
        del sys.modules[module_name]
        _REGISTERED.clear()  # nothing half-registered stays behind
        _REGISTERED.update(before)
        raise UserError(f"plugin {path} does not import: {_one_line(e)}") from None
    if _REGISTERED == before:
        raise UserError(f"plugin {path} registers no backend "
                        f"(decorate a function with @flashbench.register_backend(\"name\"))")
    _LOADED_FILES.add(file)
    return file


def load_entry_points() -> list[str]:
    """Import every module named in the ``flashbench.measure.backends`` entry-point group."""
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

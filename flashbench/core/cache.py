"""The user's cache folder and its small JSON files (autotuning winners, calibrated ceilings).

``$FLASHBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/flashbench``, else ``~/.cache/flashbench``.
Each file is one JSON object of entries; a missing or damaged file reads as empty, and an entry
is stored by rewriting the file through a temporary one, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "load_entries", "store_entry"]


def cache_dir() -> Path:
    root = os.environ.get("FLASHBENCH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flashbench"


def load_entries(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # nothing cached yet, or a damaged file: measured again
    return entries if isinstance(entries, dict) else {}


def store_entry(path: Path, key: str, value: Any) -> None:
    """Add or replace one entry; raises OSError when the folder cannot be written."""
    entries = load_entries(path) | {key: value}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)

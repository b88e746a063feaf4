"""Which commit of flashbench is running: read from its own checkout, or from what its build recorded.

Standard library only: setup.py loads this file by path, to record the commit in the wheel.
Never the commit of a repository that merely encloses flashbench (a virtual environment in a
project's ``.venv/``, a copy of the source in another checkout): that is another project's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

__all__ = ["BUILD_RECORD", "checkout_commit", "source_commit"]

BUILD_RECORD = "_source_commit"  # written beside flashbench/__init__.py by the build


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_commit(root: Path) -> str | None:
    """HEAD of ``root`` (``-dirty`` when tracked files changed) when ``root`` is the top of a
    git work tree of its own whose pyproject.toml names flashbench; None otherwise."""
    project = root / "pyproject.toml"
    try:
        if 'name = "flashbench"' not in project.read_text(errors="replace"):
            return None
    except OSError:
        return None
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None
    head = _git(root, "rev-parse", "HEAD")
    if not head:
        return None
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def _installed_vcs_commit() -> str | None:
    """The commit pip recorded for a VCS install (``pip install git+https://...``)."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        text = distribution("flashbench").read_text("direct_url.json")
    except (ImportError, PackageNotFoundError, OSError):
        return None
    try:
        return (json.loads(text or "{}").get("vcs_info") or {}).get("commit_id")
    except (ValueError, AttributeError):
        return None


def source_commit(package_dir: Path) -> str | None:
    """The commit of the flashbench whose package folder is ``package_dir``.

    In order: FLASHBENCH_GIT_COMMIT (a copy of a checkout without its .git); the package's own
    checkout (an editable install, or running from the source); the commit the build recorded
    in the installed package; the commit pip recorded for a VCS install; else None.
    """
    if os.environ.get("FLASHBENCH_GIT_COMMIT"):
        return os.environ["FLASHBENCH_GIT_COMMIT"]
    commit = checkout_commit(package_dir.parent)
    if commit:
        return commit
    try:
        recorded = (package_dir / BUILD_RECORD).read_text().strip()
    except OSError:
        recorded = ""
    return recorded or _installed_vcs_commit()

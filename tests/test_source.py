"""The commit a run records is flashbench's own: its checkout's, or what its build recorded; never an enclosing repository's."""

import subprocess
from pathlib import Path

import pytest

from flashbench.core.source import BUILD_RECORD, checkout_commit, source_commit


def _repo(path: Path, pyproject: str | None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    if pyproject is not None:
        (path / "pyproject.toml").write_text(pyproject)
    (path / "file.txt").write_text("x\n")
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("FLASHBENCH_GIT_COMMIT", raising=False)


def test_own_checkout_gives_its_head_and_marks_changes(tmp_path):
    head = _repo(tmp_path / "fb", '[project]\nname = "flashbench"\n')
    (tmp_path / "fb" / "flashbench").mkdir()
    assert source_commit(tmp_path / "fb" / "flashbench") == head
    (tmp_path / "fb" / "file.txt").write_text("changed\n")
    assert checkout_commit(tmp_path / "fb") == f"{head}-dirty"


def test_a_venv_or_a_copy_inside_another_repository_records_no_commit_of_that_repository(tmp_path):
    _repo(tmp_path / "project", '[project]\nname = "someone-else"\n')
    site = tmp_path / "project" / ".venv" / "lib" / "python3.11" / "site-packages" / "flashbench"
    site.mkdir(parents=True)
    assert source_commit(site) is None
    # A copy of flashbench's source inside another checkout: its pyproject names flashbench,
    # but the work tree is the other project's.
    copy = tmp_path / "project" / "vendor" / "fb"
    (copy / "flashbench").mkdir(parents=True)
    (copy / "pyproject.toml").write_text('[project]\nname = "flashbench"\n')
    assert checkout_commit(copy) is None and source_commit(copy / "flashbench") is None


def test_an_installed_package_gives_what_its_build_recorded(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "flashbench"
    package.mkdir(parents=True)
    (package / BUILD_RECORD).write_text("abc123\n")
    assert source_commit(package) == "abc123"
    monkeypatch.setenv("FLASHBENCH_GIT_COMMIT", "override")
    assert source_commit(package) == "override"

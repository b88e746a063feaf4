"""Build hook: the wheel records the commit it was built from (flashbench/_source_commit).

Everything else about the package is in pyproject.toml.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("flashbench_source", ROOT / "flashbench" / "core"
                                               / "source.py")
source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(source)


class BuildPyRecordingCommit(build_py):
    def run(self):
        super().run()
        commit = source.checkout_commit(ROOT)
        if commit and not self.dry_run:
            (Path(self.build_lib) / "flashbench" / source.BUILD_RECORD).write_text(commit + "\n")


setup(cmdclass={"build_py": BuildPyRecordingCommit})

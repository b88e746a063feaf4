"""The plugin probe (``python -P -m flashbench.core.plugin_probe REQUEST``): imports plugins where a bad one can do no harm.

flashbench.core.plugins starts it before importing plugins into its own process. REQUEST is a
JSON object: the plugin files, whether to load the entry points, the parent's ``sys.path`` (so
that imports resolve as they will there) and the parent's pid. The environment is the
parent's, TRITON_INTERPRET included. On stdout it writes JSON lines: ``{"importing": LABEL}``
before each plugin, then ``{"ok": true}`` or ``{"error": MESSAGE}``; a probe that ends with
neither was ended by the plugin it was importing. The plugins' own prints go to stderr.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys

__all__ = ["main"]


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    from flashbench.core.subprocesses import die_with_parent

    die_with_parent(request["parent"])  # a probe that hangs must not outlive a killed parent
    report = os.fdopen(os.dup(1), "w")  # the real stdout, for this module's lines alone
    os.dup2(2, 1)  # a plugin's prints, Python's or C's, go to stderr
    faulthandler.enable()  # a crash names itself on stderr: "Fatal Python error: ..."
    sys.path[:] = request["sys_path"]

    def announce(label: str) -> None:
        report.write(json.dumps({"importing": label}) + "\n")
        report.flush()

    from flashbench.core.errors import UserError
    from flashbench.core.plugins import load_entry_points, load_plugin_file

    try:
        if request["entry_points"]:
            load_entry_points(announce)
        for file in request["files"]:
            announce(f"plugin {file}")
            load_plugin_file(file)
    except UserError as e:
        outcome = {"error": str(e)}
    else:
        outcome = {"ok": True}
    report.write(json.dumps(outcome) + "\n")
    report.flush()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    # No interpreter teardown: a plugin's non-daemon thread or atexit hook must not hold it up.
    os._exit(code)

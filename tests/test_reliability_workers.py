"""Plugins and worker hygiene, with real processes: plugin imports that end, crash, hang or print;
a worker that cannot import its plugins; cases that leave threads or processes behind; what a
sweep leaves on the machine when it ends or is killed.

docs/reliability.md quotes these outcomes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core import plugins, registry
from sweep_helpers import PLUGINS, count_lines, rows_of, wait_for, write_config

FLASHBENCH = [sys.executable, "-m", "flashbench"]
PROBE_ENV = {"FLASHBENCH_PLUGIN_PROBE_TIMEOUT_S": "3"}


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """The plugins an in-process run loads here are forgotten after the test."""
    monkeypatch.setattr(registry, "_PLUGINS", {})
    monkeypatch.setattr(plugins, "_LOADED_FILES", set())
    monkeypatch.setattr(plugins, "_LOADED_ENTRY_POINTS", set())


def flashbench(*args, env=None, timeout=120):
    return subprocess.run([*FLASHBENCH, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=os.environ | (env or {}))


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def gone(pid: int) -> bool:
    """No such process, or only its zombie (reaped by whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


# How each plugin's import fails (tests/plugins/import_*.py), and what the one line then says.
IMPORT_FAULTS = {
    "import_exit": "the import ended the process (exited with code 0)",
    "import_segfault": "the import ended the process (killed by SIGSEGV; "
                       "Fatal Python error: Segmentation fault)",
    "import_hang": "still importing after 3 s",
}


@pytest.mark.parametrize("command", ["run", "list"])
@pytest.mark.parametrize("fault", IMPORT_FAULTS)
def test_a_plugin_whose_import_ends_crashes_or_hangs_is_bad_input(tmp_path, fault, command):
    plugin, out = PLUGINS / f"{fault}.py", tmp_path / "runs"
    args = ["--config", write_config(tmp_path / "c.yaml", ["naive"]), "--out", out,
            "--no-progress"] if command == "run" else ["--device", "cpu"]
    started = time.monotonic()
    result = flashbench(command, *args, "--plugin", plugin, env=PROBE_ENV, timeout=60)
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, f"error: plugin {plugin} does not import: ",
                          IMPORT_FAULTS[fault])
    assert result.stdout == "" and not out.exists()
    assert time.monotonic() - started < 40  # the hang is bounded by the probe's 3 s


def test_a_malformed_probe_timeout_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHBENCH_PLUGIN_PROBE_TIMEOUT_S", "soon")
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "--config", str(write_config(tmp_path / "c.yaml",
                                                                          ["naive"])),
                                      "--plugin", str(PLUGINS / "fast.py"), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr == ("error: FLASHBENCH_PLUGIN_PROBE_TIMEOUT_S: 'soon' is not a "
                             "positive number of seconds\n")
    assert not out.exists()


def test_resume_probes_the_runs_plugins_first(tmp_path):
    plugin, out = tmp_path / "mine.py", tmp_path / "runs"
    plugin.write_text((PLUGINS / "fast.py").read_text())
    config = write_config(tmp_path / "c.yaml", ["fast-sdpa"], causal=(False, True))
    first = CliRunner().invoke(app, ["run", "--config", str(config), "--plugin", str(plugin),
                                     "--out", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    (run_dir,) = out.iterdir()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    plugin.write_text((PLUGINS / "import_segfault.py").read_text())  # broken since
    result = flashbench("run", "--resume", run_dir, "--out", out, "--no-progress")
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, f"error: --resume {run_dir}: plugin {plugin} does not "
                                         f"import: the import ended the process (killed by "
                                         f"SIGSEGV")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_plugin_that_prints_at_import_leaves_stdout_to_the_table(tmp_path):
    plugin, out = PLUGINS / "import_prints.py", tmp_path / "runs"
    config = write_config(tmp_path / "c.yaml", ["prints-identity"])
    result = flashbench("run", "--config", config, "--plugin", plugin, "--out", out,
                        "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "import_prints" not in result.stdout and "prints-identity" in result.stdout
    assert "hello from print()" in result.stderr and "hello from fd 1" in result.stderr
    (run_dir,) = out.iterdir()
    assert [r["status"] for r in rows_of(run_dir)] == ["ok"]
    listed = flashbench("list", "--device", "cpu", "--plugin", plugin)
    assert listed.returncode == 0, listed.stderr
    assert "import_prints" not in listed.stdout and "prints-identity" in listed.stdout
    assert "hello from fd 1" in listed.stderr


def test_the_workers_plugin_import_timeout_follows_the_case_timeout():
    from flashbench.sweep.executors import plugin_import_timeout_s

    assert plugin_import_timeout_s(5) == 15  # a floor: plugins that import torch take seconds
    assert plugin_import_timeout_s(100) == 100
    assert plugin_import_timeout_s(600) == 300  # the whole start-up's bound


def test_a_plugin_that_hangs_only_in_the_workers_import_is_bounded(tmp_path):
    out = tmp_path / "runs"
    config = write_config(tmp_path / "c.yaml", ["worker-faults-sdpa"])
    started = time.monotonic()
    result = flashbench("run", "--config", config, "--plugin", PLUGINS / "worker_faults.py",
                        "--case-timeout", "5", "--out", out, "--no-progress",
                        env={"FLASHBENCH_TEST_WORKER_IMPORT": "hang"}, timeout=150)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert_one_error_line(result.stderr, "error: the worker process did not start (its "
                                         "plugins were still importing after 15 s)")
    assert 15 <= took < 75, took  # not the start-up's 300 s
    assert not out.exists()


def test_a_worker_that_crashes_importing_a_plugin_says_why_in_one_line(tmp_path):
    out = tmp_path / "runs"
    config = write_config(tmp_path / "c.yaml", ["worker-faults-sdpa"])
    result = flashbench("run", "--config", config, "--plugin", PLUGINS / "worker_faults.py",
                        "--out", out, "--no-progress",
                        env={"FLASHBENCH_TEST_WORKER_IMPORT": "segfault"})
    assert result.returncode == 1, result.stderr
    assert_one_error_line(result.stderr, "error: the worker process did not start (killed by "
                                         "SIGSEGV while importing plugins): Fatal Python "
                                         "error: Segmentation fault")
    assert not out.exists()


def pids(path: Path) -> list[tuple[str, int, int]]:
    """(backend or "child", pid, Python threads running in that process) per line."""
    return [(name, int(pid), int(threads)) for name, pid, threads in
            (line.split() for line in path.read_text().splitlines())]


def _leftovers_sweep(tmp_path, backends, causal=(False,)):
    """A sweep of ``backends`` with tests/plugins/leftovers.py loaded: its rows, and the result."""
    config = write_config(tmp_path / "c.yaml", backends, causal=causal)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--plugin",
                                      str(PLUGINS / "leftovers.py"), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return rows_of(run_dir), result


def test_a_case_that_leaves_a_thread_or_a_process_running_gets_a_fresh_worker(tmp_path,
                                                                              monkeypatch):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FLASHBENCH_TEST_PIDFILE", str(pidfile))
    order = ["leak-process", "naive", "pid-sdpa", "leak-thread"]
    rows, result = _leftovers_sweep(tmp_path, order, causal=(False, True))
    # Each shape's four backends once; a leaking case is timed alone at once (its row comes
    # first) and the rest of its group goes to a fresh worker.
    for causal in (False, True):
        assert sorted(r["backend"] for r in rows if r["causal"] is causal) == sorted(order)
    assert all(r["status"] == "ok" for r in rows)
    for row in rows:
        if row["backend"] == "leak-thread":
            (warning,) = row["warnings"]
            assert warning.startswith("left 1 thread running (leak-thread-spin)"), warning
            assert warning.endswith("; worker replaced")
        elif row["backend"] == "leak-process":
            (warning,) = row["warnings"]
            assert warning.startswith("left 1 process running (pid "), warning
            assert "sleep" in warning and warning.endswith("; worker replaced")
        else:
            assert "warnings" not in row or not row["warnings"], row
    from flashbench.output.tables import results_frame

    leaked = next(i for i, r in enumerate(rows) if r.get("warnings"))
    assert results_frame(rows)["warnings"][leaked] == rows[leaked]["warnings"][0]  # CSV: text
    noted = pids(pidfile)
    assert "warning: leak-thread" in result.stderr  # said on the terminal too
    # No case ran in a process after the busy thread or the child started there: the worker
    # was replaced. (Not a timing bound: on a shared 2-core machine the naive case's median
    # swings 0.04 to 24 ms between fresh workers, more than a busy thread slows it.)
    leaked_in: set[int] = set()
    for name, pid, threads in noted:
        if name in ("leak-thread", "child"):
            leaked_in.add(pid if name == "leak-thread" else -1)
        elif name == "pid-sdpa":
            assert pid not in leaked_in and threads == 1
    after = noted[[name for name, _, _ in noted].index("leak-thread"):]
    assert {threads for name, _, threads in after if name in ("leak-process", "pid-sdpa")} == {1}
    children = [pid for name, pid, _ in noted if name == "child"]
    assert len(children) == 2
    wait_for(lambda: all(gone(pid) for pid in children), timeout_s=5)


def test_the_end_of_a_sweep_ends_what_the_worker_started(tmp_path, monkeypatch):
    pidfile = tmp_path / "daemon.pid"
    monkeypatch.setenv("FLASHBENCH_TEST_DAEMON_PIDFILE", str(pidfile))
    rows, _ = _leftovers_sweep(tmp_path, ["naive", "pid-sdpa"])
    # Started at import, before any case: no case is blamed for it, and no worker replaced.
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert not any(r.get("warnings") for r in rows)
    daemon = int(pidfile.read_text())
    wait_for(lambda: gone(daemon), timeout_s=5)


def test_a_killed_sweep_leaves_no_worker_log(tmp_path):
    tmp, out, pidfile = tmp_path / "tmp", tmp_path / "runs", tmp_path / "worker.pid"
    tmp.mkdir()
    config = write_config(tmp_path / "c.yaml", ["slow-sdpa"], seq_len=(16, 32),
                          causal=(False, True))
    proc = subprocess.Popen(
        [*FLASHBENCH, "run", "--config", str(config), "--plugin", str(PLUGINS / "slow.py"),
         "--out", str(out), "--no-progress"],
        env=os.environ | {"TMPDIR": str(tmp), "FLASHBENCH_TEST_PIDFILE": str(pidfile)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.exists() and any(count_lines(p / "results.jsonl") >= 1
                                              for p in out.iterdir()))
        assert list(tmp.glob("flashbench-worker-*.log")) == []  # no name even while it runs
        worker = int(pidfile.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    wait_for(lambda: gone(worker), timeout_s=10)  # it dies with its parent
    assert list(tmp.glob("flashbench-*")) == []
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "running"

"""Faults injected for real: plugins that segfault, abort, hang, raise or run out of memory; Ctrl-C and SIGTERM.

Every case here runs in a real worker process that really dies or hangs; the sweep must go
on, and lose no row. docs/reliability.md quotes these outcomes, and a test checks it does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from flashbench.core import costs
from flashbench.core.cases import Case
from flashbench.cli import app
from sweep_helpers import PLUGINS, count_lines, key, rows_of, wait_for, write_config

ROOT = Path(__file__).resolve().parents[1]

# Each fault is followed by a healthy backend, which must run in the replaced worker.
FAULT_SWEEP = {
    "fault-segfault": "crash", "naive": "ok",
    "fault-hang": "timeout", "fast-sdpa": "ok",
    "fault-raise": "error", "fault-oom": "oom", "fast-einsum": "ok",
}


def test_faulty_plugins_cost_one_row_each_and_the_sweep_goes_on(tmp_path):
    config = write_config(tmp_path / "faults.yaml", FAULT_SWEEP)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, [
        "run", "--config", str(config), "--plugin", str(PLUGINS / "faults.py"),
        "--plugin", str(PLUGINS / "fast.py"), "--case-timeout", "3", "--out", str(out),
        "--no-progress", "--strict"])
    assert result.exit_code == 1, result.output  # --strict: crashes, a timeout and an error
    (run_dir,) = out.iterdir()
    rows = rows_of(run_dir)
    # One row per case, none lost and none twice. (A row reaches the file when it is final:
    # the failures of a comparison group before its backends that are timed together.)
    assert sorted(r["backend"] for r in rows) == sorted(FAULT_SWEEP)
    assert {r["backend"]: r["status"] for r in rows} == FAULT_SWEEP
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["n_cases"] == len(rows) == 7
    assert meta["isolated"] is True
    assert meta["plugins"] == [str(PLUGINS / "faults.py"), str(PLUGINS / "fast.py")]

    by = {r["backend"]: r for r in rows}
    segv, hang = by["fault-segfault"], by["fault-hang"]
    assert segv["error"].startswith("worker killed by SIGSEGV; Fatal Python error: Segmentation")
    # The fault handler's traceback names the plugin's line that crashed.
    assert "Segmentation fault" in segv["stderr_tail"] and "faults.py" in segv["stderr_tail"]
    assert len(segv["stderr_tail"].splitlines()) <= 20
    assert hang["error"] == "exceeded the case timeout of 3 s; worker killed and replaced"
    assert by["fault-raise"]["error"] == \
        "RuntimeError: plugin kernel failed: invalid launch configuration"
    assert "Tried to allocate 64.00 GiB" in by["fault-oom"]["error"]
    for row in (segv, hang):  # a failed case is still described in full
        case = Case.from_dict(row)
        assert row["flops"] == costs.flops(case) > 0 and row["hbm_bytes"] > 0
        assert row["median_ms"] is None and row["samples_ms"] == [] and row["device"] == "cpu"
    for name, status in FAULT_SWEEP.items():
        if status == "ok":
            assert by[name]["rel_err"] < 1e-5 and by[name]["n_samples"] >= 3, name
    assert "fault-segfault crash" in result.stderr  # the failure notes name it
    assert_reliability_doc_agrees(rows)


def assert_reliability_doc_agrees(rows: list[dict]) -> None:
    """docs/reliability.md's fault table states what this sweep does."""
    doc = (ROOT / "docs" / "reliability.md").read_text()
    documented = dict(re.findall(r"^\| `(fault-[a-z]+)` \|[^|]*\| `([a-z]+)` \|", doc, re.M))
    observed = {r["backend"]: r["status"] for r in rows if r["backend"].startswith("fault-")}
    assert documented == observed


PARENT_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "'parent imported torch: %s\\n' % ('torch' in sys.modules)))\n"
    "from flashbench.cli import app\n"
    "app()\n"
)


def entry_point_site(tmp_path: Path) -> Path:
    """An installed-package look-alike whose flashbench.backends entry point is the slow plugin."""
    site = tmp_path / "site"
    info = site / "flashbench_test_slow-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flashbench-test-slow\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[flashbench.backends]\nslow = flashbench_test_slow\n")
    (site / "flashbench_test_slow.py").write_text((PLUGINS / "slow.py").read_text())
    return site


def test_ctrl_c_keeps_every_row_and_resume_finishes_the_run(tmp_path):
    """A real `flashbench run` process; its plugin comes from the entry-point group."""
    seqs, backends = (16, 32), ("naive", "slow-sdpa")
    config = write_config(tmp_path / "slow.yaml", backends, seq_len=seqs, causal=(False, True))
    out = tmp_path / "runs"
    env = os.environ | {"PYTHONPATH": str(entry_point_site(tmp_path))}
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT_PROBE, "run", "--config", str(config), "--out", str(out),
         "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and any(count_lines(p / "results.jsonl") >= 2
                                          for p in out.iterdir()))
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (run_dir,) = out.iterdir()
    before = (run_dir / "results.jsonl").read_text().splitlines()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and 2 <= len(before) < 8
    assert "stopping after the current shape's backends" in stderr
    assert f"flashbench run --resume {run_dir}" in stderr
    assert "parent imported torch: False" in stderr  # the sweep's parent never loads CUDA
    assert "naive" in stdout  # the table of what was measured

    done = subprocess.run(
        [sys.executable, "-m", "flashbench", "run", "--resume", run_dir.name, "--out", str(out),
         "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = rows_of(run_dir)
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert lines[:len(before)] == before  # earlier rows untouched
    keys = [key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 8  # no duplicate
    # The same set of cases as an uninterrupted run: the whole grid.
    assert {(k[0], k[5], k[9]) for k in keys} == {
        (b, s, c) for b in backends for s in seqs for c in (False, True)}
    assert all(r["status"] == "ok" for r in rows)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and len(meta["resumed"]) == 1
    assert meta["resumed"][0]["command"][:3] == ["flashbench", "run", "--resume"]


def test_sigterm_abandons_a_hung_case_at_once_and_kills_its_worker(tmp_path):
    config = write_config(tmp_path / "hang.yaml", ("naive", "fault-hang", "fault-raise"))
    out, pidfile = tmp_path / "runs", tmp_path / "worker.pid"
    env = os.environ | {"FLASHBENCH_TEST_PIDFILE": str(pidfile)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashbench", "run", "--config", str(config), "--plugin",
         str(PLUGINS / "faults.py"), "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pidfile.exists() and pidfile.read_text())
    worker = int(pidfile.read_text())
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - sent < 5  # not the 600 s case timeout
    (run_dir,) = out.iterdir()
    rows = rows_of(run_dir)
    # The abandoned case has no row, nor has naive: it was prepared, to be timed alternately
    # with the others, but not yet timed. A resume measures both.
    assert rows == []
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "interrupted"
    assert "abandoning the current case" in stderr
    wait_for(lambda: not Path(f"/proc/{worker}").exists(), timeout_s=5)

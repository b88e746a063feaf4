"""Runs that survive what happens to them: a last row without its newline, a full disk, a deleted
results file, SIGHUP, and a second sweep on a busy device. Real `flashbench` processes, on CPU."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import PLUGINS, count_lines, key, rows_of, wait_for, write_config

FLASHBENCH = str(Path(sys.executable).parent / "flashbench")
# The CLI with the disk failing (ENOSPC) from the Nth fsync on: rows and meta.json alike, as a
# full disk fails every write once it is full.
FULL_DISK = """
import errno, os, sys
import flashbench.results.store as store
limit, calls = int(os.environ["FULL_AFTER"]), [0]
real = os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] > limit:
        raise OSError(errno.ENOSPC, "No space left on device")
    real(fd)
store.os.fsync = fsync
from flashbench.cli import app
sys.argv = ["flashbench", *sys.argv[1:]]
app()
"""


def _run(*args, env=None, **kw):
    return subprocess.run([FLASHBENCH, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, **kw)


def _sweep(tmp_path, backends=("naive", "sdpa"), seqs=(16, 24)):
    return write_config(tmp_path / "sweep.yaml", backends, seq_len=seqs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of four cases, measured once for the tests that damage a copy of it."""
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "runs"
    assert _run("run", "--config", _sweep(tmp), "--out", out, "--no-progress").returncode == 0
    (run,) = out.iterdir()
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


def test_resume_keeps_a_finished_last_row_whose_newline_is_missing(finished, tmp_path):
    run = _copy(finished, tmp_path)
    results = run / "results.jsonl"
    complete = results.read_text()
    results.write_text(complete[:-1])  # killed between the row and its newline
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps(meta | {"status": "interrupted"}))
    done = _run("run", "--resume", run, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "last row had no newline; kept" in done.stderr
    assert results.read_text() == complete  # the row kept, the newline back, nothing measured
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    assert "nothing to resume" in done.stderr


def test_resume_cuts_a_torn_last_line_and_measures_its_case_again(finished, tmp_path):
    run = _copy(finished, tmp_path)
    results = run / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    done = _run("run", "--resume", run, "--no-progress")
    assert done.returncode == 0 and "cut a torn last line" in done.stderr
    rows = rows_of(run)
    assert len(rows) == 4 and len({key(r) for r in rows}) == 4  # each case exactly once


def test_a_full_disk_mid_run_ends_it_with_one_line_and_a_resume_finishes_it(tmp_path):
    out = tmp_path / "runs"
    # Three fsyncs succeed: meta.json, then two rows; the third row meets a full disk (its line
    # may have reached the file before its fsync failed: kept or not, it is never doubled).
    env = os.environ | {"FULL_AFTER": "3"}
    full = subprocess.run([sys.executable, "-c", FULL_DISK, "run", "--config", _sweep(tmp_path),
                           "--out", str(out), "--no-progress"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert full.returncode == 1, full.stderr  # a sweep that could not go on
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert "Traceback" not in full.stderr and "flashbench run --resume" in errors[0]
    (run,) = out.iterdir()
    assert len(rows_of(run)) in (2, 3)  # the rows written before the disk filled are kept
    assert not list(run.glob(".*.tmp"))  # no temporary meta file left behind
    assert json.loads((run / "meta.json").read_text())["status"] == "running"  # could not say more
    done = _run("run", "--resume", run, "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = rows_of(run)
    assert len(rows) == 4 and len({key(r) for r in rows}) == 4
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"


def test_a_disk_full_before_the_first_case_is_bad_input_and_leaves_no_run(tmp_path):
    out = tmp_path / "runs"
    full = subprocess.run([sys.executable, "-c", FULL_DISK, "run", "--config", _sweep(tmp_path),
                           "--out", str(out), "--no-progress"], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"FULL_AFTER": "0"})
    assert full.returncode == 2, full.stderr
    assert full.stderr.count("\n") == 1 and "nothing was measured" in full.stderr
    assert not any(out.iterdir())


def _slow_sweep_under_way(tmp_path, out):
    """A real `flashbench run` of six slow cases (0.1 s a call), once its first row is on disk."""
    config = write_config(tmp_path / "slow.yaml", ("naive", "slow-sdpa"), seq_len=(16, 24, 32))
    proc = subprocess.Popen([FLASHBENCH, "run", "--config", config, "--plugin",
                             PLUGINS / "slow.py", "--out", out, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and any(count_lines(p / "results.jsonl") >= 1
                                          for p in out.iterdir()))
    return proc


def test_a_deleted_results_file_fails_the_run(tmp_path):
    out = tmp_path / "runs"
    proc = _slow_sweep_under_way(tmp_path, out)
    (run,) = out.iterdir()
    (run / "results.jsonl").unlink()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "was deleted" in stderr and "Traceback" not in stderr
    assert json.loads((run / "meta.json").read_text())["status"] == "failed"


def test_sighup_ends_a_sweep_as_sigterm_does(tmp_path):
    out = tmp_path / "runs"
    proc = _slow_sweep_under_way(tmp_path, out)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (run,) = out.iterdir()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    assert not list(run.glob(".lock"))  # the run's lock is the folder's own flock: no file
    done = _run("run", "--resume", run, "--plugin", PLUGINS / "slow.py", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert len({key(r) for r in rows_of(run)}) == len(rows_of(run)) == 6


@pytest.fixture
def busy_cpu(tmp_path):
    """The CPU's device lock, held as another sweep would hold it; released by calling it."""
    import platform

    cache = Path(os.environ["FLASHBENCH_CACHE_DIR"])
    (cache / "locks").mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / "locks" / f"cpu-{platform.node()}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"command": "flashbench run --config other", "pid": 4242}).encode(), 0)
    yield lambda: os.close(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def test_a_busy_device_is_refused_with_no_wait_naming_the_other_sweep(tmp_path, busy_cpu):
    out = tmp_path / "runs"
    refused = _run("run", "--config", _sweep(tmp_path), "--out", out, "--no-wait")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "is in use by `flashbench run --config other` (pid 4242)" in refused.stderr
    assert not out.exists() or not any(out.iterdir())
    shared = _run("run", "--config", _sweep(tmp_path), "--out", out, "--allow-shared-device",
                  "--no-progress")
    assert shared.returncode == 0 and len(rows_of(next(out.iterdir()))) == 4


def test_a_second_sweep_waits_for_the_device_then_runs(tmp_path, busy_cpu):
    out = tmp_path / "runs"
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen([FLASHBENCH, "run", "--config", _sweep(tmp_path), "--out", out,
                                 "--no-progress"], stdout=subprocess.DEVNULL, stderr=err,
                                text=True)
    wait_for(lambda: "waiting for" in log.read_text())  # its worker started and met the lock
    time.sleep(0.5)
    assert proc.poll() is None and not (out.exists() and any(out.iterdir()))
    busy_cpu()
    proc.communicate(timeout=120)
    stderr = log.read_text()
    assert proc.returncode == 0, stderr
    assert "waiting for the CPU of" in stderr and "--no-wait refuses instead" in stderr
    assert len(rows_of(next(out.iterdir()))) == 4


@pytest.fixture
def tiny_disk(tmp_path):
    """A 16 KiB tmpfs: the real ENOSPC (needs root; skipped where mount is refused)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_keeps_the_rows_and_a_resume_elsewhere_finishes(tmp_path, tiny_disk):
    config = write_config(tmp_path / "many.yaml", ("naive", "sdpa"),
                          seq_len=tuple(range(16, 16 + 8 * 10, 8)))
    full = _run("run", "--config", config, "--out", tiny_disk / "runs", "--no-progress")
    assert full.returncode in (1, 2), full.stderr  # 2 only when not even meta.json fitted
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], full.stderr
    assert "Traceback" not in full.stderr
    if full.returncode == 2:
        return
    (run,) = (tiny_disk / "runs").iterdir()
    assert not list(run.glob(".*.tmp"))
    kept = (run / "results.jsonl").read_text()
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-r", str(run), str(moved)], check=True)  # room found elsewhere
    done = _run("run", "--resume", moved, "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = rows_of(moved)
    assert len(rows) == 20 and len({key(r) for r in rows}) == 20
    assert (moved / "results.jsonl").read_text().startswith(kept.rpartition("\n")[0])

"""--devices: parsing, dealing groups to several workers (fakes, then real CPU workers), resume.

The end-to-end tests run real worker processes on the CPU (``--devices cpu,cpu``): the same
dealing, threads and appends as on a node of GPUs.
"""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from flashbench.core.cases import CASE_FIELDS, Case, Mode
from flashbench.cli import app
from flashbench.sweep.devices import (Device, check_same_environment, parse_devices,
                                row_device_fields)
from flashbench.sweep.parallel import start_all
from flashbench.core.errors import UserError
from flashbench.sweep.interrupts import Interrupt
from flashbench.sweep.executors import WorkerStartError
from flashbench.sweep.parallel import measure_in_parallel
from sweep_helpers import PLUGINS, count_lines, key, rows_of, wait_for, write_config



def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- parsing ---------------------------------------------------------------------------------

def four_gpus() -> int:
    return 4


@pytest.mark.parametrize("text, expected", [
    ("all", [("cuda", 0), ("cuda", 1), ("cuda", 2), ("cuda", 3)]),
    ("0,2,3", [("cuda", 0), ("cuda", 2), ("cuda", 3)]),
    (" 3 , 1 ", [("cuda", 3), ("cuda", 1)]),
    ("cpu", [("cpu", 0)]),
    ("cpu,cpu,cpu", [("cpu", 0), ("cpu", 1), ("cpu", 2)]),
])
def test_parse_devices(text, expected):
    assert [(d.kind, d.index) for d in parse_devices(text, gpu_count=four_gpus)] == expected


def test_a_list_is_the_library_form():
    assert parse_devices(["cpu", "cpu"]) == [Device("cpu", 0), Device("cpu", 1)]
    assert [d.name for d in parse_devices(["1", "0"], gpu_count=four_gpus)] == ["cuda:1", "cuda:0"]


@pytest.mark.parametrize("text, config_device, count, message", [
    ("0,4", "auto", 4, "--devices 0,4: GPU 4 is not present (visible GPUs: 0, 1, 2, 3)"),
    ("0", "auto", 0, "--devices 0: GPU 0 is not present (no GPU is visible here)"),
    ("all", "auto", 0, "--devices all: no GPU is visible here (CPU workers: --devices cpu,cpu)"),
    ("1,1", "auto", 4, "--devices 1,1: GPU 1 is given twice"),
    ("0,cpu", "auto", 4, "--devices 0,cpu: mixes cpu and GPUs"),
    ("gpu0", "auto", 4, "--devices gpu0: 'gpu0' is not a GPU index; give 'all'"),
    ("-1", "auto", 4, "'-1' is not a GPU index"),
    (",", "auto", 4, "--devices: give 'all', GPU indices such as 0,2,3, or cpu entries"),
    ("0,1", "cpu", 4, "--devices 0,1: GPUs, but the sweep's device is cpu"),
    ("cpu,cpu", "cuda", 4, "--devices cpu,cpu: CPU workers, but the sweep's device is cuda"),
])
def test_bad_devices_are_one_line_naming_the_problem(text, config_device, count, message):
    with pytest.raises(UserError) as e:
        parse_devices(text, config_device=config_device, gpu_count=lambda: count)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_each_gpu_worker_sees_only_its_gpu():
    assert Device("cuda", 2).worker_env({}) == {"CUDA_VISIBLE_DEVICES": "2"}
    # This process's GPU 1 is the second entry of its own CUDA_VISIBLE_DEVICES.
    assert Device("cuda", 1).worker_env({"CUDA_VISIBLE_DEVICES": "4, GPU-abc,6"}) == \
        {"CUDA_VISIBLE_DEVICES": "GPU-abc"}
    assert Device("cpu", 1).worker_env({"CUDA_VISIBLE_DEVICES": "0"}) == {}


def test_rows_record_the_device_in_this_process_numbering():
    env = {"gpu_uuid": "GPU-1234"}
    assert row_device_fields(Device("cuda", 3), "cuda:0", env) == \
        {"device_index": 3, "gpu_uuid": "GPU-1234", "device": "cuda:3"}
    assert row_device_fields(Device("cpu", 1), "cpu", {}) == {"device_index": 1, "gpu_uuid": None}
    # Without --devices: the one worker's own device.
    assert row_device_fields(None, "cuda:1", env) == {"device_index": 1, "gpu_uuid": "GPU-1234"}
    assert row_device_fields(None, "cpu", {}) == {"device_index": 0, "gpu_uuid": None}


def test_devices_of_one_run_must_match():
    gpus = [Device("cuda", 0), Device("cuda", 1)]
    same = {"device": "cuda:0", "gpu_name": "H100", "driver": "550", "torch": "2.5"}
    check_same_environment(gpus, [same, same | {"gpu_uuid": "GPU-other"}])  # another card: fine
    with pytest.raises(UserError) as e:
        check_same_environment(gpus, [same, same | {"gpu_name": "A100"}])
    assert "gpu_name 'H100' on cuda:0, 'A100' on cuda:1" in str(e.value)


# --- dealing, with fake workers ----------------------------------------------------------------

def shape_cases(n_shapes: int, backends=("a", "b", "c")) -> list[list[Case]]:
    """Groups of decreasing size, so that longest-first is the given order."""
    return [[Case(b, Mode.FWD, 1, 1, 1, 64 * (n_shapes - s), 64 * (n_shapes - s), 16, "fp32",
                  False) for b in backends] for s in range(n_shapes)]


class FakeExecutor:
    """Takes ``seconds`` per case; can refuse to restart after ``fail_after`` cases."""

    def __init__(self, seconds: float, fail_after: int | None = None):
        self.seconds, self.fail_after = seconds, fail_after
        self.device, self.environment = "cpu", {}
        self.measured: list[Case] = []
        self.threads: set[str] = set()

    def measure(self, case: Case, timeout_s: float) -> dict | None:
        if self.fail_after is not None and len(self.measured) >= self.fail_after:
            raise WorkerStartError("the worker process did not start (device lost)")
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        self.measured.append(case)
        return case.to_dict() | {"status": "ok"}

    def measure_group(self, cases, timeout_s):
        for case in cases:
            yield ("start", case)
            row = self.measure(case, timeout_s)
            yield ("row", row) if row is not None else ("abandoned", None)

    def close(self) -> None:
        pass


def deal(executors, groups, interrupt=None, record=None):
    rows: list[tuple[int, dict]] = []
    outcome = measure_in_parallel(executors, [f"w{i}" for i in range(len(executors))], groups,
                                  interrupt or Interrupt(), 60.0,
                                  record or (lambda w, row: rows.append((w, row))))
    return outcome, rows


def test_every_case_once_groups_on_one_worker_and_the_fast_worker_takes_more():
    groups = shape_cases(12)
    fast, slow = FakeExecutor(0.002), FakeExecutor(0.03)
    outcome, rows = deal([fast, slow], groups)
    assert outcome.completed and not outcome.retired
    keys = [key(r) for _, r in rows]
    assert len(keys) == len(set(keys)) == 36
    assert set(keys) == {tuple(c.to_dict()[f] for f in CASE_FIELDS) for g in groups for c in g}
    worker_of = {}
    for w, r in rows:
        assert worker_of.setdefault((r["seq_len"],), w) == w  # a shape never changes worker
    # The first groups go one to each worker, in order: the longest to the first.
    assert fast.measured[0] == groups[0][0] and slow.measured[0] == groups[1][0]
    # Dynamic: the worker 15x faster takes most groups, and the two finish together.
    assert len(fast.measured) >= 2 * len(slow.measured)
    assert len(fast.threads) == len(slow.threads) == 1 and fast.threads != slow.threads


def test_a_worker_that_cannot_restart_hands_its_group_to_the_others():
    groups = shape_cases(4)
    dying, healthy = FakeExecutor(0.01, fail_after=1), FakeExecutor(0.01)
    outcome, rows = deal([dying, healthy], groups)
    assert outcome.completed
    assert outcome.retired == ["w0: the worker process did not start (device lost)"]
    assert len(dying.measured) == 1 and len(healthy.measured) == 11  # the rest of group 0 too
    assert len({key(r) for _, r in rows}) == 12


def test_when_every_worker_is_gone_the_sweep_fails_with_the_rows_so_far():
    outcome_rows: list = []
    with pytest.raises(WorkerStartError) as e:
        deal([FakeExecutor(0.001, fail_after=2), FakeExecutor(0.001, fail_after=1)],
             shape_cases(3), record=lambda w, row: outcome_rows.append(row))
    assert "w0:" in str(e.value) and "w1:" in str(e.value)
    assert len(outcome_rows) == 3


def test_stop_ends_every_worker_after_its_current_group():
    interrupt = Interrupt()
    rows: list = []

    def record(worker, row):
        rows.append(row)
        if len(rows) == 3:
            interrupt.stop = True  # as the first Ctrl-C does

    outcome, _ = deal([FakeExecutor(0.01), FakeExecutor(0.01)], shape_cases(6), interrupt, record)
    assert not outcome.completed
    # Each worker finishes the comparison group it had started (its backends are timed
    # together), and takes no other: two groups of three at most.
    assert len(rows) in (3, 6)


def test_a_failing_append_stops_the_sweep_and_is_raised():
    def record(worker, row):
        raise OSError(28, "No space left on device")

    a, b = FakeExecutor(0.01), FakeExecutor(0.01)
    with pytest.raises(OSError):
        deal([a, b], shape_cases(6), record=record)
    assert len(a.measured) == len(b.measured) == 1


def test_start_all_waits_for_every_worker_and_closes_all_on_failure():
    class Starting:
        closed = 0

        def __init__(self, device, fail=False):
            self.device, self.fail, self.thread = device, fail, threading.current_thread()

        def wait_ready(self):
            time.sleep(0.2)
            if self.fail:
                raise UserError("bad plugin")

        def close(self):
            Starting.closed += 1

    devices = [Device("cpu", 0), Device("cpu", 1), Device("cpu", 2)]
    started = time.monotonic()
    ready = start_all(devices, Starting)
    assert time.monotonic() - started < 0.45  # waited at once, not one after another (0.6 s)
    assert all(s.thread is threading.main_thread() for s in ready)  # spawned here
    with pytest.raises(UserError):
        start_all(devices, lambda d: Starting(d, fail=d.index == 1))
    assert Starting.closed == 3


# --- real CPU workers ------------------------------------------------------------------------

def test_two_cpu_workers_measure_the_same_cases_as_one(tmp_path):
    config = write_config(tmp_path / "two.yaml", ("naive", "fast-einsum", "fast-sdpa"),
                          seq_len=(16, 32), causal=(False, True))
    one = invoke("run", "--config", config, "--plugin", PLUGINS / "fast.py", "--out",
                 tmp_path / "one", "--no-progress")
    assert one.exit_code == 0, one.output
    two = invoke("run", "--config", config, "--plugin", PLUGINS / "fast.py", "--devices",
                 "cpu,cpu", "--out", tmp_path / "two", "--no-progress")
    assert two.exit_code == 0, two.output
    (single,), (multi,) = (tmp_path / "one").iterdir(), (tmp_path / "two").iterdir()
    rows = rows_of(multi)
    keys = [key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 12
    assert set(keys) == {key(r) for r in rows_of(single)}
    assert all(r["status"] == "ok" and r["rel_err"] < 1e-5 for r in rows)
    by_shape: dict[tuple, set] = {}
    for r in rows:
        by_shape.setdefault(key(r)[1:], set()).add(r["device_index"])
    assert all(len(workers) == 1 for workers in by_shape.values())  # a shape on one worker
    assert {r["device_index"] for r in rows} == {0, 1}  # both worked
    assert all(r["gpu_uuid"] is None and r["device"] == "cpu" for r in rows)
    # Single-worker runs record their device too.
    assert {(r["device_index"], r["gpu_uuid"]) for r in rows_of(single)} == {(0, None)}
    meta = json.loads((multi / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["n_cases"] == 12
    assert [d["device"] for d in meta["devices"]] == ["cpu", "cpu"]
    assert meta["environment"]["device"] == "cpu"


def test_devices_bad_input_exits_2_and_leaves_nothing(tmp_path):
    out = tmp_path / "runs"
    for args, message in [
        (["--devices", "cpu,cpu", "--no-isolate"], "cannot be combined with --no-isolate"),
        (["--devices", "0"], "GPU 0 is not present"),
        (["--devices", "all"], "--devices all: no GPU is visible here"),
        (["--devices", "0,cpu"], "mixes cpu and GPUs"),
    ]:
        result = invoke("run", "--config", "cpu", "--backends", "naive", *args, "--out", out,
                        "--no-progress")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1
        assert not out.exists()


def test_ctrl_c_then_resume_of_a_two_worker_run(tmp_path):
    # Eight comparison groups: when the first is written, six are still to be dealt (each
    # worker finishes the group it is in after the Ctrl-C).
    config = write_config(tmp_path / "slow.yaml", ("naive", "slow-sdpa"),
                          seq_len=(16, 32, 48, 64), causal=(False, True))
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashbench", "run", "--config", str(config), "--plugin",
         str(PLUGINS / "slow.py"), "--devices", "cpu,cpu", "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and any(count_lines(p / "results.jsonl") >= 2
                                          for p in out.iterdir()))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (run_dir,) = out.iterdir()
    before = (run_dir / "results.jsonl").read_text().splitlines()
    assert 2 <= len(before) < 16
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "interrupted"

    resumed = invoke("run", "--resume", run_dir, "--no-progress")  # the run's own devices
    assert resumed.exit_code == 0, resumed.output
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert lines[:len(before)] == before
    keys = [key(r) for r in rows_of(run_dir)]
    assert len(keys) == len(set(keys)) == 16
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert [d["device"] for d in meta["resumed"][0]["devices"]] == ["cpu", "cpu"]
    assert {r["device_index"] for r in rows_of(run_dir)[len(before):]} <= {0, 1}

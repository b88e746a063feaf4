"""CPU runs: the torch threads they time with, the machine's load before and after, the warning
when it was busy, and what check makes of two CPU runs with different threads."""

import json

import pytest
import torch
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core.environment import COMPARABLE, SAME_MACHINE, environment_differences
from flashbench.core.load import busy_note, sweep_threads
from flashbench.sweep import runner as sweep_runner
from sweep_helpers import PLUGINS, rows_of, write_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _meta(before, after, cpus=4, threads=1, device="cpu", devices=None):
    meta = {"environment": {"device": device, "cpu_count": cpus, "torch_threads": threads},
            "load_before": before, "load_after": after}
    if devices:
        meta["devices"] = [{"device": device}] * devices
    return meta


def test_busy_when_other_load_wants_the_cpus_the_sweep_uses():
    idle = [0.3, 0.2, 0.1]
    assert busy_note(_meta(idle, [1.1, 0.4, 0.2])) is None  # the sweep's own thread after it
    assert busy_note(_meta([3.4, 3, 3], idle)) is None  # 3 others on the 3 spare CPUs: fine
    note = busy_note(_meta([3.6, 3, 3], idle))  # 3.6 > 3 spare + 0.5: the sweep's CPU shared
    assert note == ("warning: timings may be unreliable: the machine was busy (1-minute load "
                    "average 3.6 before the sweep, 0.3 after it, on 4 CPUs of which the "
                    "sweep's threads take 1)")
    # After the sweep its own threads are taken off: 4 threads on 4 CPUs is the sweep alone.
    assert busy_note(_meta(idle, [4.4, 2, 1], threads=4)) is None
    assert "4.6 after it" in busy_note(_meta(idle, [4.6, 2, 1], threads=4))
    assert busy_note(_meta(None, None)) is None  # no load averages on this system
    # Two CPU workers of 2 threads each take all 4 CPUs; a GPU worker takes one.
    assert sweep_threads(_meta(idle, idle, threads=2, devices=2)) == 4
    assert sweep_threads(_meta(idle, idle, threads=8, device="cuda:0", devices=3)) == 3


def _cpu_run(tmp_path, *args, config=None):
    cfg = config or write_config(tmp_path / "tiny.yaml", ["naive"])
    return invoke("run", "--config", cfg, "--no-progress", "--out", tmp_path / "runs", *args)


def test_a_run_records_its_threads_and_the_load_around_it(tmp_path):
    threads_before = torch.get_num_threads()
    result = _cpu_run(tmp_path, "--no-isolate", "--threads", "2")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["config"]["timing"]["threads"] == 2
    assert meta["environment"]["torch_threads"] == 2 and meta["environment"]["cpu_count"] >= 1
    for key in ("load_before", "load_after"):
        assert len(meta[key]) == 3 and all(x >= 0 for x in meta[key])
    assert torch.get_num_threads() == threads_before  # this process's threads put back
    report = invoke("report", run_dir, "--format", "markdown")
    assert "Load average before (1, 5, 15 min): " in report.stdout
    page = invoke("report", run_dir, "--format", "html")
    assert "load average after (1, 5, 15 min)" in page.stdout


def test_a_busy_machine_gets_one_warning_line_with_its_figures(tmp_path, monkeypatch):
    loads = iter([[41.0, 30.5, 20.25], [42.5, 31.0, 20.5]])
    monkeypatch.setattr(sweep_runner, "load_average", lambda: next(loads))
    result = _cpu_run(tmp_path, "--no-isolate")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if "timings may be unreliable" in ln]
    assert len(warnings) == 1
    assert "41 before the sweep, 42.5 after it" in warnings[0] and "threads take 1)" in warnings[0]
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["load_before"] == [41.0, 30.5, 20.25] and meta["load_after"] == [42.5, 31.0, 20.5]
    report = invoke("report", run_dir, "--format", "markdown").stdout
    assert "busy: timings may be unreliable" in report
    assert "busy</th><td>timings may be unreliable" in invoke("report", run_dir, "--format",
                                                              "html").stdout


def test_threads_and_fp32_precision_travel_to_the_worker_process(tmp_path):
    # A test plugin reports from inside the worker: torch's threads while a case runs, and
    # the constexpr our forward kernel's launch was given.
    cfg = write_config(tmp_path / "tiny.yaml", ["threads", "triton"])
    cfg.write_text(cfg.read_text().replace("head_dim: 16", "head_dim: 32"))
    result = _cpu_run(tmp_path, "--threads", "2", "--fp32-precision", "ieee", "--plugin",
                      PLUGINS / "reports.py", config=cfg)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = {r["backend"]: r for r in rows_of(run_dir)}
    assert "torch threads 2, inter-op 2" in rows["threads"]["error"]
    assert "DOT_PRECISION=ieee" in rows["triton"]["error"]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["environment"]["torch_threads"] == 2
    assert meta["environment"]["torch_interop_threads"] == 2


def test_cpu_runs_with_other_threads_are_not_comparable(tmp_path):
    cpu1 = {"device": "cpu", "torch": "2.13.0", "torch_threads": 1}
    assert environment_differences(cpu1, cpu1 | {"torch_threads": 2}, COMPARABLE) \
        == [("torch_threads", 1, 2)]
    assert environment_differences(cpu1, cpu1 | {"torch_threads": 2}, SAME_MACHINE)
    gpu = {"device": "cuda:0", "gpu_name": "H200", "torch_threads": 1}
    assert environment_differences(gpu, gpu | {"torch_threads": 16}, COMPARABLE) == []
    # check, end to end: a baseline measured with 1 thread, a current run with 2.
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    base = _cpu_run(tmp_path / "a", "--no-isolate")
    current = _cpu_run(tmp_path / "b", "--no-isolate", "--threads", "2")
    assert base.exit_code == current.exit_code == 0
    runs = [next((tmp_path / side / "runs").iterdir()) for side in "ab"]
    refused = invoke("check", *runs)
    assert refused.exit_code == 2 and "torch_threads: 1 vs 2" in refused.stderr
    assert invoke("check", *runs, "--allow-env-mismatch").exit_code in (0, 1)


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "Invalid value for '--threads'"),
    (["--threads", "x"], "Invalid value for '--threads'"),
    (["--fp32-precision", "tf32x3"], "fp32_precision: 'tf32x3' is not allowed"),
])
def test_bad_threads_and_precision_are_one_line_and_exit_2(tmp_path, args, message):
    result = _cpu_run(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_a_config_asks_for_torchs_default_threads_with_null(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", ["naive"])
    cfg.write_text(cfg.read_text().replace("timing: {", "timing: {threads: null, "))
    result = _cpu_run(tmp_path, "--no-isolate", config=cfg)
    assert result.exit_code == 0, result.output
    meta = json.loads((next((tmp_path / "runs").iterdir()) / "meta.json").read_text())
    assert meta["config"]["timing"]["threads"] is None
    assert meta["environment"]["torch_threads"] == torch.get_num_threads()

"""The command line through Typer's test runner: a real sweep on CPU, and bad input exiting 2."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core.rows import RESULT_FIELDS
from flashbench.core.cases import CASE_FIELDS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_run_writes_rows_meta_and_prints_the_table(tmp_path):
    result = invoke("run", "--config", "cpu", "--backends", "naive,sdpa-math,sdpa-cudnn",
                    "--seq-len", "24", "--kv-len", "40", "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2  # backends x causal
    for row in rows:
        assert set(CASE_FIELDS) | set(RESULT_FIELDS) <= set(row)
        assert (row["seq_len"], row["kv_len"], row["heads"], row["kv_heads"]) == (24, 40, 4, 2)
    by_status = {(r["backend"], r["status"]) for r in rows}
    assert by_status == {("naive", "ok"), ("sdpa-math", "ok"), ("sdpa-cudnn", "unsupported")}
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["rel_err"] < 1e-6 and r["n_samples"] >= 3 for r in ok)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["n_cases"] == 6
    assert meta["config"]["seq_len"] == [24] and meta["environment"]["torch"]
    assert meta["started_at"] and meta["finished_at"]
    assert "naive" in result.stdout and "sdpa-math" in result.stdout
    assert f"results: {run_dir}" in result.stderr


@pytest.mark.parametrize("flag, recorded", [("2%", 0.02), ("0.1", 0.1), ("off", None)])
def test_detect_flag_is_read_as_checks_threshold_and_recorded(tmp_path, flag, recorded):
    result = invoke("run", "--config", "cpu", "--backends", "naive", "--seq-len", "16",
                    "--no-causal", "--budget-ms", "5", "--detect", flag, "--no-isolate",
                    "--no-progress", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "meta.json").read_text())["config"]["timing"]["detect"] \
        == recorded


@pytest.mark.parametrize("args, message", [
    (["--backends", "naive,flash3"], "unknown backend 'flash3'"),
    (["--seq-len", "1k"], "--seq-len: '1k' is not an integer"),
    (["--seq-len", "0"], "seq_len: must be between 1"),
    (["--heads", "12", "--kv-heads", "8"], "must be a multiple of kv_heads"),
    (["--dtype", "int8"], "dtype: 'int8' is not allowed"),
    (["--config", "nosuch"], "unknown preset 'nosuch'"),
    (["--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["--device", "cuda"], "no CUDA device is visible"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, args, message):
    out = tmp_path / "results"
    result = invoke("run", "--config", "cpu", *args, "--out", out, "--no-progress")
    if "--config" in args:  # the later --config wins
        result = invoke("run", *args, "--out", out, "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--budget-ms", "abc"], "run: Invalid value for '--budget-ms'"),
    (["--case-timeout", "soon"], "run: Invalid value for '--case-timeout'"),
    (["--sequence", "4"], "run: No such option: --sequence"),
    (["--case-timeout", "0"], "case_timeout_s: Input should be greater than 0"),
    (["--case-timeout", "1e9"], "case_timeout_s: Input should be less than or equal to 86400"),
    (["--detect", "fast"], "--detect: 'fast' is not a percentage such as 5%"),
    (["--detect", "0"], "--detect: '0' must be above 0% and below 1000%"),
    (["--detect", "2000%"], "--detect: '2000%' must be above 0% and below 1000%"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "results"
    result = invoke("run", "--config", "cpu", *args, "--out", out, "--no-progress")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_head_dim_the_triton_kernel_cannot_do_is_an_unsupported_row(tmp_path):
    result = invoke("run", "--config", "cpu", "--backends", "triton,naive", "--head-dim", "48",
                    "--seq-len", "16", "--no-causal", "--out", tmp_path, "--no-progress",
                    "--no-isolate")
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    rows = {r["backend"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text()
                                         .splitlines())}
    assert rows["triton"]["status"] == "unsupported"
    assert rows["triton"]["error"] == "head_dim 48 is not one of (32, 64, 96, 128, 256)"
    assert rows["naive"]["status"] == "ok"


def test_missing_or_empty_runs_are_bad_input_for_report_and_compare(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "meta.json").write_text("{}")
    (empty / "results.jsonl").write_text("")
    meta_only = tmp_path / "meta-only"
    meta_only.mkdir()
    (meta_only / "meta.json").write_text("{}")
    for command in ("report", "compare"):
        for run, message in [(tmp_path / "nope", "no such run or results file"),
                             (empty, "has no results"),
                             (meta_only, "no results file at")]:
            result = invoke(command, run)
            assert result.exit_code == 2, (command, run, result.output)
            assert message in result.stderr and result.stderr.count("\n") == 1


def test_unwritable_results_path_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("run", "--config", "cpu", "--backends", "naive", "--out", blocker / "sub",
                    "--no-progress")
    assert result.exit_code == 2
    assert "cannot create the results folder" in result.stderr


def test_list_and_env_describe_this_machine():
    result = invoke("list", "--device", "cpu")
    assert result.exit_code == 0
    assert "sdpa-cudnn" in result.stdout and "needs a CUDA device" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a machine without a GPU")
def test_env_without_a_gpu_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHBENCH_CACHE_DIR", str(tmp_path))
    result = invoke("env", "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["device"] == "cpu" and info["nvml"] is False and info["torch"]
    assert info["backends"]["sdpa-cudnn"] == "needs a CUDA device"
    assert info["backends"]["sdpa-math"] == "available" and info["ceilings"] is None
    assert [line.split(":")[0].split(" (")[0] for line in info["missing"]] == [
        "no CUDA device", "NVML", "not calibrated"]
    table = invoke("env")
    assert "backend sdpa-cudnn" in table.stdout and "missing" in table.stdout


def test_help_does_not_import_torch():
    code = ("import sys; from flashbench.cli import app; "
            "print(sorted(m for m in ('torch', 'pandas', 'triton', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

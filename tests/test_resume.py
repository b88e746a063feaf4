"""--resume: a torn last line cut and measured again, the run's own plugins, and every refusal."""

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.core.cases import CASE_FIELDS
from flashbench.cli import app

PLUGINS = Path(__file__).parent / "plugins"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def keys(run_dir: Path) -> list[tuple]:
    return [tuple(r[f] for f in CASE_FIELDS) for r in map(
        json.loads, (run_dir / "results.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed two-case run, made in this process (--no-isolate) to keep the tests quick."""
    out = tmp_path_factory.mktemp("runs")
    result = invoke("run", "--config", "cpu", "--backends", "naive", "--seq-len", "16",
                    "--budget-ms", "5", "--out", out, "--no-progress", "--no-isolate")
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


def test_torn_last_line_is_skipped_by_readers_then_cut_and_measured_again(tmp_path):
    out = tmp_path / "runs"
    result = invoke("run", "--config", "cpu", "--plugin", PLUGINS / "fast.py", "--backends",
                    "naive,fast-sdpa", "--seq-len", "16", "--budget-ms", "1", "--out", out,
                    "--no-progress", "--no-isolate")
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    complete = keys(run_dir)
    assert len(complete) == 4
    # Power lost while the last row was being written: half a line, and meta still "running".
    results = run_dir / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:3]) + lines[3][:len(lines[3]) // 2])
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps(meta | {"status": "running"}))

    report = invoke("report", run_dir, "--format", "json")
    assert report.exit_code == 0
    assert len(json.loads(report.stdout)) == 3
    assert "skipping a torn last line" in report.stderr

    # No --plugin: the run's meta.json names it, and the torn case is a fast-sdpa one.
    resumed = invoke("run", "--resume", run_dir.name, "--out", out, "--no-progress",
                     "--no-isolate")
    assert resumed.exit_code == 0, resumed.output
    assert "cut a torn last line" in resumed.stderr
    assert keys(run_dir) == complete  # the same cases, each once, in the same order
    assert results.read_text().splitlines(keepends=True)[:3] == lines[:3]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and len(meta["resumed"]) == 1


def test_resuming_a_finished_run_changes_nothing(finished_run):
    before = snapshot(finished_run)
    result = invoke("run", "--resume", finished_run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "nothing to resume" in result.stderr
    assert snapshot(finished_run) == before


def _plain_folder(run: Path, tmp: Path) -> Path:
    (tmp / "plain").mkdir()
    return tmp / "plain"


def _rows_without_meta(run: Path, tmp: Path) -> Path:
    copy = tmp / "rows-only"
    copy.mkdir()
    shutil.copy(run / "results.jsonl", copy)
    return copy


def _other_machine(run: Path, tmp: Path) -> Path:
    copy = tmp / "elsewhere"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["environment"]["torch"] = "1.0.0"
    meta["status"] = "interrupted"
    (copy / "meta.json").write_text(json.dumps(meta))
    (copy / "results.jsonl").write_text("")  # cases left to do
    return copy


@pytest.mark.parametrize("make, extra, message", [
    (lambda run, tmp: tmp / "nothing-here", (), "no such run or results file"),
    (_plain_folder, (), "not a flashbench run folder"),
    (_rows_without_meta, (), "is not a flashbench run (no meta.json with the run's config)"),
    (lambda run, tmp: run, ("--seq-len", "32"), "--resume runs the rest of the run's own config; "
                                                "drop --seq-len"),
    (lambda run, tmp: run, ("--config", "cpu"), "drop --config"),
    (lambda run, tmp: run, ("--case-timeout", "-1"), "case_timeout_s: Input should be greater"),
    (_other_machine, (), "this machine is not where the run began (torch '1.0.0' then"),
])
def test_resume_refuses_what_is_not_a_resumable_run(finished_run, tmp_path, make, extra, message):
    target = make(finished_run, tmp_path)
    before = snapshot(target) if target.is_dir() else None
    result = invoke("run", "--resume", target, *extra, "--out", tmp_path, "--no-progress",
                    "--no-isolate")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    if before is not None:
        assert snapshot(target) == before  # nothing half-written


def test_a_run_being_written_cannot_be_resumed(finished_run):
    lock = os.open(finished_run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the writing process holds it
        result = invoke("run", "--resume", finished_run, "--no-progress", "--no-isolate")
    finally:
        os.close(lock)
    assert result.exit_code == 2
    assert "is being written by another flashbench process" in result.stderr

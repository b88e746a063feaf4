"""Run folders: rows flushed one by one, torn last lines skipped, runs found by id or as latest."""

import json
import os

import pytest

from flashbench.core.cases import Case, Mode, Status
from flashbench.core.errors import UserError
from flashbench.core.rows import blank_row
from flashbench.results.store import check_root, create_run, open_run
from flashbench.results.reading import find_run, read_meta, read_rows


def row(n: int) -> dict:
    """A valid result row of a CPU case of length ``n``."""
    case = Case("naive", Mode.FWD, 1, 2, 2, n, n, 16, "fp32", False)
    return json.loads(json.dumps(blank_row(case, "cpu", "hot") | {"status": Status.OK}))


def test_rows_are_on_disk_as_soon_as_appended(tmp_path):
    run = create_run(tmp_path, "r1")
    run.write_meta({"status": "running"})
    run.append({"backend": "naive", "median_ms": 1.5, "rel_err": float("nan")})
    # Read back through another handle before close: nothing is buffered.
    assert json.loads((run.path / "results.jsonl").read_text()) == {
        "backend": "naive", "median_ms": 1.5, "rel_err": None}
    run.close()
    assert read_meta(run.path) == {"status": "running"}
    assert not [p for p in os.listdir(run.path) if p.endswith(".tmp")]


def test_two_runs_never_share_a_folder(tmp_path):
    create_run(tmp_path, "same")
    with pytest.raises(UserError, match="already exists"):
        create_run(tmp_path, "same")
    assert create_run(tmp_path).path != create_run(tmp_path).path


def test_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    f = tmp_path / "results.jsonl"
    f.write_text(f'{json.dumps(row(1))}\n{json.dumps(row(2))}\n{{"backend": "naive", "b"')
    assert read_rows(f) == [row(1), row(2)]
    assert "torn last line" in capsys.readouterr().err
    f.write_text(f'{json.dumps(row(1))}\nnot json\n{json.dumps(row(3))}\n')
    with pytest.raises(UserError, match="results.jsonl:2"):
        read_rows(f)


def test_find_run_latest_by_id_and_refusals(tmp_path):
    first = create_run(tmp_path, "a")
    first.write_meta({})
    second = create_run(tmp_path, "b")
    second.write_meta({})
    os.utime(first.meta_path, (1, 1))
    assert find_run(None, tmp_path) == second.path
    assert find_run("a", tmp_path) == first.path
    with pytest.raises(UserError, match="no such run or results file"):
        find_run(tmp_path / "nothing", tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a flashbench run folder"):
        find_run(tmp_path / "plain", tmp_path)
    with pytest.raises(UserError, match="no runs under"):
        find_run(None, tmp_path / "empty")


def test_a_torn_last_line_is_cut_before_new_rows(tmp_path):
    run = create_run(tmp_path, "torn")
    run.append(row(1))
    run.close()
    with open(run.results_path, "a") as f:
        f.write('{"backend": "naive", "b"')  # the writer died here
    assert run.repair_tail() == "cut"
    run.append(row(3))
    run.close()
    assert read_rows(run.path) == [row(1), row(3)]
    assert run.repair_tail() is None  # a clean file is left alone


def test_a_run_is_locked_by_its_writer(tmp_path):
    first = create_run(tmp_path, "locked")
    first.lock()
    with pytest.raises(UserError, match="being written by another flashbench process"):
        open_run(first.path)
    first.close()  # the lock goes with the writer
    second = open_run(first.path)
    second.close()


def test_results_folder_check_creates_nothing(tmp_path):
    check_root(tmp_path / "new" / "deeper")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is not a folder"):
        check_root(tmp_path / "file" / "runs")

"""Random damage to a real run's files: every reader exits 0 or 2 without a traceback, and a
resume that goes ahead ends with each case exactly once."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core.cases import case_key
from sweep_helpers import write_config

runner = CliRunner()
READERS = (("report", "--format", "csv"), ("report", "--format", "json"),
           ("report", "--format", "markdown"), ("compare",), ("compare", "--format", "json"))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                           | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished CPU run of six cases: the files the damage is done to."""
    tmp = tmp_path_factory.mktemp("pristine")
    config = write_config(tmp / "sweep.yaml", ("naive", "sdpa"), seq_len=(16, 24, 32))
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp / "runs"),
                                 "--no-progress", "--no-isolate"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp / "runs").iterdir()
    return run


def _byte_damage(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "drop-line", "repeat-line",
                                 "junk-line", "latin1"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    lines = data.split(b"\n")
    n = draw(st.integers(0, max(len(lines) - 1, 0)))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if kind == "drop-line":
        return b"\n".join(lines[:n] + lines[n + 1:])
    if kind == "repeat-line":
        return b"\n".join(lines[:n + 1] + lines[n:])
    if kind == "junk-line":
        return b"\n".join(lines[:n] + [json.dumps(draw(JSON_VALUES)).encode()] + lines[n:])
    return data[:at] + "é".encode("latin-1") + data[at:]  # not UTF-8


def _field_damage(data: bytes, draw, rows: bool) -> bytes:
    """One field of one row (or of meta.json) replaced by an arbitrary JSON value."""
    docs = [json.loads(line) for line in data.splitlines() if line.strip()] if rows \
        else [json.loads(data)]
    doc = docs[draw(st.integers(0, len(docs) - 1))]
    target = doc if rows or draw(st.booleans()) else doc.get("environment") or doc
    field = draw(st.sampled_from(sorted(target)))
    target[field] = draw(JSON_VALUES)
    text = "\n".join(json.dumps(d) for d in docs) + "\n" if rows else json.dumps(docs[0])
    return text.encode()


def _no_traceback(result, gate: bool = False) -> None:
    # check's exit 1 is its verdict (a case slower or missing after the damage), said so on
    # its last line; anything else that is not 0 or 2 is a misreport.
    judged = gate and result.exit_code == 1 and "failing case(s)" in result.output
    assert result.exit_code in (0, 2) or judged, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_runs_are_read_or_refused_and_resumed_once(pristine, tmp_path, data):
    run = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"  # one per example
    shutil.copytree(pristine, run)
    name = data.draw(st.sampled_from(["results.jsonl", "meta.json"]))
    path = run / name
    if data.draw(st.booleans()):
        damaged = _byte_damage(path.read_bytes(), data.draw)
    else:
        damaged = _field_damage(path.read_bytes(), data.draw, rows=name == "results.jsonl")
    path.write_bytes(damaged)
    for args in READERS:
        _no_traceback(runner.invoke(app, [*args, str(run)]))
    _no_traceback(runner.invoke(app, ["check", str(pristine), str(run)]), gate=True)
    resumed = runner.invoke(app, ["run", "--resume", str(run), "--no-progress", "--no-isolate"])
    _no_traceback(resumed)
    if resumed.exit_code == 0:
        rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()
                if line.strip()]
        keys = [case_key(r) for r in rows]
        meta = json.loads((run / "meta.json").read_text())
        assert len(keys) == len(set(keys)) == meta["n_cases"], (len(keys), len(set(keys)))
        assert meta["status"] == "completed"


def test_a_completed_run_whose_meta_lost_its_count_gets_it_back_on_resume(pristine, tmp_path):
    # Found by the test above in CI: meta.json with its "n_cases" line dropped still parses.
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    meta = json.loads((run / "meta.json").read_text())
    n = meta.pop("n_cases")
    (run / "meta.json").write_text(json.dumps(meta))
    resumed = runner.invoke(app, ["run", "--resume", str(run), "--no-progress", "--no-isolate"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "meta.json").read_text())["n_cases"] == n

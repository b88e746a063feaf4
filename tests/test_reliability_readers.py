"""Issue 14, the readers' and the config's part: every bad input is one line on stderr and exit 2.

Each test damages one thing (a row, meta.json, a config, a flag) and checks what every command
that reads it does: exit code 2, exactly one line on stderr starting ``error: `` and naming the
file, no traceback, nothing written.
"""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from sweep_helpers import FAST_TIMING

# 2 lengths, one mask, two backends: 4 cases in 2 shapes, split into 2 shards.
CONFIG = ("name: readers\ndevice: cpu\nbackends: [naive, sdpa-math]\nbatch: 1\nheads: 2\n"
          "seq_len: [16, 32]\nhead_dim: 16\ndtype: fp32\ncausal: [false]\n" + FAST_TIMING)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr) < 400, result.stderr  # a value quoted from the input is cut short
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    """The two shards of one tiny CPU sweep, made in this process (--no-isolate) to be quick."""
    root = tmp_path_factory.mktemp("readers")
    config = root / "readers.yaml"
    config.write_text(CONFIG)
    runs = []
    for i in (1, 2):
        out = root / f"shard{i}"
        result = invoke("run", "--config", config, "--shard", f"{i}/2", "--out", out,
                        "--no-progress", "--no-isolate")
        assert result.exit_code == 0, result.output
        (run_dir,) = out.iterdir()
        runs.append(run_dir)
    return runs


def lines_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def meta_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def _rows(make):
    """A damage of results.jsonl: ``make(rows)`` gives the file's new bytes."""
    def damage(run_dir: Path) -> None:
        (run_dir / "results.jsonl").write_bytes(make(lines_of(run_dir)))
    return damage


def _meta(make):
    """A damage of meta.json: ``make(meta)`` gives the file's new bytes."""
    def damage(run_dir: Path) -> None:
        (run_dir / "meta.json").write_bytes(make(meta_of(run_dir)))
    return damage


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _folder(name):
    def damage(run_dir: Path) -> None:
        (run_dir / name).unlink()
        (run_dir / name).mkdir()
    return damage


def _without(row, field):
    return {k: v for k, v in row.items() if k != field}


# (id, damage, what the one line must say). The line number is the damaged row's.
DAMAGES = [
    ("row-missing-backend", _rows(lambda r: _jsonl([r[0], _without(r[1], "backend")])),
     "results.jsonl:2: not a flashbench result row (backend: field required)"),
    ("row-is-a-list", _rows(lambda r: _jsonl([r[0]]) + b"[1, 2]\n"),
     "results.jsonl:2: not a flashbench result row (row: expected a JSON object, got list)"),
    ("samples-a-string", _rows(lambda r: _jsonl([r[0] | {"samples_ms": "x"}])),
     "results.jsonl:1: not a flashbench result row (samples_ms: input should be a valid "
     "array, got 'x')"),
    ("seq-len-a-boolean", _rows(lambda r: _jsonl([r[0] | {"seq_len": True}])),
     "results.jsonl:1: not a flashbench result row (seq_len: input should be a valid "
     "integer, got True)"),
    ("status-unknown", _rows(lambda r: _jsonl([r[0] | {"status": "fine"}])),
     "results.jsonl:1: not a flashbench result row (status: input should be 'ok',"),
    ("huge-value-quoted-short", _rows(lambda r: _jsonl([r[0] | {"backend": ["x" * 5000]}])),
     "(backend: input should be a valid string, got ['xxxxx"),
    ("results-a-folder", _folder("results.jsonl"), "results.jsonl is a folder, not a file"),
    ("results-not-utf8", _rows(lambda r: _jsonl(r[:1]) + b'{"backend": "\xff\xfe"}\n'),
     "results.jsonl:2: not UTF-8 text (byte 0xff at column 14)"),
    ("results-foreign-text", _rows(lambda r: b"seq_len,backend\n16,naive\n"),
     "results.jsonl:1: not a JSON object (a results file holds one JSON object per line)"),
    ("damaged-last-line", _rows(lambda r: _jsonl(r) + b"garbage\n"),
     "results.jsonl:3: not a JSON object"),
    ("row-nested-too-deeply", _rows(lambda r: b"[" * 100_000 + b"\n"),
     "results.jsonl:1: not a flashbench result row (nested too deeply)"),
    ("meta-a-list", _meta(lambda m: b"[1, 2]\n"),
     "meta.json: not a flashbench meta.json (expected a JSON object, got list)"),
    ("meta-environment-a-string", _meta(lambda m: json.dumps(m | {"environment": "x"}).encode()),
     "meta.json: not a flashbench meta.json (environment: expected a mapping, got 'x')"),
    ("meta-config-a-list", _meta(lambda m: json.dumps(m | {"config": [1]}).encode()),
     "meta.json: not a flashbench meta.json (config: expected a mapping, got [1])"),
    ("meta-status-unknown", _meta(lambda m: json.dumps(m | {"status": "done"}).encode()),
     "(status: expected one of running, completed, interrupted, failed, partial, got 'done')"),
    ("meta-n-cases-a-boolean", _meta(lambda m: json.dumps(m | {"n_cases": True}).encode()),
     "(n_cases: expected a whole number, 0 or more, got True)"),
    ("meta-ceilings-a-string", _meta(lambda m: json.dumps(
        m | {"environment": m["environment"] | {"ceilings": "fast"}}).encode()),
     "(environment.ceilings: expected a mapping or null)"),
    ("meta-shard-without-index", _meta(lambda m: json.dumps(m | {"shard": {"count": 2}}).encode()),
     "(shard: expected a mapping with whole numbers index and count, got {'count': 2})"),
    ("meta-plugins-a-string", _meta(lambda m: json.dumps(m | {"plugins": "a.py"}).encode()),
     "(plugins: expected a list of plugin paths, got 'a.py')"),
    ("meta-not-utf8", _meta(lambda m: b'{"run_id": "\xff"}\n'),
     "meta.json:1: not UTF-8 text (byte 0xff at column 13)"),
    ("meta-not-json", _meta(lambda m: b'{"run_id": \n'), "meta.json is not valid JSON"),
    ("meta-a-folder", _folder("meta.json"), "meta.json is a folder, not a file"),
    ("meta-nested-too-deeply", _meta(lambda m: b"[" * 100_000),
     "meta.json: not a flashbench meta.json (nested too deeply)"),
]


def _readers(bad: Path, good: list[Path], tmp: Path) -> dict[str, list]:
    """Every command that reads a run, each reading ``bad``; outputs go under ``tmp``."""
    return {
        **{f"report-{fmt}": ["report", bad, "--format", fmt, "-o", tmp / f"report.{fmt}"]
           for fmt in ("csv", "json", "markdown", "html")},
        "compare-one": ["compare", bad],
        "compare-two": ["compare", good[0], bad],
        "check": ["check", good[0], bad, "--summary", tmp / "summary.md"],
        "merge": ["merge", bad, good[1], "-o", tmp / "merged"],
        "resume": ["run", "--resume", bad, "--no-progress", "--no-isolate"],
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("damage, message", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_every_reader_refuses_a_damaged_run_with_one_line(shards, tmp_path, damage, message):
    bad = tmp_path / "bad"
    shutil.copytree(shards[0], bad)
    damage(bad)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(bad)
    for name, args in _readers(bad, shards, out).items():
        result = invoke(*args)
        assert_one_error_line(result, str(bad), message)
        assert not list(out.iterdir()), name  # nothing written: no report, summary, merged run
        assert snapshot(bad) == before, name  # and a resume changed nothing


def test_an_empty_results_file_is_refused_by_readers(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards[0], bad)
    (bad / "results.jsonl").write_bytes(b"")
    readers = _readers(bad, shards, tmp_path / "out")
    for name in ("report-csv", "report-json", "report-markdown", "report-html", "compare-one",
                 "compare-two", "check"):
        assert_one_error_line(invoke(*readers[name]), f"{bad} has no results")
    # A shard without its rows is not finished: merge says so, and a resume measures them.
    assert_one_error_line(invoke(*readers["merge"]), "is not finished (completed, 0 of 2 cases)")


def test_a_lone_torn_line_is_one_error_not_a_warning_and_an_error(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards[0], bad)
    (bad / "results.jsonl").write_text('{"backend": "nai')  # died writing the first row
    assert_one_error_line(invoke("report", bad), "has no results (its only line",
                          "results.jsonl:1, is unfinished)")


def test_a_results_file_given_alone_is_checked_the_same(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards[0], bad)
    (bad / "results.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n")
    for args in (["report", bad / "results.jsonl"], ["check", shards[0], bad / "results.jsonl"]):
        assert_one_error_line(invoke(*args), "results.jsonl:1: not UTF-8 text (byte 0x89")


def test_report_json_is_valid_json_when_a_file_holds_nan(shards, tmp_path):
    run = tmp_path / "nan"
    shutil.copytree(shards[0], run)
    rows = lines_of(run)
    text = _jsonl([rows[0] | {"rel_err": 1.0, "max_abs_err": 2.0}, *rows[1:]]).decode()
    (run / "results.jsonl").write_text(text.replace('"rel_err": 1.0', '"rel_err": NaN', 1)
                                       .replace('"max_abs_err": 2.0', '"max_abs_err": Infinity'))
    result = invoke("report", run, "--format", "json")
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(c))
    assert parsed[0]["rel_err"] is None and parsed[0]["max_abs_err"] is None
    assert parsed[1]["rel_err"] == rows[1]["rel_err"]

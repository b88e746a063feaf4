"""Issue 14, the readers' and the config's part: every bad input is one line on stderr and exit 2.

Each test damages one thing (a row, meta.json, a config, a flag) and checks what every command
that reads it does: exit code 2, exactly one line on stderr starting ``error: `` and naming the
file, no traceback, nothing written.
"""

import json
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core import safe_yaml
from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy, load_config
from flashbench.core.errors import UserError
from flashbench.measure.group import measure_case
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
    ("seq-len-zero", _rows(lambda r: _jsonl([r[0] | {"seq_len": 0, "kv_len": 0}])),
     "results.jsonl:1: not a flashbench result row (seq_len: input should be greater than or "
     "equal to 1, got 0)"),
    ("negative-sample", _rows(lambda r: _jsonl([r[0] | {"samples_ms": [0.5, -1.0]}])),
     "results.jsonl:1: not a flashbench result row (samples_ms.1: input should be greater "
     "than or equal to 0, got -1.0)"),
    ("case-twice", _rows(lambda r: _jsonl([r[0], r[1], r[0]])),
     "results.jsonl:3: the case naive fwd B1 H2 N32 D16 fp32 is on line 1 already; a run "
     "holds each case once"),
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
     "(shard: expected a mapping with whole numbers index and count, 1 <= index <= count, got "
     "{'count': 2})"),
    ("meta-shard-beyond-count", _meta(lambda m: json.dumps(
        m | {"shard": m["shard"] | {"index": 3}}).encode()),
     "(shard: expected a mapping with whole numbers index and count, 1 <= index <= count, got "
     "{'count': 2, 'grid_cases': 4, 'index': 3})"),
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


# --- the config: YAML bounded, duplicate keys refused, strict types, one short line ---------

def _alias_bomb() -> str:
    """Nine levels of nine aliases to the level below: ~300 bytes standing for 9^9 lists."""
    names = "abcdefghi"
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [
        f"&{name} [{','.join('*' + names[i] for _ in range(9))}]"
        for i, name in enumerate(names[1:])]
    return f"device: cpu\nbackends: [naive]\nname: [{', '.join(levels)}]\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    assert len(bomb.read_bytes()) < 400
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(UserError) as e:
        load_config(str(bomb))
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert str(e.value) == (f"{bomb}: the value at line 3 expands to more than 10,000 values "
                            f"(aliases repeat what they name); a config is a few lists of sizes")
    # Through the command line too: one line, exit 2, no run folder.
    result = invoke("run", "--config", bomb, "--out", tmp_path / "out", "--no-progress")
    assert_one_error_line(result, f"{bomb}: the value at line 3 expands to more than 10,000")
    assert not (tmp_path / "out").exists()


def _fast(body: str) -> str:
    return "device: cpu\nbackends: [naive]\n" + body


# (id, config text, what the one line must say after the file name)
BAD_CONFIGS = [
    ("duplicate-key", _fast("seq_len: 16\nhead_dim: 16\nseq_len: 32\n"),
     ": duplicate key 'seq_len' at line 5"),
    ("duplicate-nested-key", _fast("timing:\n  l2: hot\n  l2: cold\n"),
     ": duplicate key 'l2' at line 5"),
    ("recursive-alias", _fast("name: &a [*a]\n"), ": recursive alias at line 3"),
    ("seq-len-true", _fast("seq_len: true\n"),
     ": seq_len: Input should be a valid integer (got True)"),
    ("kv-heads-true", _fast("kv_heads: [true]\n"),
     ": kv_heads: Input should be a valid integer (got True)"),
    ("heads-a-float", _fast("heads: 16.0\n"),
     ": heads: Input should be a valid integer (got 16.0)"),
    ("causal-one", _fast("causal: 1\n"), ": causal: Input should be a valid boolean (got 1)"),
    ("min-samples-true", _fast("timing: {min_samples: true}\n"),
     ": timing.min_samples: Input should be a valid integer (got True)"),
    ("budget-true", _fast("timing: {budget_ms: true}\n"),
     ": timing.budget_ms: Input should be a valid number (got True)"),
    ("min-above-max", _fast("timing: {min_samples: 50, max_samples: 5}\n"),
     ": timing: min_samples (50) must be at most max_samples (5)"),
    ("huge-value", _fast(f"seq_len: ['{'x' * 5000}']\n"),
     ": seq_len: Input should be a valid integer (got 'xxxxxxxx"),
    ("huge-backend-name", "device: cpu\nbackends: [" + "k" * 3000 + "]\n",
     ": backends: unknown backend 'kkkkk"),
    ("multi-line-value", _fast('name: ["a\\nb\\nc"]\n'),
     ": name: Input should be a valid string (got ['a\\nb\\nc'])"),
    ("nested-too-deeply", "seq_len: " + "[" * 100_000 + "\n",
     ": nested too deeply; a config is a mapping of keys to values and lists"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_is_one_short_line(tmp_path, monkeypatch, text, message):
    # Only the built-in backends are known (plugins loaded by earlier tests lengthen the list
    # of allowed names, not the quote this test bounds).
    from flashbench.core import registry

    monkeypatch.setattr(registry, "_PLUGINS", {})
    config = tmp_path / "config.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    result = invoke("run", "--config", config, "--out", out, "--no-progress")
    assert_one_error_line(result, f"{config}{message}")
    # At most ~120 characters of the input are quoted: the line is the file name, the field,
    # the reason and the allowed values.
    assert len(result.stderr) - len(str(config)) < 330, result.stderr
    assert not out.exists()


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(_fast("name: caf\xe9\n").encode("latin-1"))
    result = invoke("run", "--config", config, "--out", tmp_path / "out", "--no-progress")
    assert_one_error_line(result, f"{config}: not UTF-8 text (byte 0xe9 at line 3)")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    result = invoke("run", "--config", folder, "--out", tmp_path / "out", "--no-progress")
    assert_one_error_line(result, f"config {folder} is a folder, not a YAML file")
    assert not (tmp_path / "out").exists()


def test_merge_keys_still_work_and_are_bounded_too(tmp_path):
    config = tmp_path / "merge.yaml"
    # An explicit key beside a merged one overrides it, as YAML says: not a duplicate.
    config.write_text(_fast("timing: {<<: {l2: hot, min_samples: 3}, min_samples: 2}\n"))
    timing = load_config(str(config)).timing
    assert (timing.l2, timing.min_samples) == ("hot", 2)
    # Merging nine times the mapping that merged nine times the one before: refused as well.
    names = "abcdefghi"
    levels = ["a: &a {x: 1, y: 2}"] + [
        f"{name}: &{name} {{<<: [{', '.join('*' + names[i] for _ in range(9))}]}}"
        for i, name in enumerate(names[1:])]
    with pytest.raises(safe_yaml.YamlRefused, match="expands to more than 10,000 values"):
        safe_yaml.load("\n".join(levels))
    assert safe_yaml.load("a: &a [1, 2]\nb: [*a, *a]\n") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


# --- check --threshold -------------------------------------------------------------------------

@pytest.mark.parametrize("threshold, message", [
    ("1000%", "--threshold: '1000%' must be above 0% and below 1000%"),
    ("-5%", "--threshold: '-5%' must be above 0% and below 1000%"),
    ("0", "--threshold: '0' must be above 0% and below 1000%"),
    ("inf", "--threshold: 'inf' is not a finite percentage; give one such as 5%"),
    ("nan%", "--threshold: 'nan%' is not a finite percentage; give one such as 5%"),
    ("1e400", "--threshold: '1e400' is not a finite percentage; give one such as 5%"),
    ("fast", "--threshold: 'fast' is not a percentage such as 5%"),
], ids=["1000%", "-5%", "0", "inf", "nan%", "1e400", "fast"])
def test_a_bad_threshold_says_what_is_wrong(shards, threshold, message):
    for command in ("check", "compare"):
        result = invoke(command, shards[0], shards[0], "--threshold", threshold)
        assert_one_error_line(result, message)
    assert invoke("check", shards[0], shards[0], "--threshold", "999%").exit_code == 0


# --- a failed allocation on a CPU is oom, not error ----------------------------------------------

@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot "
                 "allocate memory)"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 "
                 "bytes."),
    MemoryError(),
], ids=["cant-allocate", "not-enough-memory", "MemoryError"])
def test_a_failed_allocation_on_a_cpu_is_oom(fake_backend, exc):
    def allocate(q, k, v):
        raise exc
    fake_backend("greedy", allocate)
    case = Case("greedy", Mode.FWD, 1, 2, 2, 16, 16, 16, "fp32", False)
    row = measure_case(case, torch.device("cpu"), TimingPolicy(l2="hot", warmup_ms=0,
                                                                 budget_ms=5, min_samples=1))
    assert row["status"] == "oom", row["error"]
    assert row["error"].startswith(type(exc).__name__)


def test_other_runtime_errors_stay_errors(fake_backend):
    def broken(q, k, v):
        raise RuntimeError("out of resources: shared memory, Required: 98304")  # Triton's
    fake_backend("broken", broken)
    case = Case("broken", Mode.FWD, 1, 2, 2, 16, 16, 16, "fp32", False)
    row = measure_case(case, torch.device("cpu"), TimingPolicy(l2="hot", warmup_ms=0,
                                                                 budget_ms=5, min_samples=1))
    assert row["status"] == "error"


# --- --device of the machine commands --------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["list", "--device", "gpu"], "error: --device: 'gpu' is not one of auto, cuda, cpu"),
    (["profile", "--device", "gpu"], "error: --device: 'gpu' is not one of auto, cuda, cpu"),
    (["calibrate", "--device", "gpu"], "error: --device: 'gpu' is not one of auto, cuda, cpu"),
    (["calibrate", "--device", "meta"], "error: --device: 'meta' is not one of auto, cuda, cpu"),
    (["profile", "--device", "meta"], "error: --device: 'meta' is not one of auto, cuda, cpu"),
    (["env", "--device", "gpu"], "env: No such option: --device"),
    (["run", "--device", "gpu", "--no-progress"], "device: 'gpu' is not allowed; input should "
                                                  "be 'auto', 'cuda' or 'cpu'"),
], ids=["list-gpu", "profile-gpu", "calibrate-gpu", "calibrate-meta", "profile-meta", "env-gpu",
        "run-gpu"])
def test_an_unknown_device_is_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # where profile and run would write
    monkeypatch.setenv("FLASHBENCH_CACHE_DIR", str(tmp_path / "cache"))  # and calibrate
    assert_one_error_line(invoke(*args), message)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["list", "profile", "calibrate", "run"])
def test_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLASHBENCH_CACHE_DIR", str(tmp_path / "cache"))
    result = invoke(command, "--device", "cuda", *(["--no-progress"] if command == "run" else []))
    assert_one_error_line(result, "device: cuda was asked for but no CUDA device is visible")
    assert not list(tmp_path.iterdir())


def test_a_file_name_with_a_newline_is_still_one_line(shards, tmp_path):
    bad = tmp_path / "two\nlines"
    shutil.copytree(shards[0], bad)
    (bad / "results.jsonl").write_text("[1]\n")
    assert_one_error_line(invoke("report", bad), "two\\nlines/results.jsonl:1: not a flashbench "
                                                 "result row (row: expected a JSON object")
    assert_one_error_line(invoke("report", tmp_path / "no\nsuch"),
                          "no such run or results file: ", "no\\nsuch")


def test_a_grid_too_large_to_finish_is_refused_before_it_is_expanded(tmp_path):
    values = "[" + ", ".join(str(16 * i) for i in range(1, 21)) + "]"
    config = tmp_path / "grid.yaml"
    config.write_text(_fast(f"batch: {values}\nheads: {values}\nseq_len: {values}\n"
                            f"kv_len: {values}\nhead_dim: {values}\n"))
    started = time.perf_counter()
    result = invoke("run", "--config", config, "--out", tmp_path / "out", "--no-progress")
    assert time.perf_counter() - started < 5
    assert_one_error_line(result, f"{config}: the grid has 3,200,000 cases (the product of the "
                                  f"lengths of backends, mode, batch,", "at most 100,000 in one "
                                                                         "sweep")
    assert not (tmp_path / "out").exists()

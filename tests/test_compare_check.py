"""compare, report and check: side-by-side frames, every report format, and the regression gate."""

import copy
import json
from pathlib import Path
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from flashbench.results.check import parse_threshold
from flashbench.cli import app
from flashbench.results.compare import compare_backends, compare_runs, ratio_of_medians
from flashbench.results.reading import read_rows

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "h100-default"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def h100_rows():
    return read_rows(REFERENCE)


def write_run(folder: Path, rows, meta) -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def h100_meta():
    return json.loads((REFERENCE / "meta.json").read_text())


def test_compare_backends_speedups_against_the_fastest_sdpa(h100_rows):
    frame = compare_backends(h100_rows)
    assert len(frame) == 16  # one row per shape
    row = frame[(frame.seq_len == 8192) & (frame.head_dim == 128) & (~frame.causal)].iloc[0]
    sdpa = {b: row[f"{b}:median_ms"] for b in ("sdpa", "sdpa-flash", "sdpa-efficient",
                                                "sdpa-cudnn", "sdpa-math")}
    assert row["baseline"] == min(sdpa, key=sdpa.get)
    base = sdpa[row["baseline"]]
    assert row["triton:speedup"] == pytest.approx(base / row["triton:median_ms"])
    assert row[f"{row['baseline']}:speedup"] == pytest.approx(1.0)
    assert row["fastest"] == row["baseline"]  # on these shapes SDPA's fastest is fastest overall
    forced = compare_backends(h100_rows, baseline="naive")
    assert (forced["naive:speedup"] == 1.0).all()
    assert (forced["triton:speedup"] > 5).all()  # flash beats materialized attention everywhere


def test_compare_backends_marks_failures_instead_of_hiding_them(h100_rows):
    rows = copy.deepcopy(h100_rows)
    rows[0]["status"], rows[0]["median_ms"] = "oom", None
    rows[1]["samples_ms"] = [1.0, 1.5, 2.0, 1.2, 1.8]  # IQR/median well above 5%
    rows[2]["throttle"] = "hw_thermal_slowdown"
    frame = compare_backends(rows)
    first = frame.iloc[0]
    assert first[f"{rows[0]['backend']}:status"] == "oom"
    assert np.isnan(first[f"{rows[0]['backend']}:median_ms"])
    assert first[f"{rows[1]['backend']}:noisy"]
    assert first[f"{rows[2]['backend']}:throttled"]


def test_aa_same_run_and_injected_slowdown(tmp_path, h100_rows, h100_meta):
    base = write_run(tmp_path / "base", h100_rows, h100_meta)
    assert invoke("check", base, base).exit_code == 0
    slowed = copy.deepcopy(h100_rows)
    for r in slowed:
        if r["backend"] == "sdpa-flash" and r["samples_ms"]:
            r["samples_ms"] = [x * 1.2 for x in r["samples_ms"]]
            r["median_ms"] *= 1.2
    cur = write_run(tmp_path / "cur", slowed, h100_meta)
    result = invoke("check", base, cur, "--summary", tmp_path / "s.md", "--junit", tmp_path / "j.xml")
    assert result.exit_code == 1
    assert "16 failing case(s)" in result.stdout
    summary = (tmp_path / "s.md").read_text()
    failing = [line for line in summary.splitlines() if " | regression | ×" in line]
    assert len(failing) == 16 and all(line.startswith("| sdpa-flash ") for line in failing)
    assert all("×1.200" in line for line in failing)
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "112" and suite.get("failures") == "16"
    failed = [tc.get("name") for tc in suite if tc.find("failure") is not None]
    assert len(failed) == 16 and all(n.startswith("sdpa-flash ") for n in failed)


def test_a_small_slowdown_below_threshold_passes(tmp_path, h100_rows, h100_meta):
    slowed = copy.deepcopy(h100_rows)
    for r in slowed:
        if r["samples_ms"]:
            r["samples_ms"] = [x * 1.03 for x in r["samples_ms"]]
    base = write_run(tmp_path / "b", h100_rows, h100_meta)
    cur = write_run(tmp_path / "c", slowed, h100_meta)
    assert invoke("check", base, cur).exit_code == 0
    assert invoke("check", base, cur, "--threshold", "2%").exit_code == 1


def test_status_regression_missing_cases_and_improvements(tmp_path, h100_rows, h100_meta):
    cur_rows = copy.deepcopy(h100_rows)
    cur_rows[0].update(status="error", error="boom", samples_ms=[], median_ms=None)
    del cur_rows[-1]
    for r in cur_rows:
        if r["backend"] == "naive" and r["samples_ms"]:
            r["samples_ms"] = [x / 2 for x in r["samples_ms"]]
    base = write_run(tmp_path / "b", h100_rows, h100_meta)
    cur = write_run(tmp_path / "c", cur_rows, h100_meta)
    frame = compare_runs(h100_rows, cur_rows)
    verdicts = frame["verdict"].value_counts().to_dict()
    assert verdicts["status-regression"] == 1 and verdicts["missing"] == 1
    assert verdicts["improvement"] == 15  # naive twice as fast, its last case is missing
    result = invoke("check", base, cur)
    assert result.exit_code == 1 and "2 failing case(s)" in result.stdout
    result = invoke("check", base, cur, "--allow-missing")
    assert result.exit_code == 1 and "1 failing case(s)" in result.stdout


def test_environment_mismatch_is_refused_unless_allowed(tmp_path, h100_rows, h100_meta):
    other = copy.deepcopy(h100_meta)
    other["environment"]["gpu_name"] = "NVIDIA H200"
    base = write_run(tmp_path / "b", h100_rows, h100_meta)
    cur = write_run(tmp_path / "c", h100_rows, other)
    result = invoke("check", base, cur)
    assert result.exit_code == 2
    assert "gpu_name: 'NVIDIA H100 80GB HBM3' vs 'NVIDIA H200'" in result.stderr
    assert invoke("check", base, cur, "--allow-env-mismatch").exit_code == 0


def test_bad_inputs_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    for args, message in [
        (("check", tmp_path / "nope", REFERENCE), "no such run or results file"),
        (("check", empty, REFERENCE), "has no results"),
        (("check", REFERENCE, REFERENCE, "--threshold", "fast"), "not a percentage"),
        (("compare", REFERENCE, "--baseline-backend", "fa3"), "'fa3' is not in"),
        (("compare", REFERENCE, "--format", "xls"), "--format: 'xls' is not one of"),
        (("report", REFERENCE, "--format", "pdf"), "--format: 'pdf' is not one of"),
        (("report", "--results-dir", tmp_path / "none"), "no runs under"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1


def test_report_csv_is_the_flat_row_table(h100_rows):
    result = invoke("report", REFERENCE, "--format", "csv")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(h100_rows)
    header = lines[0].split(",")
    assert header[:10] == ["backend", "mode", "batch", "heads", "kv_heads", "seq_len", "kv_len",
                           "head_dim", "dtype", "causal"]
    assert "samples_ms" in header and "nvml_mem_util_pct" in header
    first = dict(zip(header, lines[1].split(",")))
    assert [float(x) for x in first["samples_ms"].split(";")][:3] == pytest.approx(
        h100_rows[0]["samples_ms"][:3], rel=1e-5)


def test_report_json_markdown_and_output_file(tmp_path, h100_rows):
    result = invoke("report", REFERENCE, "--format", "json")
    assert json.loads(result.stdout) == h100_rows
    result = invoke("report", REFERENCE, "--format", "markdown", "-o", tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert text.startswith("# flashbench run") and "NVIDIA H100 80GB HBM3" in text
    assert "| seq_len | head_dim | causal | baseline | triton ms |" in text


def test_compare_two_runs_and_formats(tmp_path, h100_rows, h100_meta):
    base = write_run(tmp_path / "b", h100_rows, h100_meta)
    result = invoke("compare", base, REFERENCE, "--format", "csv")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("backend,mode,batch")
    assert "unchanged" in result.stdout and "regression" not in result.stdout
    result = invoke("compare", REFERENCE, "--format", "json")
    assert len(json.loads(result.stdout)) == 16
    assert invoke("compare", REFERENCE).exit_code == 0


def test_latest_run_is_the_default(tmp_path):
    result = invoke("run", "--config", "cpu", "--backends", "naive,sdpa-math", "--seq-len", "16",
                    "--no-progress", "--out", tmp_path, "--no-isolate")  # quick: no worker
    assert result.exit_code == 0
    result = invoke("compare", "--results-dir", tmp_path, "--format", "markdown")
    assert result.exit_code == 0 and "naive ms" in result.stdout and "sdpa-math ×" in result.stdout


def test_aa_two_real_cpu_runs_of_one_config(tmp_path, monkeypatch):
    # Real timings: two runs of one config, each measured in its own worker process as a user's
    # two runs would be. One OpenMP thread, because threads spinning against any other process
    # on a 2-core machine swing CPU timings by orders of magnitude. The threshold is 100%:
    # between two processes this shared 2-core machine drifted by up to 1.42x (seen while
    # writing this test), which the gate rightly calls real. The 5% A/A evidence is the GPU's
    # (results/reference/h100-quick-aa) and the noise simulation (docs/check.md).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["run", "--config", "cpu", "--backends", "naive,sdpa-math", "--seq-len", "128",
            "--no-progress", "--out", tmp_path, "--budget-ms", "300"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args).exit_code == 0
    first, second = sorted(tmp_path.iterdir())
    result = invoke("check", first, second, "--threshold", "100%")
    assert result.exit_code == 0, result.stdout


def test_threshold_parsing():
    assert parse_threshold("5%") == parse_threshold("5") == parse_threshold("0.05") == 0.05
    assert parse_threshold("0.5%") == pytest.approx(0.005)


def test_ratio_interval_covers_truth_and_is_deterministic():
    rng = np.random.default_rng(1)
    a = rng.lognormal(0, 0.02, 30)
    b = rng.lognormal(np.log(1.10), 0.02, 30)
    est = ratio_of_medians(a.tolist(), b.tolist())
    assert est.low < 1.10 < est.high and est.low > 1.05
    assert ratio_of_medians(a.tolist(), b.tolist()) == est


def test_gate_rarely_cries_wolf_and_catches_ten_percent():
    # The figures in docs/check.md come from scripts/check_power.py; this is a small, fixed-seed
    # version of its lognormal-3% row, 30 samples per side.
    from flashbench.results.compare import timing_verdict

    rng = np.random.default_rng(0)
    def verdicts(slowdown, trials=100):
        return [timing_verdict(rng.lognormal(0, 0.03, 30).tolist(),
                               (rng.lognormal(0, 0.03, 30) * (1 + slowdown)).tolist(),
                               threshold=0.05)[0] for _ in range(trials)]
    assert verdicts(0.0).count("regression") == 0
    assert verdicts(0.10).count("regression") == 100
    assert verdicts(-0.10).count("improvement") == 100

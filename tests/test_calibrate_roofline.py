"""Calibration (measured ceilings, cached per machine), roofline fields and plot, telemetry marks."""

import json

import pytest
import torch
from typer.testing import CliRunner

from flashbench.measure import calibrate as cal
from flashbench.measure import telemetry
from flashbench.results import clocks
from flashbench.cli import app
from flashbench.output.plots import _roofline, _timed
from flashbench.core.roofline import attainable_tflops, ridge_intensity, roofline_fields
from flashbench.output.tables import results_frame, sweep_table
from flashbench.core.config import TimingPolicy

runner = CliRunner()
CEILINGS = {"matmul_tflops": {"bf16": 800.0, "tf32": 400.0, "fp32": 50.0}, "copy_gbps": 3000.0}
FAST = TimingPolicy(l2="hot", warmup_ms=1.0, budget_ms=20.0, min_samples=3)
CPU_ENV = {"cpu": "x86_64", "host": "box", "torch": "2.13.0+cpu"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_shares_of_peak_use_the_dtype_ceiling_and_the_copy_bandwidth():
    row = {"dtype": "bf16", "flops": 2e12, "hbm_bytes": 1e9, "tflops": 100.0, "gbps": 1500.0}
    assert roofline_fields(row, CEILINGS) == {"arith_intensity": 2000.0, "pct_peak_flops": 12.5,
                                              "pct_peak_bw": 50.0}
    # fp32 inputs are measured against the tf32 rate: the fastest way the card multiplies them.
    assert roofline_fields(row | {"dtype": "fp32"}, CEILINGS)["pct_peak_flops"] == 25.0
    no_tf32 = {"matmul_tflops": {"fp32": 50.0}, "copy_gbps": 3000.0}
    assert roofline_fields(row | {"dtype": "fp32"}, no_tf32)["pct_peak_flops"] == 200.0
    # Uncalibrated dtype or machine: intensity only.
    assert roofline_fields(row | {"dtype": "fp16"}, CEILINGS)["pct_peak_flops"] is None
    assert roofline_fields(row, None) == {"arith_intensity": 2000.0, "pct_peak_flops": None,
                                          "pct_peak_bw": None}
    assert roofline_fields(row | {"tflops": None, "gbps": None}, CEILINGS)["pct_peak_bw"] is None


def test_roof_and_ridge():
    assert ridge_intensity(800.0, 3000.0) == pytest.approx(266.667, rel=1e-5)
    assert attainable_tflops(100.0, 800.0, 3000.0) == pytest.approx(300.0)
    assert attainable_tflops(1000.0, 800.0, 3000.0) == 800.0


def test_rates_are_operations_over_the_median(monkeypatch):
    # Samples of 1, 2 and 4 ms: the median is 2 ms whatever the machine does.
    monkeypatch.setattr(cal, "time_callable", lambda fn, device, policy: (fn(), ([4.0, 1.0, 2.0], "t"))[1])
    n = 64
    assert cal.measure_matmul_tflops(torch.device("cpu"), "fp32", n, FAST) == pytest.approx(
        2 * n**3 / 2e-3 / 1e12)
    assert cal.measure_copy_gbps(torch.device("cpu"), 1 << 20, FAST) == pytest.approx(
        2 * (1 << 20) / 2e-3 / 1e9)


def test_matmul_rate_is_the_real_product_and_restores_precision():
    before = torch.get_float32_matmul_precision()
    rate = cal.measure_matmul_tflops(torch.device("cpu"), "fp32", 128, FAST)
    assert 1e-6 < rate < 100  # a CPU: between a megaflop and a hundred teraflops
    assert torch.get_float32_matmul_precision() == before


def test_calibrate_record_on_cpu_takes_the_best_size_and_skips_tf32():
    plan = cal.CalibrationPlan(matmul_sizes=(32, 96), copy_bytes=1 << 20, policy=FAST)
    steps = []
    record = cal.calibrate(torch.device("cpu"), CPU_ENV, ("bf16", "tf32", "fp32"), plan, steps.append)
    assert steps == ["matmul bf16 32³", "matmul bf16 96³", "matmul fp32 32³", "matmul fp32 96³",
                     "copy 0.00 GiB"]
    assert set(record["matmul_tflops"]) == {"bf16", "fp32"} and "tf32" in record["skipped"]
    for dtype, by_n in record["matmul_tflops_by_n"].items():
        assert record["matmul_tflops"][dtype] == max(by_n.values()) > 0
        assert by_n[str(record["matmul_best_n"][dtype])] == record["matmul_tflops"][dtype]
    assert record["copy_gbps"] > 0 and record["copy_bytes"] == 1 << 20
    assert record["key"] == "cpu x86_64 host=box torch=2.13.0+cpu"


def test_cache_is_keyed_by_gpu_driver_and_torch_and_keeps_earlier_dtypes(cache):
    gpu = {"gpu_uuid": "GPU-1", "driver": "580", "torch": "2.11"}
    cal.save_ceilings({"key": cal.calibration_key(gpu), "matmul_tflops": {"bf16": 790.0},
                       "matmul_best_n": {"bf16": 8192}, "matmul_tflops_by_n": {},
                       "copy_gbps": 3000.0})
    # A later --dtypes fp16 adds to the record instead of replacing bf16.
    cal.save_ceilings({"key": cal.calibration_key(gpu), "matmul_tflops": {"fp16": 780.0},
                       "matmul_best_n": {"fp16": 8192}, "matmul_tflops_by_n": {},
                       "copy_gbps": 3010.0})
    assert cal.load_ceilings(gpu)["matmul_tflops"] == {"bf16": 790.0, "fp16": 780.0}
    assert cal.load_ceilings(gpu)["copy_gbps"] == 3010.0
    for other in ({"gpu_uuid": "GPU-2"}, {"driver": "590"}, {"torch": "2.12"}):
        assert cal.load_ceilings(gpu | other) is None
    (cache / "ceilings.json").write_text("{not json")
    assert cal.load_ceilings(gpu) is None


def test_cli_calibrates_then_runs_report_shares_of_peak(tmp_path, cache):
    assert runner.invoke(app, ["calibrate", "--show"]).exit_code == 2
    result = runner.invoke(app, ["calibrate", "--device", "cpu", "--dtypes", "fp32",
                                 "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record["matmul_tflops"]) == {"fp32"}
    assert json.loads((cache / "ceilings.json").read_text())[record["key"]] == record
    shown = runner.invoke(app, ["calibrate", "--show"])
    assert shown.exit_code == 0 and "matmul fp32" in shown.stdout and "copy" in shown.stdout

    result = runner.invoke(app, ["run", "--config", "cpu", "--backends", "naive", "--seq-len",
                                 "32", "--head-dim", "16", "--no-causal", "--no-progress",
                                 "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["environment"]["ceilings"] == record
    (row,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert row["arith_intensity"] == pytest.approx(row["flops"] / row["hbm_bytes"])
    assert row["pct_peak_flops"] == pytest.approx(100 * row["tflops"] / record["matmul_tflops"]["fp32"])
    assert row["pct_peak_bw"] == pytest.approx(100 * row["gbps"] / record["copy_gbps"])


@pytest.mark.parametrize("args, message", [
    (["--dtypes", "int8"], "--dtypes: 'int8' is not one of bf16, fp16, tf32, fp32"),
    (["--device", "cuda"], "device: cuda was asked for but no CUDA device is visible"),
    (["--show"], "no calibration cached for cpu"),
])
def test_calibrate_bad_input_is_one_line_exit_2(args, message, cache):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("a CUDA device is present")
    result = runner.invoke(app, ["calibrate", "--device", "cpu", *args] if "--device" not in args
                           else ["calibrate", *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (cache / "ceilings.json").exists()


def _timed_row(backend, median_ms, clock, throttle=""):
    return {"backend": backend, "mode": "fwd", "batch": 1, "heads": 8, "kv_heads": 8,
            "seq_len": 1024, "kv_len": 1024, "head_dim": 64, "dtype": "bf16", "causal": False,
            "seed": 0, "status": "ok", "median_ms": median_ms, "tflops": 1.0, "gbps": 1.0,
            "peak_alloc_bytes": None, "sm_clock_mhz": clock, "throttle": throttle}


def test_off_clock_and_throttled_cases_are_marked_and_noted():
    rows = [_timed_row("triton", 1.0, 1980), _timed_row("triton", 2.0, 1980),
            _timed_row("triton", 3.0, 1755), _timed_row("triton", 4.0, 1980, "sw_power_cap")]
    for r, seq in zip(rows, (1024, 2048, 4096, 8192)):
        r["seq_len"] = r["kv_len"] = seq
    clock = clocks.run_clock(rows)
    assert clock == 1980
    # At its power cap a card runs at the clock NVML reads: the cap alone marks nothing; a
    # clock 11% below the run's does, as does a thermal slowdown.
    assert [clocks.off_clock(r, clock) for r in rows] == [False, False, True, False]
    assert clocks.off_clock({"sm_clock_mhz": 1980, "throttle": "hw_thermal_slowdown"}, 1980)
    # 3 % is the line: 1921 MHz is off (3.0 %), 1925 is not (2.8 %).
    assert clocks.off_clock({"sm_clock_mhz": 1920}, 1980)
    assert not clocks.off_clock({"sm_clock_mhz": 1925}, 1980)
    # A clock that moved while the case was sampled: 1980 down to 1900 is 4% (marked); to
    # 1935, 2.3% (not).
    rows[1].update(sm_clock_min_mhz=1900, sm_clock_max_mhz=1980)
    assert clocks.off_clock(rows[1], clock)
    assert not clocks.off_clock(rows[1] | {"sm_clock_min_mhz": 1935}, clock)
    assert clocks.telemetry_notes(rows) == [
        "telemetry: 1 case(s) saw sw_power_cap",
        "telemetry: 1 case(s) saw the SM clock move by more than 3% while sampled (marked !)",
        "telemetry: 1 case(s) ran at an SM clock more than 3% off the run's median 1980 MHz "
        "(1755–1755 MHz)"]
    ms = sweep_table(rows).groups[0][1][0]  # the one backend's ms column
    cells = [str(c) for c in ms.cells]
    assert cells == ["1.000", "2.000!", "3.000!", "4.000"]
    assert clocks.telemetry_notes([{"sm_clock_mhz": None}]) == []


def test_decode_throttle_names_bits_and_ignores_idle():
    assert telemetry.decode_throttle(0x1 | 0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert telemetry.decode_throttle(0x1) == []
    assert telemetry.decode_throttle(0x4000) == ["unknown_0x4000"]


def _roofline_rows():
    rows = []
    for backend, nbytes in (("naive", 4e9), ("triton", 4e7)):
        for ms in (1.0, 2.0):
            rows.append({"backend": backend, "dtype": "bf16", "median_ms": ms, "flops": 1e12,
                         "hbm_bytes": nbytes, "arith_intensity": 1e12 / nbytes,
                         "tflops": 1.0 / ms, "gbps": nbytes / ms / 1e6})
    return rows


def test_roofline_plot_draws_each_case_under_the_calibrated_roof():
    data = _timed(results_frame(_roofline_rows()))
    fig = _roofline(data, CEILINGS, "Test GPU", {"naive": "red", "triton": "blue"})
    (ax,) = fig.axes
    (roof,) = ax.lines
    xs, ys = roof.get_data()
    ridge = ridge_intensity(800.0, 3000.0)
    assert list(xs)[1] == pytest.approx(ridge) and list(ys)[1:] == [800.0, 800.0]
    assert ys[0] == pytest.approx(xs[0] * 3.0)  # 3000 GB/s: 3 TFLOP/s per FLOP/byte
    points = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert points == {"naive": [[250.0, 1.0], [250.0, 0.5]],
                      "triton": [[25000.0, 1.0], [25000.0, 0.5]]}
    uncalibrated = _roofline(data, None, "Test GPU", {"naive": "red", "triton": "blue"})
    assert len(uncalibrated.axes[0].lines) == 0 and "not calibrated" in uncalibrated._suptitle.get_text()


@pytest.mark.gpu
def test_gpu_calibration_orders_the_dtypes_as_tensor_cores_do():
    device = torch.device("cuda")
    plan = cal.CalibrationPlan(matmul_sizes=(4096,), copy_bytes=1 << 30, policy=TimingPolicy(
        l2="hot", warmup_ms=100.0, budget_ms=300.0, min_samples=5))
    env = {"gpu_uuid": "GPU-test", "driver": "x", "torch": torch.__version__}
    record = cal.calibrate(device, env, plan=plan)
    rates = record["matmul_tflops"]
    assert set(rates) == {"bf16", "fp16", "tf32", "fp32"} and record["skipped"] == {}
    # Tensor cores: 16-bit above tf32 above IEEE fp32, each by a wide margin on any recent GPU.
    assert rates["bf16"] > 1.5 * rates["tf32"] and rates["tf32"] > 2 * rates["fp32"]
    assert record["copy_gbps"] > 200  # any HBM or GDDR card; a host copy would be far below


def test_markdown_report_shows_each_case_against_the_calibrated_card():
    from pathlib import Path

    from flashbench.output.report import machine_table, render_report
    from flashbench.results.reading import load_run

    reference = Path(__file__).resolve().parents[1] / "results" / "reference" / "h100-telemetry"
    rows, meta, _ = load_run(reference, reference.parent)
    table = machine_table(rows)
    assert len(table) == len(rows) == 112
    first = table.iloc[0]
    assert first["% peak FLOP/s"] == f"{rows[0]['pct_peak_flops']:.3g}"
    assert first["FLOP/B"] == f"{rows[0]['arith_intensity']:.3g}" == "508"
    # The run's own marks: the cases whose clock was more than 3% off the run's median (the
    # one at 1635 MHz, and 4 of the 18 at the power cap: 1860 MHz and below); the power cap
    # alone marks nothing.
    clock = clocks.run_clock(rows)
    marked = table[table["throttle"].str.endswith("!")]
    assert len(marked) == sum(abs(r["sm_clock_mhz"] - clock) / clock > 0.03 for r in rows) == 5
    text, _ = render_report(rows, meta, "markdown")
    assert "matmul bf16 768.3 TFLOP/s" in text and "copy 3,030 GB/s" in text
    assert "| backend | seq_len | head_dim | causal | ms | TFLOP/s | % peak FLOP/s |" in text

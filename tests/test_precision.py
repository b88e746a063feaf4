"""What arithmetic a row says ran: matmul_precision per backend, dtype and device, the setting
reaching our kernels in a sweep, the per-precision tolerance, and the table's TF32 mark."""

import json

import pytest
import torch
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.core import registry
from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy
from flashbench.kernels import triton_flash
from flashbench.measure.group import measure_case
from flashbench.measure.precision import (cuda_matmul_precision, cudnn_precision,
                                         ieee_matmuls, matmul_precision)
from flashbench.measure.reference import tolerance
from flashbench.output.tables import backends_display, legend, sweep_table
from flashbench.results.compare import compare_backends
from kernel_inputs import LaunchSpy
from sweep_helpers import rows_of

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a cuda device object needs no GPU
FAST = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=5, min_samples=1, max_samples=3)
runner = CliRunner()


def case(backend, dtype="fp32", **kw):
    base = dict(backend=backend, mode=Mode.FWD, batch=1, heads=2, kv_heads=1, seq_len=17,
                kv_len=17, head_dim=32, dtype=dtype, causal=True)
    return Case(**(base | kw))


@pytest.fixture
def torch_tf32():
    """torch's cuBLAS TF32 switched on, as a program may do, and off again afterwards."""
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("backend", ["naive", "sdpa", "sdpa-math", "sdpa-flash", "triton"])
def test_cpu_fp32_rows_say_ieee_and_16_bit_rows_null(backend):
    fp32 = measure_case(case(backend), CPU, FAST)
    assert fp32["status"] == "ok", fp32["error"]
    assert fp32["matmul_precision"] == "ieee"  # torch on a CPU, and Triton's interpreter
    bf16 = measure_case(case(backend, "bf16"), CPU, FAST)
    assert bf16["status"] == "ok", bf16["error"]
    assert bf16["matmul_precision"] is None


def test_rows_that_ran_nothing_say_null():
    refused = measure_case(case("sdpa-cudnn"), CPU, FAST)
    assert refused["status"] == "unsupported" and refused["matmul_precision"] is None


def _spec(name):
    return registry.backends()[name]


def test_on_a_gpu_each_backend_says_what_its_path_runs(torch_tf32):
    # Ours follow the sweep's setting; cuBLAS paths follow torch's flag as it is now; the
    # memory-efficient kernel is fp32-accurate whatever torch says.
    assert matmul_precision(_spec("triton"), "fp32", CUDA, "triton-flash", "ieee") == "ieee"
    assert matmul_precision(_spec("triton"), "fp32", CUDA, "triton-decode", "tf32") == "tf32"
    assert matmul_precision(_spec("naive"), "fp32", CUDA, "naive", "ieee") == "tf32"
    assert matmul_precision(_spec("sdpa"), "fp32", CUDA, "sdpa-math", "ieee") == "tf32"
    assert matmul_precision(_spec("sdpa"), "fp32", CUDA, "sdpa-efficient", "tf32") == "ieee"
    assert matmul_precision(_spec("sdpa"), "fp32", CUDA, "sdpa-backend-9", "tf32") is None
    assert matmul_precision(_spec("sdpa-cudnn"), "fp32", CUDA, "sdpa-cudnn", "ieee") \
        == ("tf32" if torch.backends.cudnn.allow_tf32 else "ieee")
    assert matmul_precision(_spec("triton"), "bf16", CUDA, "triton-flash", "tf32") is None
    assert matmul_precision(_spec("naive"), "fp32", CPU, "naive", "tf32") == "ieee"


def test_torch_flag_is_read_as_it_is_and_the_reference_runs_in_ieee(torch_tf32):
    assert cuda_matmul_precision() == "tf32"
    with ieee_matmuls():
        assert cuda_matmul_precision() == "ieee"
    assert cuda_matmul_precision() == "tf32"  # put back
    torch.set_float32_matmul_precision("highest")
    assert cuda_matmul_precision() == "ieee"


def test_nvidias_override_forbids_tf32_in_the_libraries(torch_tf32, monkeypatch):
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert cuda_matmul_precision() == "ieee" and cudnn_precision() == "ieee"
    # Our kernels' TF32 is their own code, which the override does not reach.
    assert matmul_precision(_spec("triton"), "fp32", CUDA, "triton-flash", "tf32") == "tf32"


def test_plugins_declare_their_fp32_matmuls_or_say_null(monkeypatch):
    monkeypatch.setattr(registry, "_PLUGINS", {})
    registry.register_backend("mine", fp32_matmul="torch")(lambda q, k, v, **_: q)
    registry.register_backend("quiet")(lambda q, k, v, **_: q)
    assert matmul_precision(_spec("mine"), "fp32", CPU, "mine", "tf32") == "ieee"
    assert matmul_precision(_spec("quiet"), "fp32", CUDA, "quiet", "tf32") is None
    with pytest.raises(ValueError, match="fp32_matmul 'fast' is not one of ieee, tf32, torch"):
        registry.register_backend("bad", fp32_matmul="fast")(lambda q, k, v, **_: q)


def test_fp32_tolerance_is_per_precision(monkeypatch):
    assert tolerance("fp32", "ieee") == 1e-4
    assert tolerance("fp32", "tf32") == tolerance("fp32", None) == 5e-3
    assert tolerance("bf16", None) == 2e-2
    monkeypatch.setattr(registry, "_PLUGINS", {})

    def off_by_5e4(q, k, v, *, causal, scale):  # the error TF32 products bring
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                               scale=scale)
        return out * (1 + 5e-4)

    registry.register_backend("torch-ops", fp32_matmul="torch")(off_by_5e4)
    registry.register_backend("undeclared")(off_by_5e4)
    # Declared torch products, which are IEEE on a CPU: held to the IEEE tolerance.
    row = measure_case(case("torch-ops"), CPU, FAST)
    assert row["status"] == "mismatch" and row["matmul_precision"] == "ieee"
    assert "fp32 (ieee products) tolerance 0.0001" in row["error"]
    # Not declared: the TF32 allowance, as before matmul_precision existed.
    row = measure_case(case("undeclared"), CPU, FAST)
    assert row["status"] == "ok" and row["matmul_precision"] is None


def _run(tmp_path, *args):
    return runner.invoke(app, ["run", "--config", "cpu", "--backends", "triton,naive",
                               "--seq-len", "16", "--no-causal", "--heads", "2",
                               "--kv-heads", "1", "--head-dim", "32", "--budget-ms", "5",
                               "--no-progress", "--out", str(tmp_path), *map(str, args)])


@pytest.mark.parametrize("flag, launched", [([], "tf32"), (["--fp32-precision", "ieee"], "ieee")])
def test_the_setting_reaches_our_kernel_in_a_sweep(tmp_path, monkeypatch, flag, launched):
    spy = LaunchSpy(triton_flash._attn_fwd_kernel)
    monkeypatch.setattr(triton_flash, "_attn_fwd_kernel", spy)
    result = _run(tmp_path, "--no-isolate", *flag)
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    assert {s["DOT_PRECISION"] for s in spy.launches} == {launched}
    assert json.loads((run_dir / "meta.json").read_text())["config"]["fp32_precision"] == launched
    # On a CPU the interpreter's products are IEEE whatever the setting: the rows say so.
    assert {r["matmul_precision"] for r in rows_of(run_dir)} == {"ieee"}


def _row(backend, median, precision, dtype="fp32"):
    return {"backend": backend, "mode": "fwd", "batch": 1, "heads": 2, "kv_heads": 2,
            "seq_len": 64, "kv_len": 64, "head_dim": 64, "dtype": dtype, "causal": False,
            "status": "ok", "median_ms": median, "tflops": 1.0, "gbps": 1.0,
            "peak_alloc_bytes": None, "samples_ms": [median] * 3,
            "matmul_precision": precision, "throttle": None, "sm_clock_mhz": None}


def test_tables_mark_tf32_rows_and_say_so_only_when_shown():
    rows = [_row("triton", 1.0, "tf32"), _row("sdpa-math", 2.0, "ieee")]
    grid = sweep_table(rows)
    cells = [str(c) for _, cols in grid.groups for c in cols[0].cells]
    assert cells == ["1.000*†", "2.000"]
    assert "† fp32 products in TF32" in grid.caption
    display = backends_display(compare_backends(rows))
    assert display["triton ms"].iloc[0] == "1.000*†" and "† fp32" in legend(display)
    plain = [_row("triton", 1.0, None, "bf16"), _row("sdpa-math", 2.0, None, "bf16")]
    assert "†" not in sweep_table(plain).caption
    assert "†" not in legend(backends_display(compare_backends(plain)))

"""measure_case on CPU: every status it can give, with the fields of design.md filled in."""

import math

import pytest
import torch

from flashbench.core import costs
from flashbench.core.cases import Case, Mode
from flashbench.core.rows import RESULT_FIELDS
from flashbench.measure.group import measure_case
from flashbench.core.config import TimingPolicy

CPU = torch.device("cpu")
FAST = TimingPolicy(l2="hot", warmup_ms=0, budget_ms=20, min_samples=3, max_samples=20)


def case(backend, **kw):
    base = dict(backend=backend, mode=Mode.FWD, batch=1, heads=4, kv_heads=2, seq_len=33,
                kv_len=33, head_dim=32, dtype="fp32", causal=True)
    return Case(**(base | kw))


@pytest.mark.parametrize("backend", ["naive", "sdpa", "sdpa-math"])
def test_cpu_backends_are_correct_and_timed(backend):
    c = case(backend)
    row = measure_case(c, CPU, FAST)
    assert set(RESULT_FIELDS) <= set(row)
    assert row["status"] == "ok", row["error"]
    assert row["rel_err"] < 1e-6 and row["max_abs_err"] < 1e-5
    assert row["timer"] == "perf-counter" and row["device"] == "cpu" and row["l2"] == "hot"
    assert row["n_samples"] == len(row["samples_ms"]) >= 3
    assert row["min_ms"] <= row["median_ms"] <= max(row["samples_ms"])
    assert row["flops"] == costs.flops(c)
    assert row["tflops"] == pytest.approx(row["flops"] / (row["median_ms"] / 1e3) / 1e12)
    assert row["gbps"] == pytest.approx(row["hbm_bytes"] / (row["median_ms"] / 1e3) / 1e9)
    assert row["peak_alloc_bytes"] is None and row["sm_clock_mhz"] is None  # no CUDA, no NVML
    assert row["resolved_backend"].startswith("sdpa-" if backend.startswith("sdpa") else backend)


def test_plain_sdpa_records_what_pytorch_chose():
    row = measure_case(case("sdpa", causal=False, dtype="fp32"), CPU, FAST)
    assert row["resolved_backend"] in {"sdpa-flash", "sdpa-math", "sdpa-efficient", "sdpa-cudnn"}


def test_refused_sdpa_backend_is_unsupported_with_reason():
    row = measure_case(case("sdpa-cudnn"), CPU, FAST)
    assert row["status"] == "unsupported"
    assert "CUDA" in row["error"]
    assert row["median_ms"] is None and row["samples_ms"] == []


def test_impossible_causal_shape_is_unsupported():
    row = measure_case(case("naive", seq_len=40, kv_len=10), CPU, FAST)
    assert row["status"] == "unsupported" and "seq_len > kv_len" in row["error"]


def test_naive_that_cannot_fit_is_oom_without_trying():
    huge = case("naive", batch=64, heads=64, kv_heads=64, seq_len=1 << 20, kv_len=1 << 20,
                causal=False)
    row = measure_case(huge, CPU, FAST)
    assert row["status"] == "oom"
    assert "not attempted" in row["error"] and "GiB" in row["error"]
    assert row["flops"] == costs.flops(huge)  # the case is still described


def test_wrong_result_is_mismatch_and_still_timed(fake_backend):
    fake_backend("wrong", lambda q, k, v: torch.zeros_like(q))
    row = measure_case(case("wrong"), CPU, FAST)
    assert row["status"] == "mismatch"
    assert row["rel_err"] == pytest.approx(1.0)
    assert "tolerance" in row["error"]
    assert row["n_samples"] >= 3 and row["median_ms"] > 0


def test_nan_result_is_mismatch(fake_backend):
    fake_backend("nan", lambda q, k, v: torch.full_like(q, float("nan")))
    row = measure_case(case("nan"), CPU, FAST)
    assert row["status"] == "mismatch" and row["rel_err"] is None or math.isnan(row["rel_err"])


def test_raising_backend_is_error_with_one_line(fake_backend):
    def boom(q, k, v):
        raise ValueError("kernel exploded\nsecond line")
    fake_backend("boom", boom)
    row = measure_case(case("boom"), CPU, FAST)
    assert row["status"] == "error"
    assert row["error"] == "ValueError: kernel exploded second line"


def test_oom_raised_while_running_is_oom(fake_backend):
    def oom(q, k, v):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB. More")
    fake_backend("oomer", oom)
    row = measure_case(case("oomer"), CPU, FAST)
    assert row["status"] == "oom" and "Tried to allocate 80.00 GiB" in row["error"]


def test_inputs_are_fresh_per_case_and_reproducible(fake_backend):
    seen = []

    def record(q, k, v):
        seen.append(q.clone())
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                enable_gqa=True)
    fake_backend("rec", record)
    measure_case(case("rec"), CPU, FAST)
    first = seen[0]
    seen.clear()
    measure_case(case("rec"), CPU, FAST)
    assert torch.equal(seen[0], first)  # same case, same inputs
    assert first.abs().min() >= 0 and first.std() > 0.5  # random normal, not zeros
    seen.clear()
    measure_case(case("rec", seq_len=34, kv_len=34), CPU, FAST)
    assert not torch.equal(seen[0][..., :33, :], first)


@pytest.mark.parametrize("backend", ["naive", "sdpa-math", "sdpa", "triton"])
@pytest.mark.parametrize("mode", [Mode.BWD, Mode.FWD_BWD])
def test_backward_modes_check_gradients_and_count_work(backend, mode):
    c = case(backend, mode=mode, seq_len=20, kv_len=36)
    row = measure_case(c, CPU, FAST)
    assert row["status"] == "ok", row["error"]
    assert row["rel_err"] < 1e-5  # the worst of dQ, dK, dV against float64 autograd
    fwd = costs.flops(Case(**(c.to_dict() | {"mode": Mode.FWD})))
    assert row["flops"] == int(fwd * (2.5 if mode is Mode.BWD else 3.5))
    assert row["hbm_bytes"] == costs.hbm_bytes(c) > 0
    assert row["n_samples"] >= 3 and row["setup_ms"] >= 0


def test_wrong_gradient_is_mismatch(fake_backend):
    def detached(q, k, v):  # right forward, but no gradient reaches k and v
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.detach(), v.detach(), is_causal=True, enable_gqa=True) + 0 * (k.sum() + v.sum())
    fake_backend("nograd", detached)
    row = measure_case(case("nograd", mode=Mode.BWD), CPU, FAST)
    assert row["status"] == "mismatch" and row["rel_err"] == pytest.approx(1.0)


def test_triton_runs_the_decode_kernel_for_short_queries():
    decode = measure_case(case("triton", seq_len=1, kv_len=600, causal=False), CPU, FAST)
    assert decode["status"] == "ok" and decode["resolved_backend"] == "triton-decode"
    assert decode["rel_err"] < 1e-5
    prefill = measure_case(case("triton", seq_len=40, kv_len=40), CPU, FAST)
    assert prefill["resolved_backend"] == "triton-flash"
    backward = measure_case(case("triton", mode=Mode.BWD, seq_len=1, kv_len=600), CPU, FAST)
    assert backward["status"] == "ok" and backward["resolved_backend"] == "triton-flash"

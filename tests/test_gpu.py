"""On a CUDA device: events timing, allocator and NVML figures, and the memory claims of flash."""

import pytest
import torch

from flashbench.core import costs
from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy

pytestmark = pytest.mark.gpu

POLICY = TimingPolicy(l2="cold", warmup_ms=5, budget_ms=200, min_samples=5, max_samples=200)


def case(backend, **kw):
    base = dict(backend=backend, mode=Mode.FWD, batch=2, heads=8, kv_heads=8, seq_len=2048,
                kv_len=2048, head_dim=64, dtype="bf16", causal=False)
    return Case(**(base | kw))


def measure(c):
    from flashbench.measure.machine import capture_environment
    from flashbench.measure.group import measure_case
    from flashbench.measure.device import select_device
    from flashbench.core.nvml import nvml_handle

    device = select_device("cuda")
    handle = nvml_handle(capture_environment(device)["gpu_uuid"])
    return measure_case(c, device, POLICY, handle)


@pytest.mark.parametrize("backend", ["triton", "sdpa", "sdpa-flash", "sdpa-math", "naive"])
@pytest.mark.parametrize("causal", [False, True])
def test_backends_on_cuda(backend, causal):
    row = measure(case(backend, causal=causal))
    assert row["status"] == "ok", row["error"]
    assert row["timer"] == "cuda-events" and row["device"].startswith("cuda")
    assert row["rel_err"] < 2e-2
    assert row["n_samples"] >= 5 and row["median_ms"] > 0
    assert row["peak_alloc_bytes"] > 0 and row["peak_reserved_bytes"] >= 0
    assert row["sm_clock_mhz"] > 0 and row["power_w"] > 0  # NVML telemetry is there
    assert row["gpu_mem_used_bytes"] > row["peak_alloc_bytes"]  # the inputs and more are in use


def test_flash_peak_memory_is_output_plus_lse_and_naive_is_quadratic():
    c = case("triton")
    out_and_lse = 2 * 8 * 2048 * 64 * 2 + 2 * 8 * 2048 * 4
    for backend in ("triton", "sdpa-flash"):
        row = measure(case(backend))
        assert row["peak_alloc_bytes"] <= 1.05 * out_and_lse + (64 << 10), backend
    naive = measure(case("naive"))
    predicted = costs.materialized_peak_bytes(c, "naive")
    assert naive["peak_alloc_bytes"] == pytest.approx(predicted, rel=0.05)


def test_plain_sdpa_resolves_to_a_fused_kernel():
    row = measure(case("sdpa"))
    assert row["resolved_backend"] in {"sdpa-flash", "sdpa-cudnn", "sdpa-efficient"}


def test_naive_too_big_for_the_card_is_refused_without_trying():
    free = torch.cuda.mem_get_info()[0]
    n = int((free / (2 * 32 * 6)) ** 0.5) + 4096  # S and P of B=2, H=32 beyond free memory
    row = measure(case("naive", heads=32, kv_heads=32, seq_len=n, kv_len=n))
    assert row["status"] == "oom" and "not attempted" in row["error"]


def test_host_launch_overhead_is_not_timed():
    # A call that costs the host 300 us before launching 10 us of GPU work: the events must
    # time the GPU work, not the host (the timing loop holds the GPU back while it queues).
    import time

    from flashbench.measure.rounds import time_callable

    x = torch.empty(1 << 20, device="cuda")

    def slow_host_short_kernel():
        t = time.perf_counter()
        while time.perf_counter() - t < 300e-6:
            pass
        x.add_(1.0)

    samples, _ = time_callable(slow_host_short_kernel, torch.device("cuda"), POLICY)
    assert sorted(samples)[len(samples) // 2] < 0.05  # ms


def test_env_on_a_gpu_has_the_card_and_its_backends():
    from flashbench.measure.machine import capture_environment
    from flashbench.measure.device import select_device

    env = capture_environment(select_device("cuda"))
    assert env["gpu_uuid"].startswith("GPU-") and env["sm_count"] > 0 and env["l2_bytes"] > 0
    assert env["driver"] and env["cudnn"] and env["nvml"] is True
    assert env["backends"]["sdpa-flash"] == "available"
    assert not any(line.startswith(("no CUDA device", "NVML")) for line in env["missing"])

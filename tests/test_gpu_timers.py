"""On a CUDA device: the three timers and interleaved groups (issue 15)."""

import statistics

import pytest
import torch

from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy

pytestmark = pytest.mark.gpu


def _case(backend, **kw):
    base = dict(backend=backend, mode=Mode.FWD, batch=1, heads=8, kv_heads=8, seq_len=1024,
                kv_len=1024, head_dim=64, dtype="bf16", causal=False)
    return Case(**(base | kw))


def _group(cases, **policy):
    from flashbench.core.nvml import nvml_handle
    from flashbench.measure.device import select_device
    from flashbench.measure.group import measure_group
    from flashbench.measure.machine import capture_environment

    device = select_device("cuda")
    handle = nvml_handle(capture_environment(device)["gpu_uuid"])
    timing = TimingPolicy(**({"warmup_ms": 5, "budget_ms": 200, "min_samples": 10,
                              "max_samples": 400, "min_window_ms": 50} | policy))
    rows = {}
    for event in measure_group(cases, device, timing, handle):
        if event.kind == "row":
            rows[event.row["backend"]] = event.row
    return rows


@pytest.mark.parametrize("timer,name", [("events", "cuda-events"), ("graph", "cuda-graph"),
                                        ("profiler", "cuda-profiler")])
@pytest.mark.parametrize("l2", ["cold", "hot"])
def test_each_timer_times_each_backend(timer, name, l2):
    rows = _group([_case(b) for b in ("triton", "sdpa-flash", "naive")], timer=timer, l2=l2)
    for backend, row in rows.items():
        assert row["status"] == "ok", (backend, row["error"])
        assert row["timer"] == name and row["l2"] == l2
        assert row["n_samples"] >= 10 and row["median_ms"] > 0
        assert row["sm_clock_min_mhz"] <= row["sm_clock_mhz"] <= row["sm_clock_max_mhz"]


def test_timers_agree_on_a_long_kernel():
    # At ~1 ms the launch is nothing: the three timers read the same kernel within 5%.
    big = _case("sdpa-flash", batch=4, heads=32, seq_len=4096, kv_len=4096, head_dim=128)
    medians = {t: _group([big], timer=t, l2="hot")["sdpa-flash"]["median_ms"]
               for t in ("events", "graph", "profiler")}
    base = medians["events"]
    assert all(abs(m / base - 1) < 0.05 for m in medians.values()), medians


def test_a_group_alternates_and_its_rounds_pair_up():
    rows = _group([_case(b) for b in ("triton", "sdpa-flash", "sdpa-cudnn")])
    timed = [r for r in rows.values() if r["status"] == "ok"]
    assert len(timed) >= 2
    shared = set.intersection(*(set(r["sample_rounds"]) for r in timed))
    assert len(shared) >= 3  # rounds in which every backend took samples
    for r in timed:
        assert len(r["sample_rounds"]) == len(r["samples_ms"])
        assert statistics.median(r["samples_ms"]) == pytest.approx(r["median_ms"])


def test_a_call_that_syncs_the_host_is_refused_by_the_graph_timer(fake_backend):
    fake_backend("host-sync", lambda q, k, v: (q.sum().item(), q)[1])
    rows = _group([_case("host-sync")], timer="graph")
    assert rows["host-sync"]["status"] == "error"
    assert "cannot be captured in a CUDA graph" in rows["host-sync"]["error"]
    torch.cuda.synchronize()

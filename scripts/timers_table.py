"""The timers side by side on a GPU: CUDA events, CUDA-graph replay and profiler kernel time
(flashbench's three), beside triton.testing.do_bench and do_bench_cudagraph, on shapes from a
few microseconds (decode) to tens of milliseconds (long prefill, forward and backward).

Each call is prepared once (flashbench.measure.case.prepare_case: the same inputs, the same
checked first call a sweep makes) and then timed by every timer in turn, in one process.
Writes a Markdown table to stdout and the raw figures as JSON to the path given (optional).

    python3 scripts/timers_table.py [OUT.json]
"""

from __future__ import annotations

import json
import statistics
import sys

import torch
import triton.testing

from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy
from flashbench.measure.case import prepare_case
from flashbench.measure.group import make_sampler
from flashbench.measure.rounds import sample_rounds, settle_clock
from flashbench.measure.telemetry import TelemetrySampler, sm_clock_reader
from flashbench.core.nvml import nvml_handle

SHAPES = [  # (mode, batch, heads, kv_heads, seq_len, kv_len, head_dim, causal)
    ("fwd", 1, 32, 8, 1, 1024, 128, False),
    ("fwd", 1, 32, 8, 1, 8192, 128, False),
    ("fwd", 16, 32, 8, 1, 8192, 128, False),
    ("fwd", 64, 32, 8, 1, 32768, 128, False),
    ("fwd", 1, 16, 16, 512, 512, 64, False),
    ("fwd", 1, 32, 32, 1024, 1024, 128, False),
    ("fwd", 4, 32, 32, 2048, 2048, 128, False),
    ("fwd", 4, 32, 32, 4096, 4096, 128, True),
    ("fwd", 4, 32, 32, 8192, 8192, 128, False),
    ("fwd", 4, 32, 32, 16384, 16384, 128, False),
    ("fwd_bwd", 4, 32, 32, 8192, 8192, 128, True),
    ("fwd", 8, 32, 32, 16384, 16384, 128, False),
]
BACKENDS = ["triton", "sdpa-flash"]
TIMERS = [("events", "cold"), ("profiler", "cold"), ("graph", "cold"), ("events", "hot"),
          ("graph", "hot")]


def policy(timer: str, l2: str) -> TimingPolicy:
    return TimingPolicy(timer=timer, l2=l2, warmup_ms=25, budget_ms=400, min_samples=10,
                        max_samples=1000, target_rse=0.005, min_window_ms=100)


def measure(case: Case, device, handle) -> dict | None:
    # Prepared under the graph timer's cold policy: the copies of the inputs it cycles through
    # come with it; the other timers use the first call.
    row, prepared = prepare_case(case, device, policy("graph", "cold"), handle)
    if prepared is None:
        print(f"# {case.label()}: {row['status']}: {row['error']}", file=sys.stderr)
        return None
    clock = sm_clock_reader(handle)
    out = {"case": case.label(), "status": row["status"]}
    for timer, l2 in TIMERS:
        p = policy(timer, l2)
        try:
            sampler = make_sampler(prepared, device, p)
            sampler.warm(p.warmup_ms)
            settle_clock([sampler], clock)
            with TelemetrySampler(handle) as telemetry:
                samples = sample_rounds([sampler], p)[0].samples
            seen = telemetry.summary()
            out[f"{timer}/{l2}"] = statistics.median(samples)
            out[f"{timer}/{l2}:n"] = len(samples)
            out[f"{timer}/{l2}:mhz"] = seen["sm_clock_mhz"]
            out[f"{timer}/{l2}:w"] = seen["power_w"]
        except Exception as e:  # a timer that cannot take this call: said, not hidden
            out[f"{timer}/{l2}"] = None
            out[f"{timer}/{l2}:error"] = " ".join(str(e).split())[:200]
    run = prepared.calls[0]
    out["do_bench"] = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
    out["do_bench_cudagraph"] = triton.testing.do_bench_cudagraph(run, rep=200,
                                                                  return_mode="median")
    prepared.calls.clear()
    torch.cuda.empty_cache()
    return out


def _us(ms):
    return "—" if ms is None else f"{ms * 1e3:,.1f}"


def main() -> int:
    device = torch.device("cuda")
    handle = nvml_handle(None)
    results = []
    for mode, b, h, hkv, n, nkv, d, causal in SHAPES:
        for backend in BACKENDS:
            case = Case(backend=backend, mode=Mode(mode), batch=b, heads=h, kv_heads=hkv,
                        seq_len=n, kv_len=nkv, head_dim=d, dtype="bf16", causal=causal)
            got = measure(case, device, handle)
            if got:
                results.append(got)
                print(f"# {got['case']}: " + ", ".join(
                    f"{k} {_us(got[k])}" for k in ("events/cold", "profiler/cold",
                                                   "graph/cold", "do_bench")), file=sys.stderr)
    cols = ["events/cold", "profiler/cold", "graph/cold", "do_bench", "events/hot",
            "graph/hot", "do_bench_cudagraph"]
    print("| case | " + " | ".join(f"{c} µs" for c in cols)
          + " | events/profiler | graph/profiler (cold) | graph/do_bench_cudagraph (hot) |")
    print("| --- |" + " ---: |" * (len(cols) + 3))
    for r in results:
        prof = r.get("profiler/cold")

        def ratio(a, b):
            return f"{a / b:.3f}" if a and b else "—"

        print(f"| {r['case']} | " + " | ".join(_us(r.get(c)) for c in cols)
              + f" | {ratio(r.get('events/cold'), prof)} | {ratio(r.get('graph/cold'), prof)}"
              f" | {ratio(r.get('graph/hot'), r.get('do_bench_cudagraph'))} |")
    # The clock and power each timer saw: a timer that leaves the GPU idle between bursts
    # (events: a synchronize per burst) lets a power-capped card clock higher.
    print("\n| case | " + " | ".join(f"{c} MHz / W" for c in cols[:3] + cols[4:6]) + " |")
    print("| --- |" + " ---: |" * 5)
    for r in results:
        cells = [f"{r.get(c + ':mhz') or '—'} / {r.get(c + ':w') or '—'}"
                 for c in cols[:3] + cols[4:6]]
        print(f"| {r['case']} | " + " | ".join(cells) + " |")
    errors = {k: v for r in results for k, v in r.items() if k.endswith(":error")}
    for k, v in errors.items():
        print(f"\n{k}: {v}")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

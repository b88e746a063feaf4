"""On a GPU: the decode preset's one-token shapes (configs/decode.yaml), batch 1 first, timed four
ways in one process: split-KV decode combining in a second launch, combining in the last split
(one launch) with the formula's split count and tile, the same with the tuner's, and SDPA's
cuDNN backend as flashbench's ``sdpa-cudnn`` runs it. A Markdown table of µs, each as CUDA-graph
replay (no host launch cost) / CUDA events on a cold L2 (flashbench's events timer), and
cuDNN's time over ours (kernels/NOTES.md, d3).

    python scripts/bench_decode_ab.py [--max-seconds 200] [--out decode_ab.md]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph

from flashbench.core.cases import Case, Mode
from flashbench.core.config import TimingPolicy, load_config
from flashbench.kernels import sdpa, triton_decode
from flashbench.measure.inputs import make_inputs
from flashbench.measure.timing import EventSampler

OURS = ("two-launch", "fused", "fused, tuned")


def cases() -> list[Case]:
    grid = load_config("decode")
    return [Case(backend="triton", mode=Mode.FWD, batch=b, heads=grid.heads[0], kv_heads=hkv,
                 seq_len=1, kv_len=nk, head_dim=grid.head_dim[0], dtype=grid.dtype[0],
                 causal=grid.causal[0])
            for b, hkv, nk in itertools.product(sorted(grid.batch), grid.kv_heads, grid.kv_len)]


def calls(case: Case) -> tuple[dict, str]:
    """The four zero-argument calls on one set of inputs, and what the tuner chose."""
    inputs = make_inputs(case, torch.device("cuda"))
    q, k, v = inputs.tensors
    kw = dict(causal=case.causal, scale=inputs.scale)
    config, seconds = triton_decode.tuned_config(q, k, v, **kw)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    splits = [triton_decode.choose_num_splits(case.batch, case.kv_heads, case.kv_len, sms, s)
              for s in (1.0, config.split_scale)]
    chosen = (f"{splits[0]} → {splits[1]} × {config.block_n} keys, {config.num_stages} stages"
              f" (tuned in {seconds:.1f} s)")
    run = triton_decode.decode_forward
    return {
        "two-launch": lambda: run(q, k, v, fused_combine=False, **kw),
        "fused": lambda: run(q, k, v, **kw),
        "fused, tuned": lambda: run(q, k, v, config=config, **kw),
        "cuDNN": sdpa.prepare("sdpa-cudnn", inputs),
    }, chosen


def timed_us(fn) -> tuple[float, float]:
    """(CUDA-graph replay, cold-L2 events): median µs of one call each way."""
    graph = do_bench_cudagraph(fn, return_mode="median")
    sampler = EventSampler(fn, torch.device("cuda"), TimingPolicy(l2="cold"))
    sampler.warm(25.0)
    samples = sampler.burst(200) + sampler.burst(200)
    return graph * 1e3, statistics.median(samples) * 1e3


def row(case: Case) -> str:
    fns, chosen = calls(case)
    us = {name: timed_us(fn) for name, fn in fns.items()}
    cells = [f"{g:.1f} / {e:.1f}" for g, e in us.values()]
    ratios = [f"{us['cuDNN'][0] / us[name][0]:.2f} / {us['cuDNN'][1] / us[name][1]:.2f}"
              for name in OURS]
    return (f"| {case.batch} | {case.kv_heads} | {case.kv_len} | {chosen} | "
            + " | ".join(cells + ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-seconds", type=float, default=200.0,
                        help="no new shape is started after this long")
    parser.add_argument("--out", type=Path, default=Path("decode_ab.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
             f"{triton.__version__}: H=32, N=1, D=128, bf16, not causal; µs as CUDA graph / "
             "cold-L2 events; ratio = cuDNN µs / ours", "",
             "| B | Hkv | Nk | splits: formula → tuned | " + " | ".join(OURS) + " | cuDNN | "
             + " | ".join(f"cuDNN / {name}" for name in OURS) + " |",
             "|" + " --- |" * 11]
    print("\n".join(lines), flush=True)
    todo = cases()
    for done, case in enumerate(todo):
        if time.perf_counter() - started > args.max_seconds:
            lines.append(f"\nStopped by --max-seconds after {done} of {len(todo)} shapes.")
            print(lines[-1])
            break
        lines.append(row(case))
        print(lines[-1], flush=True)
        torch.cuda.empty_cache()
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

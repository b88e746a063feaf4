"""On a GPU: GB/s of the split-KV decode kernel on a dense cache and on paged caches (pages of
16 to 256 keys), with a sliding window and a softcap, beside the card's copy rate.

Bytes are what the kernel must read and write: the K/V keys each sequence attends (its window
when there is one), q and the output; GB/s = bytes / median time (CUDA graph replay, so that
the host's launch cost is not timed). ``--stages`` times the paged launches at other pipeline
depths too (kernels/NOTES.md, d2).

    python scripts/bench_decode.py [--batch 8] [--kv-len 32768] [--stages 4 5 7]
"""

from __future__ import annotations

import argparse

import torch
import triton

from flashbench.core.cases import Case, Mode
from flashbench.kernels import triton_decode
from flashbench.measure.inputs import make_inputs


def copy_rate() -> float:
    """GB/s of a 1 GiB device-to-device copy, bytes read and written."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench_cudagraph(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


def case_bytes(case: Case) -> int:
    keys = case.kv_len if case.window is None else min(case.kv_len, case.seq_len + case.window)
    elem = 2
    kv = 2 * case.batch * case.kv_heads * keys * case.head_dim * elem
    return kv + 2 * case.batch * case.heads * case.seq_len * case.head_dim * elem


def time_case(case: Case, stages: int | None) -> float:
    inputs = make_inputs(case, torch.device("cuda"))
    extra = {}
    if inputs.layout == "paged":
        extra = dict(block_table=inputs.block_table, cache_seqlens=inputs.cache_seqlens)
    plan = triton_decode._plan
    if stages is not None:
        triton_decode._plan = lambda *a: plan(*a)._replace(num_stages=stages)
    try:
        run = lambda: triton_decode.decode_forward(  # noqa: E731
            inputs.q, inputs.k, inputs.v, causal=True, scale=inputs.scale, window=case.window,
            softcap=case.softcap, **extra)
        run()
        return triton.testing.do_bench_cudagraph(run)
    finally:
        triton_decode._plan = plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--kv-len", type=int, default=32768)
    parser.add_argument("--stages", type=int, nargs="*", default=[])
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}: copy {copy_rate():.0f} GB/s")
    print("| seq_len | page | window | softcap | stages | µs | GB/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    shapes = [(n, page, window, softcap)
              for n in (1, 4, 16) for page in (None, 16, 32, 64, 128, 256)
              for window, softcap in ((None, None), (4096, None), (None, 50.0))
              if n == 1 or (window is None and softcap is None)]
    for n, page, window, softcap in shapes:
        case = Case(backend="triton", mode=Mode.FWD, batch=args.batch, heads=32, kv_heads=8,
                    seq_len=n, kv_len=args.kv_len, head_dim=128, dtype="bf16", causal=True,
                    window=window, softcap=softcap, page_size=page)
        for stages in [None] + (args.stages if page is not None else []):
            ms = time_case(case, stages)
            print(f"| {n} | {page or '-'} | {window or '-'} | {softcap or '-'} | "
                  f"{stages or 'default'} | {ms * 1e3:.1f} | {case_bytes(case) / ms / 1e6:.0f} |",
                  flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

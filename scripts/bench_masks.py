"""What a sliding window, a softcap and a ragged batch cost the prefill forward, on a GPU.

Every candidate configuration of each variant, timed with triton.testing.do_bench (L2 cleared
between calls, median); TFLOP/s count the pairs each variant attends (4·D FLOPs per pair), so a
window that skips its tiles shows the same rate as the causal kernel, and one that only masked
them would show a fraction of it. Beside them: SDPA's cuDNN backend on the dense causal shape.
Needs only torch and triton (no flashbench config), so it runs on a bare GPU image from a
checkout (``PYTHONPATH=. python scripts/bench_masks.py``).

    python scripts/bench_masks.py [--seq-len 8192] [--batch 2] [--heads 16] [--out masks.json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from flashbench.kernels import triton_flash
from flashbench.measure.masks import keep_mask


def _pairs(seq_len: int, window: int | None) -> int:
    keep = keep_mask(seq_len, seq_len, causal=True, window=window, device="cpu")
    return int(keep.sum())


def _best(run_of, configs) -> tuple[float, str]:
    times = {str(tuple(c)): do_bench(run_of(c), warmup=25, rep=200) for c in configs}
    best = min(times, key=times.get)
    return times[best], best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    b, h, n, d = args.batch, args.heads, args.seq_len, args.head_dim
    dtype, scale = torch.bfloat16, 1 / math.sqrt(args.head_dim)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype) for _ in range(3))
    configs = triton_flash.candidate_configs(d, dtype)
    rows = []

    def report(name: str, ms: float, pairs: int, config: str) -> None:
        tflops = 4 * d * pairs / (ms * 1e-3) / 1e12
        rows.append({"variant": name, "ms": ms, "tflops": tflops, "config": config})
        print(f"| {name} | {ms:.3f} | {tflops:.0f} | {config} |", flush=True)

    print("| variant | ms | TFLOP/s (attended pairs) | best config |")
    print("| --- | ---: | ---: | --- |")
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), rep=200)
    report("sdpa-cudnn causal", ms, b * h * _pairs(n, None), "-")
    for window, softcap in [(None, None), (None, 50.0), (4096, None), (1024, None),
                            (256, None), (1024, 50.0)]:
        ms, cfg = _best(lambda c: lambda: triton_flash.attention_forward(
            q, k, v, causal=True, scale=scale, config=c, window=window, softcap=softcap),
            configs)
        report(f"causal window={window} softcap={softcap}", ms, b * h * _pairs(n, window), cfg)
    # A packed batch of equal sequences against the same dense batch: the varlen kernel's own
    # overhead (the cu_seqlens reads, the pointer stores of O).
    seqs = 4
    lens = [n // seqs] * (b * seqs)
    cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], dtype=torch.int32,
                      device="cuda")
    qp, kp, vp = (torch.randn(sum(lens), h, d, device="cuda", dtype=dtype) for _ in range(3))
    qd, kd, vd = (t.view(b * seqs, n // seqs, h, d).transpose(1, 2) for t in (qp, kp, vp))
    pairs = b * h * seqs * _pairs(n // seqs, None)
    ms, cfg = _best(lambda c: lambda: triton_flash.attention_forward(
        qd, kd, vd, causal=True, scale=scale, config=c), configs)
    report(f"dense causal B={b * seqs} N={n // seqs} (bnhd)", ms, pairs, cfg)
    ms, cfg = _best(lambda c: lambda: triton_flash.attention_forward(
        qp, kp, vp, causal=True, scale=scale, config=c, cu_seqlens=cu, max_seqlen=n // seqs),
        configs)
    report(f"varlen causal {b * seqs}x{n // seqs}", ms, pairs, cfg)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

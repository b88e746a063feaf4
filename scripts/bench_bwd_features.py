"""Time the Triton backward with each of its features against the dense causal backward, on a GPU.

The prediction beside each time is the share of causal's tiles the kernels visit (the same
bounds the kernels use, counted on the host). out and LSE come from the dense causal forward:
the backward's time does not depend on their values, and for a ragged batch of equal lengths
they are exactly the packed batch's.

    python scripts/bench_bwd_features.py [--batch 4] [--heads 32] [--kv-heads 8] [--seq-len 8192]
"""

from __future__ import annotations

import argparse
import math

import torch
from triton.testing import do_bench

from flashbench.kernels.triton_flash import attention_forward
from flashbench.kernels.triton_flash_bwd import _config, _delta, attention_backward


def tiles(n: int, window: int | None, block_m: int, block_n: int) -> int:
    """Tiles a causal (windowed) mask leaves to visit: those holding an attended pair."""
    count = 0
    for m0 in range(0, n, block_m):
        last = min(m0 + block_m, n) - 1
        first_key = -n if window is None else m0 - window
        count += sum(1 for n0 in range(0, n, block_n)
                     if n0 <= last and min(n0 + block_n, n) - 1 >= first_key)
    return count


def predicted_share(n: int, window: int | None, cfg) -> float:
    """The windowed backward's matrix work over causal's: 4 products per dK/dV tile, 3 per dQ."""
    def work(w):
        return (4 * tiles(n, w, cfg.dkdv_block_m, cfg.dkdv_block_n) * cfg.dkdv_block_m
                * cfg.dkdv_block_n + 3 * tiles(n, w, cfg.dq_block_m, cfg.dq_block_n)
                * cfg.dq_block_m * cfg.dq_block_n)
    return work(window) / work(None)


def kernel_times(call, reps: int = 5) -> tuple[float, float, float]:
    """Mean device ms per call of the dK/dV, dQ and delta kernels (torch's profiler)."""
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    totals = dict.fromkeys(("_dkdv_kernel", "_dq_kernel", "_delta_kernel"), 0.0)
    for event in prof.key_averages():
        for name in totals:
            if name in event.key:
                totals[name] += event.device_time_total / 1e3 / reps
    return tuple(totals.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--softcap", type=float, default=50.0)
    args = parser.parse_args()
    b, h, hkv, n, d = args.batch, args.heads, args.kv_heads, args.seq_len, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(b, hh, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
                     for hh in (h, hkv, hkv, h))
    scale = 1 / math.sqrt(d)
    out, lse = attention_forward(q, k, v, causal=True, scale=scale)
    # The same batch packed: (B, H, N, D) -> (B·N, H, D), LSE (B, H, N) -> (H, B·N).
    pack = lambda t: t.transpose(1, 2).reshape(b * n, t.shape[1], d)  # noqa: E731
    ragged = dict(cu_seqlens=torch.arange(0, b * n + 1, n, device="cuda", dtype=torch.int32),
                  max_seqlen=n)
    packed = (pack(q), pack(k), pack(v), pack(out),
              lse.permute(1, 0, 2).reshape(h, b * n).contiguous(), pack(dout))
    # The dense batch with the packed batch's memory layout, (B, N, H, D) viewed (B, H, N, D):
    # what the ragged kernels cost beyond their layout.
    bnhd = tuple(t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, out, dout))
    cfg = _config(d, q.dtype, False)
    variants = {
        "causal": ((q, k, v, out, lse, dout), {}, 1.0),
        "causal, (B, N, H, D) layout": ((*bnhd[:4], lse, bnhd[4]), {}, 1.0),
        f"window {args.window}": ((q, k, v, out, lse, dout), dict(window=args.window),
                                  predicted_share(n, args.window, cfg)),
        f"softcap {args.softcap:g}": ((q, k, v, out, lse, dout), dict(softcap=args.softcap),
                                      None),
        "window + softcap": ((q, k, v, out, lse, dout),
                              dict(window=args.window, softcap=args.softcap), None),
        "ragged (equal lengths)": (packed, ragged, 1.0),
        f"ragged + window {args.window}": (packed, dict(ragged, window=args.window),
                                           predicted_share(n, args.window, cfg)),
    }
    print(f"B={b} H={h}/{hkv} N={n} D={d} bf16, causal; dK/dV {cfg.dkdv_block_m}x"
          f"{cfg.dkdv_block_n}, dQ {cfg.dq_block_m}x{cfg.dq_block_n}")
    print("| variant | ms | × causal | predicted × causal (tiles) |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for name, (tensors, extra, predicted) in variants.items():
        ms = do_bench(lambda: attention_backward(*tensors, causal=True, scale=scale, **extra),
                      warmup=50, rep=300)
        base = base or ms
        pred = "" if predicted is None else f"{predicted:.3f}"
        print(f"| {name} | {ms:.3f} | {ms / base:.3f} | {pred} |", flush=True)
    print("| variant | dK/dV ms | dQ ms | delta ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, (tensors, extra, _) in variants.items():
        print(f"| {name} | " + " | ".join(f"{ms:.3f}" for ms in kernel_times(
            lambda: attention_backward(*tensors, causal=True, scale=scale, **extra))) + " |")
    torch_ms = do_bench(lambda: (out.float() * dout.float()).sum(-1), warmup=50, rep=300)
    kernel_ms = do_bench(lambda: _delta(out, dout, False), warmup=50, rep=300)
    print(f"delta = rowsum(dO∘O): torch {torch_ms:.3f} ms, _delta_kernel {kernel_ms:.3f} ms")
    # The equal-length ragged batch is the dense batch: its gradients must agree.
    dense_grads = attention_backward(q, k, v, out, lse, dout, causal=True, scale=scale)
    ragged_grads = attention_backward(*packed, causal=True, scale=scale, **ragged)
    for name, a, r in zip("qkv", dense_grads, ragged_grads):
        diff = (pack(a).float() - r.float()).abs().max().item()
        print(f"d{name}: ragged vs dense max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()

"""On a GPU: the backward alone at batch 1 with Llama-70B-like GQA (H=64 query heads over 8 KV
heads, D=128, bf16), N = 2048–16384, causal and full, with the dK/dV kernel's GQA group split
over 1, 2, 4 and 8 programs and at the chooser's pick, against SDPA's cuDNN backward on the
same inputs (kernels/NOTES.md, b3). A Markdown table of `do_bench` median ms, TFLOP/s (the
backward counted as 2.5 forwards) and cuDNN's ms over ours, one row per variant, printed as it
is timed; the last column is how far dK and dV are from the unsplit kernel's (relative norm).

    python scripts/bench_bwd_gqa.py [--max-seconds 300] [--out bwd_gqa.md]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from flashbench.kernels.triton_flash import attention_forward
from flashbench.kernels.triton_flash_bwd import _config, _group_split, attention_backward

SPLITS = (1, 2, 4, 8)


def bwd_flops(b: int, h: int, n: int, d: int, causal: bool) -> float:
    pairs = n * (n + 1) / 2 if causal else n * n
    return 2.5 * 4 * b * h * pairs * d


def cudnn_backward(q, k, v, dout, causal: bool, scale: float):
    """A zero-argument call timing SDPA's cuDNN backward only (its forward runs once here), or
    None when cuDNN does not take these inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = torch.nn.functional.scaled_dot_product_attention(
                *leaves, is_causal=causal, scale=scale, enable_gqa=True)
            torch.autograd.grad(out, leaves, dout, retain_graph=True)
    except RuntimeError as err:
        print(f"cuDNN: {str(err).splitlines()[0]}")
        return None
    return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)


def relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def shape_rows(args, n: int, causal: bool, sms: int, deadline: float, rows: list[str]) -> None:
    """Append (and print) the rows of one (N, mask): cuDNN, then ours split 1, 2, 4, 8 and
    the chooser's pick; fewer when the budget runs out between them."""
    b, h, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(n)
    q, dout = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(2))
    k, v = (torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    scale = 1 / math.sqrt(d)
    out, lse = attention_forward(q, k, v, causal=causal, scale=scale)
    programs = triton.cdiv(n, _config(d, q.dtype, False).dkdv_block_n) * b * hkv
    pick = _group_split(programs, h // hkv, sms, causal)
    flops = bwd_flops(b, h, n, d, causal)
    mask = "causal" if causal else "full"

    def row(name: str, ms: float, ratio: str, drift: str) -> None:
        rows.append(f"| {n} | {mask} | {name} | {ms:.3f} | {flops / ms / 1e9:.0f} | {ratio} | "
                    f"{drift} |")
        print(rows[-1], flush=True)

    cudnn = cudnn_backward(q, k, v, dout, causal, scale)
    cudnn_ms = do_bench(cudnn, warmup=25, rep=args.rep, return_mode="median") if cudnn else None
    if cudnn_ms is not None:
        row("cuDNN", cudnn_ms, "1.00", "")
    variants = [(f"split {s}", s) for s in SPLITS if (h // hkv) % s == 0]
    variants.append((f"chooser (split {pick})", None))
    unsplit = None
    for name, split in variants:
        if time.perf_counter() > deadline:
            break

        def call(split=split):
            return attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale,
                                      group_split=split)

        grads = call()
        unsplit = unsplit or grads
        drift = f"{relative(grads[1], unsplit[1]):.1e}, {relative(grads[2], unsplit[2]):.1e}"
        ms = do_bench(call, warmup=25, rep=args.rep, return_mode="median")
        row(name, ms, "" if cudnn_ms is None else f"{cudnn_ms / ms:.2f}", drift)
        del grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="no new variant is started after this long")
    parser.add_argument("--out", type=Path, default=Path("bwd_gqa.md"))
    parser.add_argument("--seq-lens", default="2048,4096,8192,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--rep", type=int, default=200, help="do_bench's rep (ms)")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.max_seconds
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    lines = [f"{torch.cuda.get_device_name()} ({sms} SMs), torch {torch.__version__}, triton "
             f"{triton.__version__}: B={args.batch}, H={args.heads}/{args.kv_heads}, "
             f"D={args.head_dim}, bf16, backward only (from saved out and LSE); ratio = "
             "cuDNN ms / ours; drift = dK, dV relative to split 1", "",
             "| N | mask | variant | ms | TFLOP/s | cuDNN / ours | drift (dK, dV) |",
             "|" + " --- |" * 7]
    print("\n".join(lines), flush=True)
    todo = [(int(n), causal) for n in args.seq_lens.split(",") for causal in (True, False)]
    try:
        for done, (n, causal) in enumerate(todo):
            if time.perf_counter() > deadline:
                lines.append(f"\nStopped by --max-seconds after {done} of {len(todo)} shapes.")
                print(lines[-1])
                break
            shape_rows(args, n, causal, sms, deadline, lines)
            torch.cuda.empty_cache()
    finally:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

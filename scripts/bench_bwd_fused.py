"""On a GPU: the Triton backward alone (from a saved out and LSE), two-kernel against fused (dQ
accumulated in the dK/dV pass with atomics, kernels/NOTES.md b4), and SDPA cuDNN's backward on
the same inputs, at D=128 bf16: B=4 H=32 and B=1 H=64/Hkv=8, N = 2048 … 16384, causal and full.

A Markdown table of ms (triton.testing.do_bench), TFLOP/s (backward FLOPs = 2.5 × the forward's
4·B·H·pairs·D, pairs = N² or N(N+1)/2 causal), cuDNN ms / ours, and the largest |difference|
of each Triton path's dq, dk, dv from cuDNN's. Rows are written to ``--out`` as they come; no
new shape starts after ``--max-seconds``.

    python scripts/bench_bwd_fused.py [--max-seconds 900] [--out bwd_fused.md]
                                      [--seq-lens 2048 4096 8192 16384]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from flashbench.kernels.triton_flash import attention_forward
from flashbench.kernels.triton_flash_bwd import _config, attention_backward

# (batch, heads, kv heads): many heads, and one sequence of a GQA model.
SHAPES = ((4, 32, 32), (1, 64, 8))
SEQ_LENS = (2048, 4096, 8192, 16384)
HEAD_DIM = 128
OURS = ("two-kernel", "fused")


def backward_tflops(b: int, h: int, n: int, causal: bool, ms: float) -> float:
    pairs = n * (n + 1) // 2 if causal else n * n
    return 2.5 * 4 * b * h * pairs * HEAD_DIM / (ms * 1e-3) / 1e12


def cudnn_backward(q, k, v, dout, causal: bool, scale: float):
    """(timed call, its gradients): cuDNN's backward of one forward, kept for every call."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1])

    def call():
        return torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    return call, call()


def row(b: int, h: int, hkv: int, n: int, causal: bool) -> str:
    gen = torch.Generator(device="cuda").manual_seed(n)
    q, k, v, dout = (torch.randn(b, hh, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16,
                                 generator=gen) for hh in (h, hkv, hkv, h))
    scale = 1 / math.sqrt(HEAD_DIM)
    out, lse = attention_forward(q, k, v, causal=causal, scale=scale)
    cfg = _config(HEAD_DIM, q.dtype, False)
    calls = {name: (lambda c=c: attention_backward(q, k, v, out, lse, dout, causal=causal,
                                                   scale=scale, config=c))
             for name, c in zip(OURS, (cfg, cfg._replace(fused_dq=True)))}
    ms, diffs = {}, {}
    try:
        calls["cuDNN"], want = cudnn_backward(q, k, v, dout, causal, scale)
    except RuntimeError as e:  # no cuDNN attention for these inputs: ours alone
        want = None
        print(f"cuDNN: {str(e).splitlines()[0][:100]}")
    for name, call in calls.items():
        ms[name] = do_bench(call, warmup=25, rep=200)
        if name in OURS and want is not None:
            diffs[name] = "/".join(f"{(a.float() - r.float()).abs().max().item():.1e}"
                                   for a, r in zip(call(), want))
    ratio = lambda name: f"{ms['cuDNN'] / ms[name]:.2f}" if "cuDNN" in ms else "–"  # noqa: E731
    cells = ([f"{ms[name]:.3f}" if name in ms else "–" for name in (*OURS, "cuDNN")]
             + [f"{backward_tflops(b, h, n, causal, ms[name]):.0f}" if name in ms else "–"
                for name in (*OURS, "cuDNN")]
             + [ratio(name) for name in OURS] + [diffs.get(name, "–") for name in OURS])
    mask = "causal" if causal else "full"
    return f"| {b} | {h}/{hkv} | {n} | {mask} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time the Triton backward, two-kernel and fused, against SDPA cuDNN's.")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="no new shape is started after this long")
    parser.add_argument("--out", type=Path, default=Path("bwd_fused.md"))
    parser.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS))
    args = parser.parse_args()
    # The two rows must be what they say whatever the caller's environment.
    os.environ.pop("FLASHBENCH_TRITON_BWD", None)
    started = time.perf_counter()
    cfg = _config(HEAD_DIM, torch.bfloat16, False)
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}: backward only, D=128 "
             f"bf16, dK/dV tiles {cfg.dkdv_block_m}x{cfg.dkdv_block_n}, dQ {cfg.dq_block_m}x"
             f"{cfg.dq_block_n}, {cfg.num_warps} warps, {cfg.num_stages} stages; ratio = cuDNN "
             "ms / ours; max |Δ| vs cuDNN as dq/dk/dv", "",
             "| B | H/Hkv | N | mask | two-kernel ms | fused ms | cuDNN ms | two-kernel TFLOP/s "
             "| fused TFLOP/s | cuDNN TFLOP/s | cuDNN / two-kernel | cuDNN / fused "
             "| max abs diff two-kernel | max abs diff fused |", "|" + " --- |" * 14]
    print("\n".join(lines), flush=True)
    todo = [(b, h, hkv, n, causal) for b, h, hkv in SHAPES for n in args.seq_lens
            for causal in (True, False)]
    for done, shape in enumerate(todo):
        if time.perf_counter() - started > args.max_seconds:
            lines.append(f"\nStopped by --max-seconds after {done} of {len(todo)} shapes.")
            print(lines[-1])
            break
        lines.append(row(*shape))
        print(lines[-1], flush=True)
        args.out.write_text("\n".join(lines) + "\n")  # what is done survives a kill
        torch.cuda.empty_cache()
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""On a GPU: our fp32 kernels in both precisions (--fp32-precision tf32 | ieee) beside SDPA's.

For random fp32 inputs of a few shapes, each result's relative error against a float64
reference, and its median time:

- ours, ``fp32_precision="ieee"`` and ``"tf32"``, as a sweep runs them (``prepare``: tuned
  prefill, or split-KV decode for decode shapes), and the backward for one shape;
- SDPA's math backend with torch's cuBLAS TF32 off (its default) and on: what a row's
  ``matmul_precision`` of "ieee" and "tf32" means for it;
- SDPA's memory-efficient backend, run with torch's TF32 on, which flashbench records as
  "ieee" whatever torch says (its CUTLASS kernel runs fp32 as 3xTF32 from sm_80 on): its error
  should sit with the IEEE columns, not the TF32 ones.

The last columns say whether each error is within flashbench's tolerance for that precision
(flashbench.measure.reference.tolerance: 1e-4 for ieee, 5e-3 for tf32). Expected: ours ieee
close to SDPA math's (about 1e-7 to 1e-6), ours tf32 two or three orders above it (about
1e-4 to 1e-3) and within 5e-3.

    python scripts/fp32_precision_check.py [--quick]

Prints a table and exits 0 (without a GPU it says so and exits 0 too).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

SHAPES = [  # (label, batch, heads, kv_heads, seq_len, kv_len, head_dim, causal)
    ("prefill", 2, 16, 16, 1024, 1024, 64, False),
    ("prefill causal", 2, 16, 16, 1024, 1024, 128, True),
    ("prefill GQA", 1, 32, 8, 4096, 4096, 128, False),
    ("prefill GQA causal", 1, 32, 8, 4096, 4096, 128, True),
    ("prefill D=256", 1, 8, 8, 2048, 2048, 256, False),
    ("decode", 4, 32, 8, 1, 8192, 128, False),
    ("decode x4 causal", 4, 32, 8, 4, 8192, 128, True),
]
QUICK = ("prefill", "prefill GQA causal", "decode")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = out.double() - ref
    return (diff.norm() / ref.norm()).item() if torch.isfinite(diff).all() else float("nan")


def median_ms(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def reference(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    """float64 attention, one KV head's query group at a time (bounded memory)."""
    group = q.shape[1] // k.shape[1]
    n, nk = q.shape[2], k.shape[2]
    keep = torch.ones(n, nk, dtype=torch.bool, device=q.device).tril(nk - n) if causal else None
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = (q[b, h].double() @ k[b, h // group].double().T) * scale
            if keep is not None:
                s = s.masked_fill(~keep, float("-inf"))
            out[b, h] = torch.softmax(s, -1) @ v[b, h // group].double()
    return out


def sdpa(q, k, v, causal: bool, scale: float, backend, tf32: bool) -> torch.Tensor:
    from torch.nn.attention import sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    n, nk = q.shape[2], k.shape[2]
    mask = {} if not causal else {"is_causal": True} if n == nk else \
        {"attn_mask": causal_lower_right(n, nk)}
    # K and V repeated for GQA: not every SDPA backend takes enable_gqa.
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, **mask)
    except RuntimeError as e:  # a backend that refuses the shape or dtype
        print(f"  ({backend.name} refused: {str(e).splitlines()[0][:100]})", file=sys.stderr)
        return torch.full_like(q, float("nan"))
    finally:
        torch.set_float32_matmul_precision(before)


def forward_row(label, b, h, hkv, n, nk, d, causal) -> list[str]:
    from torch.nn.attention import SDPBackend

    from flashbench.kernels import triton_flash

    gen = torch.Generator(device="cuda").manual_seed(n * 7 + d)
    q, k, v = (torch.randn(b, hh, length, d, generator=gen, device="cuda")
               for hh, length in ((h, n), (hkv, nk), (hkv, nk)))
    scale = 1 / math.sqrt(d)
    ref = reference(q, k, v, causal, scale)
    ours = {p: triton_flash.prepare(q, k, v, causal=causal, scale=scale, fp32_precision=p)
            for p in ("ieee", "tf32")}
    errs = {p: rel_err(run(), ref) for p, run in ours.items()}
    math_ieee = rel_err(sdpa(q, k, v, causal, scale, SDPBackend.MATH, False), ref)
    math_tf32 = rel_err(sdpa(q, k, v, causal, scale, SDPBackend.MATH, True), ref)
    efficient = rel_err(sdpa(q, k, v, causal, scale, SDPBackend.EFFICIENT_ATTENTION, True), ref)
    kernel = triton_flash.kernel_name(q, k, causal=causal)
    ms = {p: median_ms(run) for p, run in ours.items()}
    return [f"{label} B{b} H{h}/{hkv} N{n} Nk{nk} D{d}", kernel,
            f"{errs['ieee']:.2e}", f"{errs['tf32']:.2e}", f"{math_ieee:.2e}",
            f"{math_tf32:.2e}", f"{efficient:.2e}", f"{ms['ieee']:.3f}", f"{ms['tf32']:.3f}",
            _verdict(errs["ieee"], 1e-4, math_ieee), _verdict(errs["tf32"], 5e-3, None)]


def _verdict(err: float, tol: float, peer: float | None) -> str:
    ok = err <= tol and (peer is None or err <= 2 * peer + 1e-6)
    return ("ok" if ok else "FAIL") + f" (<= {tol:g}" + ("" if peer is None else
                                                         ", <= 2x math") + ")"


def backward_row() -> list[str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from flashbench.kernels.triton_flash import attention

    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, hh, 1024, 64, generator=gen, device="cuda").requires_grad_()
               for hh in (8, 2, 2))
    dout = torch.randn(2, 8, 1024, 64, generator=gen, device="cuda")
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = q64 @ k64.repeat_interleave(4, 1).transpose(-1, -2) * 0.125
    ref = torch.autograd.grad(torch.softmax(s, -1) @ v64.repeat_interleave(4, 1), (q64, k64, v64),
                              dout.double())

    def worst(grads) -> float:
        return max(rel_err(g, r) for g, r in zip(grads, ref))

    errs = {p: worst(torch.autograd.grad(attention(q, k, v, causal=False, scale=0.125,
                                                   fp32_precision=p), (q, k, v), dout))
            for p in ("ieee", "tf32")}
    with sdpa_kernel([SDPBackend.MATH]):
        math_err = worst(torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=0.125, enable_gqa=True), (q, k, v), dout))
    return ["backward (worst of dQ dK dV) B2 H8/2 N1024 D64", "triton-flash bwd",
            f"{errs['ieee']:.2e}", f"{errs['tf32']:.2e}", f"{math_err:.2e}", "", "", "", "",
            _verdict(errs["ieee"], 1e-4, math_err), _verdict(errs["tf32"], 5e-3, None)]


HEADER = ["shape", "kernel", "ours ieee", "ours tf32", "math ieee", "math tf32", "efficient",
          "ms ieee", "ms tf32", "ieee within", "tf32 within"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for r in [HEADER, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check compares GPU arithmetic; nothing to do")
        return 0
    import triton

    from flashbench.measure.precision import cuda_matmul_precision, cudnn_precision

    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__} · triton "
          f"{triton.__version__} · torch cuBLAS fp32: {cuda_matmul_precision()} · cuDNN: "
          f"{cudnn_precision()}")
    print("relative error ||out - ref|| / ||ref|| against float64; ms: median of 10 calls\n")
    rows = []
    for shape in SHAPES:
        if not args.quick or shape[0] in QUICK:
            rows.append(forward_row(*shape))
    rows.append(backward_row())
    print_table(rows)
    failed = sum("FAIL" in c for r in rows for c in r[-2:])
    print(f"\n{failed} error(s) outside flashbench's tolerance for their precision"
          if failed else "\nevery error within flashbench's tolerance for its precision")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile the Triton backward kernels for sm_90 on a machine without a GPU and read the result.

For each kernel and tile shape: registers, spills (stack), shared memory, and the counts of the
instructions that matter (HGMMA, TMA loads, mma.sync, global reductions, exp2), from the SASS. The
arguments are specialised as a launch at B=4, H=32/Hkv, N=4096 would specialise them
(pointers and multiples of 16 divisible by 16, ints equal to 1 constant), dense, no window or
softcap.

    python scripts/inspect_bwd.py [--head-dim 128] [--dtype bf16] [--causal] [--kv-heads 8]
                                  [--ptx-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from flashbench.kernels import triton_flash_bwd as tb  # noqa: E402
from inspect_kernel import cuobjdump  # noqa: E402

# (kernel, BLOCK_M, BLOCK_N, warps, stages, FUSED_DQ): the shipped tiles, then the fused
# variant's candidates (dQ by atomics in the dK/dV kernel).
CANDIDATES = [("_dkdv_kernel", 32, 128, 8, 3, False), ("_dq_kernel", 128, 64, 8, 3, False)] + [
    ("_dkdv_kernel", bm, bn, w, s, True) for bm, bn, w, s in
    ((32, 128, 8, 3), (32, 128, 8, 2), (64, 128, 8, 2), (16, 128, 8, 3), (32, 64, 4, 3),
     (64, 64, 4, 2), (64, 64, 8, 2))]


def specialise(fn, values: dict) -> ASTSource:
    """An ASTSource of ``fn`` with each argument typed (or made constant) as the JIT would."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = values[name]
        if fn.params[i].is_constexpr or value is None or (type(value) is int and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, str):  # a pointer or descriptor type
            signature[name] = value
            if value.startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def arguments(bm: int, bn: int, head_dim: int, dtype: str, causal: bool, kv_heads: int,
              fused: bool) -> dict:
    heads, n, block_d = 32, 4096, triton.next_power_of_2(head_dim)
    desc = lambda rows: f"tensordesc<{dtype}[1,1,{rows},{block_d}]>"  # noqa: E731
    values = dict(
        desc_q=desc(bm), desc_k=desc(bn), desc_v=desc(bn), desc_do=desc(bm), desc_dk=desc(bn),
        desc_dv=desc(bn), desc_dq=desc(bm), Dk=None, Dv=None, Dq=None,
        DqAcc="*fp32" if fused else None,
        Lse="*fp32", Delta="*fp32", CuSeqlens=None, num_heads=heads, kv_heads=kv_heads,
        group=heads // kv_heads, seq_len=n, kv_len=n, total=None, stride_tok=None,
        stride_head=None, head_dim=None, stride_qb=heads * n * head_dim if fused else None,
        stride_qh=n * head_dim if fused else None, stride_qm=head_dim if fused else None,
        q_dim=head_dim if fused else None, qk_scale=0.1275, sm_scale=0.0884, window=None,
        cap_scale=None, cap_log2=None, BLOCK_D=block_d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal,
        WINDOW=False, SOFTCAP=False, VARLEN=False, INTERPRET=False,
        DOT_PRECISION="tf32", GROUP_SPLIT=1, FUSED_DQ=fused)
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--ptx-dir", type=Path, help="also write each kernel's PTX here")
    args = parser.parse_args()
    print("| kernel | BM | BN | warps | stages | regs | stack | smem KB | HGMMA | UTMALDG | "
          "HMMA | RED | MUFU.EX2 |")
    print("|" + " --- |" * 13)
    for name, bm, bn, warps, stages, fused in CANDIDATES:
        fn = getattr(tb, name)
        values = arguments(bm, bn, args.head_dim, args.dtype, args.causal, args.kv_heads, fused)
        label = f"{name} (fused)" if fused else name
        head = f"| {label} | {bm} | {bn} | {warps} | {stages} |"
        try:
            c = triton.compile(specialise(fn, values), target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": warps, "num_stages": stages})
        except Exception as e:  # noqa: BLE001 - report and go on to the next shape
            print(f"{head} compile failed: {str(e).splitlines()[0][:120]} |", flush=True)
            continue
        if args.ptx_dir:
            args.ptx_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{name}{'-fused' if fused else ''}-{bm}x{bn}-{warps}w{stages}s"
            (args.ptx_dir / f"{stem}.ptx").write_text(c.asm["ptx"])
        sass, usage = cuobjdump(c, "-sass"), cuobjdump(c, "-res-usage")
        count = lambda pat: len(re.findall(pat, sass))  # noqa: E731
        regs = re.search(r"REG:(\d+)", usage).group(1)
        stack = re.search(r"STACK:(\d+)", usage).group(1)
        print(f"{head} {regs} | {stack} | {c.metadata.shared / 1024:.0f} | "
              f"{count(r'HGMMA')} | {count(r'UTMALDG')} | {count(r'HMMA')} | {count(r'RED')} | "
              f"{count(r'MUFU.EX2')} |", flush=True)


if __name__ == "__main__":
    main()

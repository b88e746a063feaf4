"""Compile the Triton attention kernel for sm_90 on a machine without a GPU and read the result.

For each launch configuration: registers, spills, shared memory, and the counts of the Hopper
instructions that matter (HGMMA, the TMA bulk tensor copies, exp2), from the SASS.

    python scripts/inspect_kernel.py [--head-dim 128] [--dtype bf16] [--causal]
                                     [--fp32-precision tf32|ieee] [--window] [--softcap]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from flashbench.kernels import triton_flash as tf  # noqa: E402

TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
CUOBJDUMP = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"


def compile_config(cfg: tf.LaunchConfig, head_dim: int, dtype: str, causal: bool,
                   fp32_precision: str = "tf32", window: bool = False, softcap: bool = False):
    block_d = triton.next_power_of_2(head_dim)
    t = TYPES[dtype]
    signature = {
        "desc_q": f"tensordesc<{t}[1,1,{cfg.block_m},{block_d}]>",
        "desc_k": f"tensordesc<{t}[1,1,{cfg.block_n},{block_d}]>",
        "desc_v": f"tensordesc<{t}[1,1,{cfg.block_n},{block_d}]>",
        "desc_o": f"tensordesc<{t}[1,1,{cfg.block_m},{block_d}]>",
        "Lse": "*fp32", "num_heads": "i32", "group": "i32", "seq_len": "i32", "kv_len": "i32",
        "qk_scale": "fp32", "window": "i32", "cap_in": "fp32", "cap_out": "fp32",
        "BLOCK_D": "constexpr", "BLOCK_M": "constexpr",
        "BLOCK_N": "constexpr", "CAUSAL": "constexpr", "INTERPRET": "constexpr",
        "DOT_PRECISION": "constexpr", "WINDOW": "constexpr", "SOFTCAP": "constexpr",
    }
    precision = fp32_precision if dtype == "fp32" else "tf32"  # as tf.dot_precision picks it
    constexprs = {"BLOCK_D": block_d, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                  "CAUSAL": causal, "INTERPRET": False, "DOT_PRECISION": precision,
                  "WINDOW": window, "SOFTCAP": softcap, "WARP_SPECIALIZE": cfg.warp_specialize}
    signature["WARP_SPECIALIZE"] = "constexpr"
    shapes = ("q_shape", "kv_shape", "q_strides", "k_strides", "v_strides", "o_strides")
    if cfg.warp_specialize:
        # Descriptors made in the kernel: pointers, and (B, H, N, D) shapes and strides, the
        # last stride 1 as torch's contiguous tensors have it.
        signature |= {name: f"*{t}" for name in ("desc_q", "desc_k", "desc_v", "desc_o")}
        signature |= {name: ("i32",) * 4 for name in shapes[:2]}
        signature |= {name: ("i32", "i32", "i32", "constexpr") for name in shapes[2:]}
    else:
        signature |= {name: "constexpr" for name in shapes}
        constexprs |= dict.fromkeys(shapes)
    # In the kernel's argument order, which the compiler reads positionally.
    signature = {name: signature[name] for name in tf._attn_fwd_kernel.arg_names}
    if cfg.warp_specialize:
        constexprs |= {(list(signature).index(name), 3): 1 for name in shapes[2:]}
    src = ASTSource(fn=tf._attn_fwd_kernel, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})


def cuobjdump(compiled, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([str(CUOBJDUMP), flag, f.name], capture_output=True,
                              text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=TYPES)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--fp32-precision", default="tf32", choices=tf.FP32_PRECISIONS)
    parser.add_argument("--window", action="store_true", help="the sliding-window variant")
    parser.add_argument("--softcap", action="store_true", help="the softcap variant")
    args = parser.parse_args()
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    print("| BM | BN | warps | stages | regs | stack | smem KB | HGMMA | UTMALDG | MUFU.EX2 | HMMA | FFMA | SETMAXREG |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cfg in tf.candidate_configs(args.head_dim, torch_dtype, args.fp32_precision):
        try:
            c = compile_config(cfg, args.head_dim, args.dtype, args.causal or args.window,
                               args.fp32_precision, args.window, args.softcap)
        except RuntimeError as e:
            print(f"| {cfg.block_m} | {cfg.block_n} | {cfg.num_warps} | {cfg.num_stages} | "
                  f"compile failed: {str(e).splitlines()[0]} |")
            continue
        sass = cuobjdump(c, "-sass")
        usage = cuobjdump(c, "-res-usage")
        regs = re.search(r"REG:(\d+)", usage).group(1)
        stack = re.search(r"STACK:(\d+)", usage).group(1)
        count = lambda pat: len(re.findall(pat, sass))  # noqa: E731
        print(f"| {cfg.block_m} | {cfg.block_n} | {cfg.num_warps} | {cfg.num_stages} | "
              f"{regs} | {stack} | {c.metadata.shared / 1024:.0f} | {count(r'HGMMA')} | "
              f"{count(r'UTMALDG')} | {count(r'MUFU.EX2')} | {count(r'HMMA')} | "
              f"{count(r'FFMA')} | {count(r'SETMAXREG')} |")


if __name__ == "__main__":
    main()

"""Compile the Triton split-KV decode kernel for sm_90 on a machine without a GPU and read the result.

One row per variant (dense, each feature alone, paged at a page that holds whole tiles and
at one gathered row by row): registers, spills, shared memory, and the counts of the
instructions that say how K/V arrive: UTMALDG (copy-engine tile loads), LDGSTS (cp.async
pointer copies), LDG (plain loads), HMMA/HGMMA and MUFU.EX2, from the SASS.

    python scripts/inspect_decode.py [--head-dim 128] [--dtype bf16] [--rows 16]
                                     [--full] [--fused SPLITS] [--block-n N] [--stages S]
                                     [--sass-dir DIR] [VARIANT ...]

--fused compiles the launch that combines SPLITS splits in its last program (the default, for
more than one split); without it, the two-launch kernel. --block-n and --stages replace the
default configuration's key tile and stages (a tuning candidate's, kernels/triton_decode_configs.py).

--sass-dir writes each variant's instructions (no addresses), to diff against another build.
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

from flashbench.kernels import triton_decode as td  # noqa: E402
from flashbench.kernels import triton_decode_split as ts  # noqa: E402

CUOBJDUMP = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# name: (window, softcap, cache_seqlens, page_size)
VARIANTS = {
    "dense": (False, False, False, None),
    "window": (True, False, False, None),
    "softcap": (False, True, False, None),
    "seqlens": (False, False, True, None),
    "paged256": (False, False, True, 256),
    "paged16": (False, False, True, 16),
    "paged256-all": (True, True, True, 256),
    "paged16-all": (True, True, True, 16),
}


def compile_variant(name: str, head_dim: int, dtype: str, rows: int, causal: bool = True,
                    fused: int | None = None, block_n: int | None = None,
                    stages: int | None = None):
    window, softcap, seqlens, page_size = VARIANTS[name]
    block_m = max(16, triton.next_power_of_2(rows))
    block_d = triton.next_power_of_2(head_dim)
    _, num_warps, _ = td._launch_config(head_dim, TORCH_DTYPES[dtype], block_m, False)
    config = td.default_config(head_dim, TORCH_DTYPES[dtype], block_m, page_size is not None,
                               False)
    block_n, num_stages = block_n or config.block_n, stages or config.num_stages
    gather = False
    if page_size is not None:
        block_n, gather = td._page_tiles(page_size, block_n)
    box = f"[1,1,{block_n},{block_d}]"
    kv_desc = "constexpr" if gather else f"tensordesc<{dtype}{box}>"
    signature = {
        "desc_q": f"tensordesc<{dtype}[1,1,{block_m},{block_d}]>", "desc_k": kv_desc,
        "desc_v": kv_desc,
        "desc_po": "constexpr" if fused else f"tensordesc<{dtype}[1,{block_m},1,{block_d}]>",
        "Part": "*fp32" if fused else "constexpr", "Lse_part": "*fp32",
        "Out": f"*{dtype}" if fused else "constexpr", "Lse": "*fp32" if fused else "constexpr",
        "Counters": "*i32" if fused else "constexpr", "K": f"*{dtype}" if gather else "constexpr",
        "V": f"*{dtype}" if gather else "constexpr",
        "Block_table": "*i32" if page_size else "constexpr",
        "Cache_seqlens": "*i32" if seqlens else "constexpr",
        **{a: "i32" for a in ("kv_heads", "rows", "seq_len", "kv_len", "split_len",
                              "num_splits")},
        "qk_scale": "fp32", "cap_scale": "fp32", "window": "i32",
        **{a: "i32" for a in ("table_stride", "stride_page", "stride_slot", "stride_head",
                              "head_dim")},
    }
    tail_r, tail_s = td._tail_blocks(rows, fused, block_d) if fused else (1, 1)
    constexprs = dict(
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, CAUSAL=causal, WINDOW=window,
        SOFTCAP=softcap, SEQLENS=seqlens, PAGED=page_size is not None, GATHER=gather,
        PAGE_SIZE=page_size or 0, FUSED=bool(fused), TAIL_R=tail_r, TAIL_S=tail_s,
        INTERPRET=False, DOT_PRECISION="tf32")
    for arg in ("desc_k", "desc_v", "desc_po", "Part", "Out", "Lse", "Counters", "K", "V",
                "Block_table", "Cache_seqlens"):
        if signature[arg] == "constexpr":
            constexprs[arg] = None
    signature |= {k: "constexpr" for k in constexprs}
    # What a launch's specialisation would say: tensors 16-byte aligned, and these integers
    # multiples of 16 (strides and lengths of realistic caches).
    aligned = [a for a, t in signature.items() if t.startswith("*")] + [
        "kv_len", "split_len", "table_stride", "stride_page", "stride_slot", "stride_head",
        "head_dim"]
    attrs = {(ts._split_kv_kernel.arg_names.index(a),): [["tt.divisibility", 16]]
             for a in aligned}
    src = ASTSource(fn=ts._split_kv_kernel, signature=signature, constexprs=constexprs,
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def cuobjdump(compiled, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([str(CUOBJDUMP), flag, f.name], capture_output=True,
                              text=True, check=True).stdout


def instructions(sass: str) -> list[str]:
    """The SASS instructions alone (no addresses, encodings or the function's header), to diff."""
    return [m.group(1).strip() for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s+([^;]*;)", sass)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=TORCH_DTYPES)
    parser.add_argument("--rows", type=int, default=16, help="stacked query rows per KV head")
    parser.add_argument("--full", action="store_true", help="not causal (a window needs causal)")
    parser.add_argument("--fused", type=int, metavar="SPLITS",
                        help="the fused combine's launch, sized for this many splits")
    parser.add_argument("--block-n", type=int)
    parser.add_argument("--stages", type=int)
    parser.add_argument("--sass-dir", type=Path)
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    print("| variant | regs | stack | smem KB | UTMALDG | LDGSTS | LDG | HGMMA | HMMA | MUFU.EX2 |"
          " instructions |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.variants:
        c = compile_variant(name, args.head_dim, args.dtype, args.rows, causal=not args.full,
                            fused=args.fused, block_n=args.block_n, stages=args.stages)
        sass, usage = cuobjdump(c, "-sass"), cuobjdump(c, "-res-usage")
        ops = instructions(sass)
        count = lambda pat: sum(1 for op in ops if re.search(pat, op))  # noqa: E731
        regs = re.search(r"REG:(\d+)", usage).group(1)
        stack = re.search(r"STACK:(\d+)", usage).group(1)
        counts = " | ".join(str(count(p)) for p in (r"UTMALDG", r"LDGSTS", r"\bLDG\b", r"HGMMA",
                                                    r"HMMA", r"MUFU\.EX2"))
        print(f"| {name} | {regs} | {stack} | {c.metadata.shared / 1024:.0f} | {counts} | "
              f"{len(ops)} |")
        if args.sass_dir:
            args.sass_dir.mkdir(parents=True, exist_ok=True)
            (args.sass_dir / f"{name}.sass").write_text("\n".join(ops) + "\n")


if __name__ == "__main__":
    main()

"""On a GPU: do the warp-specialized forward candidates run, agree with the first candidate and
beat it? Full, causal and windowed attention, B=4 H=32 N=4096 D=128 bf16 (and GQA 32/8), one
line per candidate: ms (triton.testing.do_bench), TFLOP/s, max |difference| from the first
candidate; SDPA's cuDNN beside them (full and causal). Exits 1 when a candidate disagrees; a
candidate that hangs the GPU hangs this script, which is why scripts/kernels_ab/call.sh runs it
under a time limit. The candidates are off unless FLASHBENCH_TRITON_WS=1:

    FLASHBENCH_TRITON_WS=1 python scripts/kernels_ab/ws_probe.py [--seq-len 4096]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashbench.kernels import triton_flash


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=4096)
    args = parser.parse_args()
    n, d, bad = args.seq_len, 128, 0
    for hkv, causal, window in ((32, False, None), (32, True, None), (8, True, None),
                                (32, True, 1024)):
        q = torch.randn(4, 32, n, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(4, hkv, n, d, device="cuda", dtype=torch.bfloat16) for _ in "kv")
        pairs = n * n if not causal else n * (n + 1) // 2
        if window is not None:
            pairs = sum(min(i, window) + 1 for i in range(n))
        work = 4 * 4 * 32 * pairs * d
        configs = triton_flash.candidate_configs(d, torch.bfloat16)
        first = None
        if window is None:  # SDPA's cuDNN takes a window only as a dense mask: not a peer
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                ms = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(
                    q, k, v, is_causal=causal, enable_gqa=hkv != 32))
            print(f"hkv={hkv} causal={causal} sdpa-cudnn: {ms:.3f} ms "
                  f"{work / ms / 1e9:.0f} TFLOP/s", flush=True)
        for cfg in configs:
            def run(cfg=cfg):
                return triton_flash.attention_forward(q, k, v, causal=causal, scale=1 / math.sqrt(d),
                                                      config=cfg, window=window)[0]
            out = run()
            torch.cuda.synchronize()
            first = out if first is None else first
            diff = (out.float() - first.float()).abs().max().item()
            ok = math.isfinite(diff) and diff < 2e-2
            bad += not ok
            ms = triton.testing.do_bench(run)
            print(f"hkv={hkv} causal={causal} window={window} {cfg}: {ms:.3f} ms "
                  f"{work / ms / 1e9:.0f} TFLOP/s diff {diff:.2e} {'ok' if ok else 'DISAGREES'}",
                  flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

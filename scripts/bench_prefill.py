"""Predict-change-measure helper for the Triton prefill kernel: every candidate configuration of
the current kernel, the previous kernel version and SDPA's cuDNN and flash backends, timed in one
process with flashbench's own timing loop (cold L2, CUDA events, median).

    python scripts/bench_prefill.py [--seq-len 4096,8192] [--head-dim 128] [--batch 1 --heads 64
                                    --kv-heads 8] [--variants ''] [--out results.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashbench.core.cases import Case, Mode
from flashbench.core.costs import flops
from flashbench.kernels import triton_flash as current
from flashbench.core.config import TimingPolicy
from flashbench.measure.rounds import time_callable

POLICY = TimingPolicy(l2="cold", warmup_ms=25, budget_ms=400, min_samples=10, max_samples=300)
HERE = Path(__file__).resolve().parent


def load_variant(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / "kernel_variants" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ms(fn) -> float:
    samples, _ = time_callable(fn, torch.device("cuda"), POLICY)
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", default="1024,4096,8192,16384")
    parser.add_argument("--head-dim", default="64,128")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=None, help="GQA (default: --heads)")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--variants", default="v1_pointer")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    variants = {name: load_variant(name) for name in args.variants.split(",") if name}
    results = []
    for head_dim in map(int, args.head_dim.split(",")):
        for causal in (False, True):
            for n in map(int, args.seq_len.split(",")):
                b, h, hkv = args.batch, args.heads, args.kv_heads or args.heads
                q = torch.randn(b, h, n, head_dim, device="cuda", dtype=dtype)
                k, v = (torch.randn(b, hkv, n, head_dim, device="cuda", dtype=dtype)
                        for _ in range(2))
                scale = 1 / math.sqrt(head_dim)
                case = Case("x", Mode.FWD, b, h, hkv, n, n, head_dim, args.dtype, causal)
                work = flops(case)
                row = {"seq_len": n, "head_dim": head_dim, "causal": causal}
                ref = None
                for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                                      ("flash", SDPBackend.FLASH_ATTENTION)):
                    def run(backend=backend):
                        with sdpa_kernel([backend]):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                  scale=scale,
                                                                  enable_gqa=hkv != h)
                    ref = run() if ref is None else ref
                    row[name] = work / median_ms(run) / 1e12
                for name, module in variants.items():
                    fn = lambda: module.attention_forward(q, k, v, causal=causal, scale=scale)  # noqa: E731
                    row[name] = work / median_ms(fn) / 1e12
                for cfg in current.candidate_configs(head_dim, dtype):
                    label = (f"{cfg.block_m}x{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}"
                             + ("ws" if cfg.warp_specialize else ""))
                    fn = lambda cfg=cfg: current.attention_forward(q, k, v, causal=causal,  # noqa: E731
                                                                   scale=scale, config=cfg)
                    try:
                        out = fn()[0]
                    except Exception as e:  # noqa: BLE001 - a candidate that fails is a finding
                        row[label], row[f"{label}:err"] = float("nan"), repr(e)[:120]
                        continue
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    row[label] = work / median_ms(fn) / 1e12 if err < 2e-2 else float("nan")
                    row[f"{label}:err"] = err
                best = max((key for key in row if "x" in key and ":" not in key),
                           key=lambda key: row[key] if row[key] == row[key] else -1)
                row["best"] = best
                row["best/cudnn"] = row[best] / row["cudnn"]
                results.append(row)
                shown = {k: (f"{v:.0f}" if isinstance(v, float) and ":" not in k and k != "best/cudnn"
                             else v) for k, v in row.items() if ":err" not in k}
                print(json.dumps(shown), flush=True)
                del q, k, v, ref
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

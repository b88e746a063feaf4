"""Launch configurations of the prefill forward: the tile shapes worth timing per head dim and dtype, the untuned default, and what a tuning cache key holds."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

__all__ = ["FP32_PRECISIONS", "LaunchConfig", "candidate_configs", "default_config",
           "dot_precision", "length_bucket", "tuning_key"]

# What tl.dot does with fp32 tiles on a GPU: "tf32" rounds the inputs to TF32 for the tensor
# cores (about 1e-3 relative error), "ieee" multiplies in full fp32 (FMA units, slower). The
# interpreter's tl.dot is exact IEEE fp32 whatever it is told.
FP32_PRECISIONS: tuple[str, ...] = ("tf32", "ieee")


def dot_precision(dtype: torch.dtype, fp32_precision: str) -> str:
    """The DOT_PRECISION constexpr a launch gets: the setting for fp32 inputs; for 16-bit inputs
    (where it means nothing) always "tf32", so their compiled kernels do not depend on it."""
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision {fp32_precision!r} is not one of {FP32_PRECISIONS}")
    return fp32_precision if dtype == torch.float32 else "tf32"


class LaunchConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # Triton's automatic warp specialization of the main K/V loop (a producer warp issuing the
    # copies, consumer warpgroups computing). On Hopper it takes only with tensor descriptors
    # made inside the kernel and at 4 warps (../shared/targets.md's probe: +12-19% on a plain
    # kernel, a no-op at 8 warps, one configuration NaN), so those candidates are checked
    # against the first candidate's output before they are timed (triton_flash.tuned_config).
    warp_specialize: bool = False


def default_config(head_dim: int, dtype: torch.dtype, interpret: bool,
                   fp32_precision: str = "tf32") -> LaunchConfig:
    """The configuration used without tuning: the interpreter's, and the GPU's fallback."""
    if interpret:
        # The numpy interpreter pays per program and per op; small tiles keep tests fast, and
        # BLOCK_M != BLOCK_N makes the causal tail span several K/V tiles.
        return LaunchConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)
    return candidate_configs(head_dim, dtype, fp32_precision)[0]


def candidate_configs(head_dim: int, dtype: torch.dtype,
                      fp32_precision: str = "tf32") -> list[LaunchConfig]:
    """GPU configurations worth timing for a head dim and dtype, the usual best first.

    Measured on an H100 (kernels/NOTES.md): each fits its pipeline stages in shared memory and
    compiles without register spills for sm_90 (scripts/inspect_kernel.py). Dropped after
    measuring: 256-row tiles (16 warps: slower everywhere), 4 warps on 128x64 at D=128 (spills).
    """
    if dot_precision(dtype, fp32_precision) == "ieee":
        # FMA tiles hold the whole product in registers: the TF32 tiles below spill 0.4-5 KB
        # per thread (scripts/inspect_kernel.py --fp32-precision ieee). These spill none at
        # D=64 and the least found at D=128 and 256; not yet timed on a GPU.
        if head_dim <= 128:
            return [LaunchConfig(64, 16, 8, 2), LaunchConfig(32, 16, 4, 2),
                    LaunchConfig(32, 32, 8, 2)]
        return [LaunchConfig(32, 32, 8, 2), LaunchConfig(16, 32, 4, 2)]
    if dtype == torch.float32:
        # 4-byte tiles (TF32 tensor cores): smaller tiles keep the stages in shared memory.
        if head_dim <= 128:
            return [LaunchConfig(64, 32, 4, 2), LaunchConfig(64, 64, 4, 2),
                    LaunchConfig(128, 32, 8, 2)]
        return [LaunchConfig(64, 16, 8, 2), LaunchConfig(64, 32, 8, 2)]
    if head_dim > 128:
        # D = 256: eight warps, not four: a 64x256 fp32 accumulator over four warps spills.
        return [LaunchConfig(64, 32, 8, 2), LaunchConfig(64, 64, 8, 2),
                LaunchConfig(128, 32, 8, 2)]
    # Warp-specialized: 4 warps per consumer warpgroup; triton makes 12 (a producer warpgroup
    # issuing the copies and two consumers of 64 rows each, SETMAXREG in the SASS). Stages as
    # shared memory allows: at D=128, 128-key tiles take 176 KB at two stages (three
    # overflow), 64-key tiles 144 KB at three. Off unless FLASHBENCH_TRITON_WS=1: on the H200
    # with triton 3.6 the first of them never returned (B=4 H=32 N=4096, full mask: NOTES v3),
    # and a candidate that hangs the GPU would hang the tuner, and with it the sweep.
    if head_dim <= 64:
        configs = [LaunchConfig(128, 64, 8, 3), LaunchConfig(128, 64, 4, 3),
                   LaunchConfig(128, 128, 4, 3), LaunchConfig(64, 64, 4, 4),
                   LaunchConfig(128, 128, 4, 3, True), LaunchConfig(128, 64, 4, 4, True)]
    else:
        configs = [LaunchConfig(128, 128, 8, 3), LaunchConfig(128, 64, 8, 3),
                   LaunchConfig(64, 64, 4, 3), LaunchConfig(128, 64, 8, 4),
                   LaunchConfig(128, 128, 4, 2, True), LaunchConfig(128, 64, 4, 3, True)]
    specialize = os.environ.get("FLASHBENCH_TRITON_WS") == "1"
    return [cfg for cfg in configs if specialize or not cfg.warp_specialize]


def length_bucket(n: int) -> int:
    return triton.next_power_of_2(max(n, 16))


def tuning_key(device_name: str, head_dim: int, dtype: torch.dtype, causal: bool, seq_len: int,
               kv_len: int, fp32_precision: str, *, window: int | None = None,
               softcap: float | None = None, varlen: bool = False) -> str:
    """The tuning cache's key of a shape class: GPU, triton version, head dim, dtype, causal,
    length buckets, and for fp32 the matmul precision; then what changes the loop the winner
    runs: a sliding window (its width's bucket: a narrow window is a few masked tiles, a wide
    one a causal loop), a softcap (two more MUFU operations per score) and a packed batch
    (``seq_len`` is then its longest sequence). A dense case keeps the key it always had."""
    key = "|".join(["triton_flash.fwd", device_name, f"triton {triton.__version__}",
                    f"D{head_dim}", str(dtype).removeprefix("torch."),
                    "causal" if causal else "full", f"N{length_bucket(seq_len)}",
                    f"Nk{length_bucket(kv_len)}"])
    # FMA and tensor-core tiles have different winners; TF32 keeps the key it always had.
    if dot_precision(dtype, fp32_precision) == "ieee":
        key += "|ieee"
    if window is not None:
        key += f"|W{length_bucket(window)}"
    if softcap is not None:
        key += "|softcap"
    if varlen:
        key += "|varlen"
    return key

"""Launch configurations of split-KV decode: what the tuner may pick per shape class, and what
its cache key holds (flashbench.measure.tuning, as kernels/triton_flash_configs.py for prefill).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from flashbench.kernels.triton_flash_configs import dot_precision, length_bucket

__all__ = ["DecodeConfig", "SPLIT_SCALES", "candidate_configs", "tuning_key"]

# The split counts tried around triton_decode.choose_num_splits' formula: fewer splits leave
# the combine less to read (and at batch 1, a short cache, possibly no combine at all), more
# even out the last wave; each still bounded by MIN_SPLIT_KEYS keys per split.
SPLIT_SCALES: tuple[float, ...] = (1.0, 0.5, 2.0)


class DecodeConfig(NamedTuple):
    """``split_scale`` multiplies the formula's split count (choose_num_splits); ``block_n`` is
    the key tile asked for (a paged cache may shrink it to its page); ``num_stages`` is the
    launch's, as given (a paged launch's default is already doubled, see default_config)."""
    split_scale: float
    block_n: int
    num_stages: int


def candidate_configs(default: DecodeConfig, head_dim: int, dtype: torch.dtype,
                      block_m: int) -> list[DecodeConfig]:
    """The configurations worth timing, ``default`` (the formula's) first: three split counts,
    and at 16-row Q tiles of 16-bit heads of 65-128 dims a 128-key tile beside the 64-key one.

    A 128-key tile is twice the bytes per stage, so it gets one stage less: two K/V buffers
    under mma.sync, 132 KB at D=128, one program per SM with the bytes in flight of two
    programs of 64-key tiles. Compiled for sm_90 (scripts/inspect_decode.py --block-n 128,
    fused or not) it spills nowhere there; it does spill at 64 stacked rows (wgmma, four warps)
    and, gathered, at D=64. fp32, D=256 and D<=32 keep their one tile (_launch_config in
    kernels/triton_decode.py).
    """
    tiles = [(default.block_n, default.num_stages)]
    if dtype != torch.float32 and 64 < head_dim <= 128 and block_m == 16:
        tiles.append((128, default.num_stages - 1))
    return [DecodeConfig(scale, block_n, stages) for block_n, stages in tiles
            for scale in SPLIT_SCALES]


def tuning_key(device_name: str, head_dim: int, dtype: torch.dtype, fp32_precision: str, *,
               rows: int, programs: int, kv_len: int, window: int | None = None,
               softcap: float | None = None, seqlens: bool = False,
               page_size: int | None = None, gather: bool = False) -> str:
    """The tuning cache's key of a decode shape class: GPU, triton version, head dim, dtype
    (and for fp32 the matmul precision), the buckets of the stacked query rows per KV head,
    of batch × kv_heads (``programs``, the programs one split gives) and of the keys read
    (``kv_len``: the cache's capacity, the window's keys when narrower); then the features
    that change the loop: a window's width bucket, a softcap, per-sequence lengths, a paged
    cache's page size and whether its tiles are gathered. Causal is left out: at a few queries
    it masks one tile of thousands."""
    key = "|".join(["triton_decode.fwd", device_name, f"triton {triton.__version__}",
                    f"D{head_dim}", str(dtype).removeprefix("torch."),
                    f"rows{length_bucket(rows)}", f"BH{triton.next_power_of_2(programs)}",
                    f"Nk{length_bucket(kv_len)}"])
    if dot_precision(dtype, fp32_precision) == "ieee":
        key += "|ieee"
    if window is not None:
        key += f"|W{length_bucket(window)}"
    if softcap is not None:
        key += "|softcap"
    if seqlens:
        key += "|seqlens"
    if page_size is not None:
        key += f"|page{page_size}" + ("|gather" if gather else "")
    return key

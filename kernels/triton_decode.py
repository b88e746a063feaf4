"""Split-KV decode attention (flash-decoding) in Triton: a few queries against a long KV cache."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from flashbench.kernels import triton_flash
from flashbench.kernels.triton_decode_split import _combine_kernel, _split_kv_kernel
from flashbench.kernels.triton_flash import _tma_ready

__all__ = ["FEATURES", "MAX_STACKED_ROWS", "MIN_DECODE_KV_LEN", "MIN_SPLIT_KEYS",
           "choose_num_splits", "decode_forward", "is_decode_shape", "unsupported_reason"]

# What decode_forward implements beyond dense attention (flashbench.core.cases.FEATURES): the
# dispatcher sends a case that needs one of these here, or nowhere among our kernels.
FEATURES: frozenset[str] = frozenset({"window", "softcap", "paged"})

# A GQA group's query rows share one Q tile; past 128 rows its fp32 accumulator no longer fits
# the registers of one program, and the shape is a prefill anyway.
MAX_STACKED_ROWS = 128
# Shorter caches are a handful of tiles: nothing to split, and either kernel is launch-bound.
MIN_DECODE_KV_LEN = 256
# A split shorter than this spends more on filling the load pipeline and on the combine than
# it saves in parallelism.
MIN_SPLIT_KEYS = 512
# Programs per multiprocessor to aim for: the usual program (16 rows, D=128, 16-bit) takes 98 KB
# of shared memory, two per SM, so this is two waves, which evens out each head's shorter last
# split.
_PROGRAMS_PER_SM = 4
_DEFAULT_SM_COUNT = 132  # an H100 SXM, when there is no CUDA device to ask
_LOG2E = 1.4426950408889634
# The smallest power-of-two page read as one key tile of its own (a descriptor load), when it
# is shorter than the usual tile; smaller pages are gathered row by row, several per tile.
_MIN_PAGE_TILE = 32


def _launch_config(head_dim: int, dtype: torch.dtype, block_m: int,
                   interpret: bool) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for the split kernel."""
    if interpret:
        # Small key tiles, so that test caches of a few hundred keys still give every split
        # several tiles; 16 (triton_flash's) doubles the time the numpy interpreter takes.
        return 32, 1, 1
    # Streaming, not compute: the loop only has to keep enough K/V bytes in flight. Under 64
    # stacked rows tl.dot is mma.sync, where four stages are three K+V buffers (96 KB for
    # 64-key tiles at D=128 in 16-bit): two tiles ahead of the math, two programs per SM. From
    # 64 rows it is wgmma, which holds all four. fp32 and D=256 halve the key tile to keep
    # those sizes, D=32 doubles it (at 64 keys ptxas spills a few words); D=256 and 128-row
    # tiles get eight warps, as in triton_flash. Every head dim, dtype and row count compiles
    # for sm_90 without spills.
    if dtype == torch.float32 or head_dim > 128:
        block_n = 32
    elif head_dim <= 32:
        block_n = 128
    else:
        block_n = 64
    num_warps = 8 if block_m > 64 or head_dim > 128 else 4
    return block_n, num_warps, 4


def choose_num_splits(batch: int, kv_heads: int, kv_len: int, sm_count: int) -> int:
    """How many contiguous chunks to cut each head's KV cache into.

    Decode reads every K/V byte once, and bandwidth needs every SM busy: batch * kv_heads
    programs alone leave most of an H100 idle at small batch (8 of 132 SMs at batch 1 with
    8 KV heads). Splitting the keys multiplies the programs, aiming at four per SM (two waves
    of the two that fit), but a split keeps at least MIN_SPLIT_KEYS keys, so that its load
    pipeline runs at steady state and the combine pass stays small. Large batches and short
    caches get 1 split, which skips the combine pass.
    """
    wanted = math.ceil(_PROGRAMS_PER_SM * sm_count / max(batch * kv_heads, 1))
    return max(1, min(wanted, kv_len // MIN_SPLIT_KEYS))


def is_decode_shape(seq_len: int, kv_len: int, heads: int, kv_heads: int) -> bool:
    """Whether this kernel, rather than the prefill kernel, should serve the shape.

    Yes when there are at most 16 queries per sequence (decode, speculative decode), the GQA
    group's stacked query rows fit one tile ((heads // kv_heads) * seq_len <= MAX_STACKED_ROWS)
    and the cache has at least MIN_DECODE_KV_LEN keys. Otherwise the prefill kernel, which
    parallelises over query blocks and query heads, has enough programs by itself.
    """
    return (1 <= seq_len <= 16 and kv_heads >= 1 and kv_len >= MIN_DECODE_KV_LEN
            and (heads // kv_heads) * seq_len <= MAX_STACKED_ROWS)


def unsupported_reason(
    *, heads: int, kv_heads: int, seq_len: int, kv_len: int, head_dim: int, dtype: torch.dtype,
    causal: bool, window: int | None = None, softcap: float | None = None,
    page_size: int | None = None,
) -> str | None:
    """Return None when the kernel can run this case, else a one-line reason why not.

    ``window``, ``softcap`` and ``page_size`` are the case's (None: not asked for); with a
    paged cache ``kv_len`` is the longest sequence's cache length."""
    # The attention tiles are triton_flash's, so are its limits.
    reason = triton_flash.unsupported_reason(
        heads=heads, kv_heads=kv_heads, seq_len=seq_len, kv_len=kv_len, head_dim=head_dim,
        dtype=dtype, causal=causal)
    if reason is not None:
        return reason
    if dtype == torch.float32 and head_dim > 128:
        return (f"float32 at head_dim {head_dim}: its K/V tiles do not fit registers and "
                "shared memory")
    if (heads // kv_heads) * seq_len > MAX_STACKED_ROWS:
        return (f"(heads // kv_heads) * seq_len = {(heads // kv_heads) * seq_len} query rows per "
                f"KV head is more than one {MAX_STACKED_ROWS}-row tile")
    if window is not None and window < 0:
        return f"window {window} is negative"
    if window is not None and not causal:
        return "a sliding window needs causal: it is a left limit on the causal diagonal"
    if softcap is not None and not (0 < softcap < math.inf):
        return f"softcap {softcap} is not a positive finite number"
    if page_size is not None and page_size < 1:
        return f"page_size {page_size} is not a positive number of keys"
    if page_size is not None and not is_decode_shape(seq_len, kv_len, heads, kv_heads):
        why = (f"seq_len {seq_len} is more than 16 queries" if seq_len > 16 else
               f"kv_len {kv_len} is under {MIN_DECODE_KV_LEN} keys")
        return (f"a paged KV cache only in decode shapes ({why}): there is no paged prefill "
                "kernel")
    return None


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   block_table: torch.Tensor | None, cache_seqlens: torch.Tensor | None
                   ) -> tuple[int, int, int | None]:
    """(kv_heads, the cache's capacity in keys, the page size or None), once the tensors'
    shapes, dtypes and devices agree."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k and v must be 4-D: q (batch, heads, seq_len, head_dim), k and v "
                         "(batch, kv_heads, kv_len, head_dim) or, paged, (pages, page_size, "
                         "kv_heads, head_dim)")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share dtype and device")
    batch, head_dim = q.shape[0], q.shape[3]
    if block_table is None:
        kv_batch, kv_heads, capacity, kv_dim = k.shape
        page_size = None
    else:
        if (block_table.dim() != 2 or block_table.dtype != torch.int32
                or block_table.device != q.device):
            raise ValueError("block_table must be int32 (batch, pages per sequence) on q's device")
        kv_batch, pages_per_seq = block_table.shape
        page_size, kv_heads, kv_dim = k.shape[1:]
        capacity = pages_per_seq * page_size
    if v.shape != k.shape or kv_batch != batch or kv_dim != head_dim:
        raise ValueError(f"incompatible shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}"
                         + (f", block_table {tuple(block_table.shape)}" if block_table is not None
                            else ""))
    if cache_seqlens is not None and (cache_seqlens.shape != (batch,)
                                      or cache_seqlens.dtype != torch.int32
                                      or cache_seqlens.device != q.device):
        raise ValueError(f"cache_seqlens must be int32 ({batch},) on q's device")
    return kv_heads, capacity, page_size


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


class _Plan(NamedTuple):
    block_m: int
    block_n: int
    block_d: int
    num_warps: int
    num_stages: int
    page_size: int | None
    gather: bool  # paged, pages shorter than (or not a multiple of) the key tile
    window: int | None  # None too when the window holds the whole cache
    num_splits: int
    split_len: int


def _page_tiles(page_size: int, block_n: int) -> tuple[int, bool]:
    """(BLOCK_N, gather) for a paged cache: a tile inside one page when pages are a multiple
    of the tile, or a power of two of at least _MIN_PAGE_TILE keys (the tile shrinks to the
    page); else the tile's rows gathered through the block table."""
    if page_size % block_n == 0:
        return block_n, False
    if page_size >= _MIN_PAGE_TILE and page_size & (page_size - 1) == 0:
        return page_size, False
    return block_n, True


def _plan(q: torch.Tensor, kv_heads: int, capacity: int, page_size: int | None,
          window: int | None, num_splits: int | None, interpret: bool) -> _Plan:
    batch, heads, seq_len, head_dim = q.shape
    rows = heads // kv_heads * seq_len
    block_m = max(16, triton.next_power_of_2(rows))  # tl.dot needs M >= 16
    block_n, num_warps, num_stages = _launch_config(head_dim, q.dtype, block_m, interpret)
    gather = False
    if page_size is not None:
        block_n, gather = _page_tiles(page_size, block_n)
        # A tile's loads wait on its block-table entry, and the pipeliner splits the stages
        # between the two: twice the dense kernel's distance keeps its K/V buffers.
        num_stages = 2 * num_stages - 1
    if window is not None and window >= capacity:
        window = None  # every key of the cache is inside it: plain causal
    # The keys the splits cover: the whole cache, or the window's (from its first key rounded
    # down to a tile). Splits are chosen by the keys read, cut in whole tiles, and splits that
    # would start past the last key are not launched.
    span = capacity if window is None else min(capacity, seq_len + window + block_n - 1)
    if num_splits is None:
        read = capacity if window is None else min(capacity, seq_len + window)
        num_splits = choose_num_splits(batch, kv_heads, read, _sm_count(q.device))
    if num_splits < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    split_len = triton.cdiv(triton.cdiv(span, num_splits), block_n) * block_n
    return _Plan(block_m, block_n, triton.next_power_of_2(head_dim), num_warps, num_stages,
                 page_size, gather, window, triton.cdiv(span, split_len), split_len)


def decode_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
    num_splits: int | None = None, fp32_precision: str = "tf32", window: int | None = None,
    softcap: float | None = None, block_table: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a few queries q (B, H, N, D) over a KV cache.

    The cache is k, v (B, Hkv, Nk, D), or with ``block_table`` (int32 (B, pages per sequence))
    pools k, v (pages, page_size, Hkv, D) whose pages the table names in order.
    ``cache_seqlens`` (int32 (B,)) gives each sequence's cache length (default: all of it, Nk
    or pages per sequence × page_size); keys past it, and pages wholly past it or before a
    window, are never read into the result. Causal aligns the diagonal to each sequence's
    end. Not checked on the device: that each length is at most the capacity (and at least
    N when causal) and that the table names pages of the pool. ``window`` keeps keys
    i' - window <= j <= i' (causal only); ``softcap`` caps the scaled scores as
    c·tanh(s/c) before masking.
    Returns the output in q's dtype and the fp32 natural-log log-sum-exp (B, H, N); a row
    that sees no key gets 0 and -inf. ``num_splits`` overrides ``choose_num_splits``; splits
    are rounded to whole key tiles, and splits that would start past the last key are not
    launched. ``fp32_precision`` is how fp32 inputs are multiplied on a GPU: "tf32" or "ieee"
    (triton_flash.dot_precision).
    """
    kv_heads, capacity, page_size = _check_tensors(q, k, v, block_table, cache_seqlens)
    reason = unsupported_reason(
        heads=q.shape[1], kv_heads=kv_heads, seq_len=q.shape[2], kv_len=capacity,
        head_dim=q.shape[3], dtype=q.dtype, causal=causal, window=window, softcap=softcap,
        page_size=page_size)
    if reason is not None:
        raise ValueError(reason)
    precision = triton_flash.dot_precision(q.dtype, fp32_precision)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    plan = _plan(q, kv_heads, capacity, page_size, window, num_splits, interpret)
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    # Partials in rows of flat (batch, head, query), so each KV head's group is a block of
    # rows; one split writes the output and LSE directly and needs no combine.
    if plan.num_splits == 1:
        part, lse_part = out, lse
    else:
        part = torch.empty((batch * heads * seq_len, plan.num_splits, head_dim),
                           dtype=torch.float32, device=q.device)
        lse_part = torch.empty((batch * heads * seq_len, plan.num_splits), dtype=torch.float32,
                               device=q.device)
    _launch_splits(q, k, v, part, lse_part, plan, kv_heads=kv_heads, capacity=capacity,
                   causal=causal, scale=scale, softcap=softcap, block_table=block_table,
                   cache_seqlens=cache_seqlens, precision=precision, interpret=interpret)
    if plan.num_splits > 1:
        _combine(part, lse_part, out, lse, plan.num_splits, plan.block_d, interpret)
    return out, lse


def _kv_arguments(k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor | None,
                  plan: _Plan) -> tuple:
    """The split kernel's K/V arguments: (desc_k, desc_v, K, V, Block_table, table_stride,
    stride_page, stride_slot, stride_head); None and 0 where the layout needs none."""
    box = [1, 1, plan.block_n, plan.block_d]
    if block_table is None:
        k, v = _tma_ready(k), _tma_ready(v)
        return (TensorDescriptor.from_tensor(k, box), TensorDescriptor.from_tensor(v, box),
                None, None, None, 0, 0, 0, 0)
    if block_table.stride(1) != 1:
        block_table = block_table.contiguous()
    if plan.gather:
        # Pointer loads: any strides with a unit last one, the same for both pools.
        if k.stride(-1) != 1 or v.stride() != k.stride():
            k, v = k.contiguous(), v.contiguous()
        return (None, None, k, v, block_table, block_table.stride(0), *k.stride()[:3])
    # Descriptors over (pages, kv_heads, page_size, D) views of the pools: a tile is then the
    # dense kernel's box (the copy engine takes any 16-byte strides).
    k, v = _tma_ready(k).transpose(1, 2), _tma_ready(v).transpose(1, 2)
    return (TensorDescriptor.from_tensor(k, box), TensorDescriptor.from_tensor(v, box),
            None, None, block_table, block_table.stride(0), 0, 0, 0)


def _launch_splits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, part: torch.Tensor,
                   lse_part: torch.Tensor, plan: _Plan, *, kv_heads: int, capacity: int,
                   causal: bool, scale: float, softcap: float | None,
                   block_table: torch.Tensor | None, cache_seqlens: torch.Tensor | None,
                   precision: str, interpret: bool) -> None:
    batch, heads, seq_len, head_dim = q.shape
    rows = heads // kv_heads * seq_len
    # reshape is a view whenever heads and queries merge (always at seq_len 1), else a copy of
    # the small q.
    q = _tma_ready(q.reshape(batch, 1, heads * seq_len, head_dim))
    desc_k, desc_v, pool_k, pool_v, table, *strides = _kv_arguments(k, v, block_table, plan)
    if softcap is None:
        qk_scale, cap_scale = scale * _LOG2E, 0.0
    else:
        qk_scale, cap_scale = 2 * _LOG2E * scale / softcap, softcap * _LOG2E
    _split_kv_kernel[(plan.num_splits, batch * kv_heads)](
        TensorDescriptor.from_tensor(q, [1, 1, plan.block_m, plan.block_d]), desc_k, desc_v,
        TensorDescriptor.from_tensor(
            part.view(batch * kv_heads, rows, plan.num_splits, head_dim),
            [1, plan.block_m, 1, plan.block_d]),
        lse_part, pool_k, pool_v, table, cache_seqlens,
        kv_heads, rows, seq_len, capacity, plan.split_len, plan.num_splits, qk_scale, cap_scale,
        plan.window or 0, *strides, head_dim,
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, CAUSAL=causal,
        WINDOW=plan.window is not None, SOFTCAP=softcap is not None,
        SEQLENS=cache_seqlens is not None, PAGED=table is not None, GATHER=plan.gather,
        PAGE_SIZE=plan.page_size or 0, INTERPRET=interpret, DOT_PRECISION=precision,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )


def _combine(part, lse_part, out, lse, num_splits: int, block_d: int, interpret: bool) -> None:
    # Up to 32 splits of a row in one load (16 KB at D=128); more take several.
    block_s = min(triton.next_power_of_2(num_splits), 32)
    total_rows, head_dim = part.shape[0], part.shape[2]
    _combine_kernel[(total_rows,)](
        TensorDescriptor.from_tensor(part.view(1, total_rows, num_splits, head_dim),
                                     [1, 1, block_s, block_d]),
        lse_part,
        TensorDescriptor.from_tensor(out.view(1, 1, total_rows, head_dim),
                                     [1, 1, 1, block_d]),
        lse, num_splits,
        BLOCK_S=block_s, BLOCK_D=block_d, INTERPRET=interpret, num_warps=4, num_stages=2,
    )

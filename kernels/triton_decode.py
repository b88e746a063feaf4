"""Split-KV decode attention (flash-decoding) in Triton: a few queries against a long KV cache."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
from triton.testing import do_bench_cudagraph
from triton.tools.tensor_descriptor import TensorDescriptor

from flashbench.kernels import triton_flash
from flashbench.kernels.triton_decode_configs import DecodeConfig, candidate_configs, tuning_key
from flashbench.kernels.triton_decode_split import _combine_kernel, _split_kv_kernel
from flashbench.kernels.triton_flash import _tma_ready

__all__ = ["FEATURES", "MAX_STACKED_ROWS", "MIN_DECODE_KV_LEN", "MIN_SPLIT_KEYS", "DecodeConfig",
           "choose_num_splits", "decode_candidates", "decode_forward", "default_config",
           "is_decode_shape", "tuned_config", "unsupported_reason"]

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
# The fused combine reads a group's partials in tiles of at most this many fp32 values (32 KB):
# 64 registers a thread at four warps, which the attention loop no longer holds by then.
_TAIL_TILE = 8192
# One int32 arrival counter per (sequence, KV head) group for the fused combine, zero between
# launches (the last split of a group resets its own), so that a buffer is allocated once and
# reused without a memset. Keyed by (device, stream id): two decode calls running concurrently
# must not share counters (each would count the other's splits); calls queued on one stream run
# one after the other. Not covered: CUDA graphs captured on one stream (they then hold one
# buffer) and replayed concurrently on different streams.
_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}
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


def default_config(head_dim: int, dtype: torch.dtype, block_m: int, paged: bool,
                   interpret: bool) -> DecodeConfig:
    """The configuration used without tuning: the formula's split count, _launch_config's tile
    and stages (doubled for a paged cache)."""
    block_n, _, num_stages = _launch_config(head_dim, dtype, block_m, interpret)
    if paged:
        # A tile's loads wait on its block-table entry, and the pipeliner splits the stages
        # between the two: twice the dense kernel's distance keeps its K/V buffers.
        num_stages = 2 * num_stages - 1
    return DecodeConfig(1.0, block_n, num_stages)


def choose_num_splits(batch: int, kv_heads: int, kv_len: int, sm_count: int,
                      scale: float = 1.0) -> int:
    """How many contiguous chunks to cut each head's KV cache into.

    Decode reads every K/V byte once, and bandwidth needs every SM busy: batch * kv_heads
    programs alone leave most of an H100 idle at small batch (8 of 132 SMs at batch 1 with
    8 KV heads). Splitting the keys multiplies the programs, aiming at four per SM (two waves
    of the two that fit), but a split keeps at least MIN_SPLIT_KEYS keys, so that its load
    pipeline runs at steady state and the combine pass stays small. Large batches and short
    caches get 1 split, which skips the combine pass. ``scale`` (a tuning candidate's) multiplies
    that count, rounded up, within the same bounds.
    """
    wanted = math.ceil(_PROGRAMS_PER_SM * sm_count / max(batch * kv_heads, 1))
    most = max(1, kv_len // MIN_SPLIT_KEYS)
    return min(math.ceil(min(wanted, most) * scale), most)


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


def _block_m(q: torch.Tensor, kv_heads: int) -> int:
    """The Q tile's rows: the GQA group's stacked query rows, at least 16 (tl.dot's M)."""
    return max(16, triton.next_power_of_2(q.shape[1] // kv_heads * q.shape[2]))


def _plan(q: torch.Tensor, kv_heads: int, capacity: int, page_size: int | None,
          window: int | None, num_splits: int | None, config: DecodeConfig | None,
          interpret: bool) -> _Plan:
    batch, heads, seq_len, head_dim = q.shape
    block_m = _block_m(q, kv_heads)
    _, num_warps, _ = _launch_config(head_dim, q.dtype, block_m, interpret)
    if config is None:
        config = default_config(head_dim, q.dtype, block_m, page_size is not None, interpret)
    block_n, gather = config.block_n, False
    if page_size is not None:
        block_n, gather = _page_tiles(page_size, block_n)
    if window is not None and window >= capacity:
        window = None  # every key of the cache is inside it: plain causal
    # The keys the splits cover: the whole cache, or the window's (from its first key rounded
    # down to a tile). Splits are chosen by the keys read, cut in whole tiles, and splits that
    # would start past the last key are not launched.
    span = capacity if window is None else min(capacity, seq_len + window + block_n - 1)
    if num_splits is None:
        read = capacity if window is None else min(capacity, seq_len + window)
        num_splits = choose_num_splits(batch, kv_heads, read, _sm_count(q.device),
                                       config.split_scale)
    if num_splits < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    split_len = triton.cdiv(triton.cdiv(span, num_splits), block_n) * block_n
    return _Plan(block_m, block_n, triton.next_power_of_2(head_dim), num_warps,
                 config.num_stages, page_size, gather, window, triton.cdiv(span, split_len),
                 split_len)


def decode_candidates(q: torch.Tensor, kv_heads: int, capacity: int, page_size: int | None,
                      window: int | None) -> list[DecodeConfig]:
    """The GPU configurations the tuner times for this shape (candidate_configs), less those
    that would launch what an earlier one launches: at a short cache the bounded split counts
    coincide, and a page may shrink a tile to itself."""
    block_m = _block_m(q, kv_heads)
    default = default_config(q.shape[3], q.dtype, block_m, page_size is not None, False)
    plans: set[_Plan] = set()
    kept = []
    for config in candidate_configs(default, q.shape[3], q.dtype, block_m):
        plan = _plan(q, kv_heads, capacity, page_size, window, None, config, False)
        if plan not in plans:
            plans.add(plan)
            kept.append(config)
    return kept


def tuned_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                 scale: float, fp32_precision: str = "tf32", window: int | None = None,
                 softcap: float | None = None, block_table: torch.Tensor | None = None,
                 cache_seqlens: torch.Tensor | None = None) -> tuple[DecodeConfig | None, float]:
    """The fastest of ``decode_candidates`` for this shape class on this GPU (decode_forward's
    arguments), and the seconds spent tuning; (None, 0.0), the formula's choices, under the
    interpreter or off CUDA. Tuned once per ``tuning_key`` and cached on disk
    (flashbench.measure.tuning), every candidate timed with the combine fused."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not q.is_cuda:
        return None, 0.0
    from flashbench.measure import tuning

    kv_heads, capacity, page_size = _check_tensors(q, k, v, block_table, cache_seqlens)
    batch, heads, seq_len, head_dim = q.shape
    plan = _plan(q, kv_heads, capacity, page_size, window, None, None, False)
    key = tuning_key(
        torch.cuda.get_device_name(q.device), head_dim, q.dtype, fp32_precision,
        rows=heads // kv_heads * seq_len, programs=batch * kv_heads,
        kv_len=capacity if plan.window is None else min(capacity, seq_len + plan.window),
        window=plan.window, softcap=softcap, seqlens=cache_seqlens is not None,
        page_size=page_size, gather=plan.gather)
    kwargs = dict(causal=causal, scale=scale, fp32_precision=fp32_precision, window=window,
                  softcap=softcap, block_table=block_table, cache_seqlens=cache_seqlens)
    return tuning.tune(
        key, decode_candidates(q, kv_heads, capacity, page_size, window),
        make=lambda cfg: lambda: decode_forward(q, k, v, config=cfg, **kwargs),
        encode=lambda cfg: cfg._asdict(), decode=lambda d: DecodeConfig(**d),
        measure=_graph_ms)


def _graph_ms(fn) -> float:
    """Median ms of ``fn`` replayed in a CUDA graph. Not per-call events, as tuning does for
    prefill: a decode call's host time (~0.1 ms of Python) exceeds its GPU time at small
    shapes, so events around one call would time the host and rank its jitter."""
    return do_bench_cudagraph(fn, return_mode="median")


def decode_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
    num_splits: int | None = None, fp32_precision: str = "tf32", window: int | None = None,
    softcap: float | None = None, block_table: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | None = None, config: DecodeConfig | None = None,
    fused_combine: bool = True,
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
    launched. ``config`` (a tuning candidate, see ``tuned_config``) scales that count and sets
    the key tile and pipeline stages; by default ``default_config``. With more than one split
    the splits are combined by the last of each KV head's splits to finish, in the same launch;
    ``fused_combine=False`` combines them in a second launch instead (the previous scheme, kept
    to compare). ``fp32_precision`` is how fp32 inputs are multiplied on a GPU: "tf32" or
    "ieee" (triton_flash.dot_precision).
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
    plan = _plan(q, kv_heads, capacity, page_size, window, num_splits, config, interpret)
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    outputs = _split_outputs(out, lse, plan, kv_heads, fused_combine)
    _launch_splits(q, k, v, outputs, plan, kv_heads=kv_heads, capacity=capacity,
                   causal=causal, scale=scale, softcap=softcap, block_table=block_table,
                   cache_seqlens=cache_seqlens, precision=precision, interpret=interpret)
    if plan.num_splits > 1 and not outputs["FUSED"]:
        _combine(outputs["Part"], outputs["Lse_part"], out, lse, plan.num_splits, plan.block_d,
                 interpret)
    return out, lse


def _split_outputs(out: torch.Tensor, lse: torch.Tensor, plan: _Plan, kv_heads: int,
                   fused: bool) -> dict:
    """The split kernel's output arguments. One split writes the output and LSE directly (a
    descriptor store) and needs no combine. More write fp32 partials and LSEs in rows of flat
    (batch, head, query), so that each KV head's group is a block of rows: by descriptor for
    the combine kernel, or (``fused``) by pointer stores, with the groups' counters."""
    batch, heads, seq_len, head_dim = out.shape
    groups, rows = batch * kv_heads, heads // kv_heads * seq_len
    box = [1, plan.block_m, 1, plan.block_d]
    unfused = dict(Part=None, Out=None, Lse=None, Counters=None, FUSED=False, TAIL_R=1,
                   TAIL_S=1)
    if plan.num_splits == 1:
        po = TensorDescriptor.from_tensor(out.view(groups, rows, 1, head_dim), box)
        return unfused | dict(desc_po=po, Lse_part=lse)
    part = torch.empty((batch * heads * seq_len, plan.num_splits, head_dim),
                       dtype=torch.float32, device=out.device)
    lse_part = torch.empty((batch * heads * seq_len, plan.num_splits), dtype=torch.float32,
                           device=out.device)
    if not fused:
        po = TensorDescriptor.from_tensor(part.view(groups, rows, plan.num_splits, head_dim),
                                          box)
        return unfused | dict(desc_po=po, Part=part, Lse_part=lse_part)
    tail_r, tail_s = _tail_blocks(rows, plan.num_splits, plan.block_d)
    return dict(desc_po=None, Part=part, Lse_part=lse_part, Out=out, Lse=lse,
                Counters=_counters(out.device, groups), FUSED=True, TAIL_R=tail_r,
                TAIL_S=tail_s)


def _tail_blocks(rows: int, num_splits: int, block_d: int) -> tuple[int, int]:
    """(TAIL_R, TAIL_S): the fused combine reads a group's partials TAIL_R rows by TAIL_S
    splits at a time, in as few tiles of at most _TAIL_TILE values as it can (each tile is
    one round trip to L2, and the tail is the critical path of the launch's last wave)."""
    tail_s = min(triton.next_power_of_2(num_splits), max(1, _TAIL_TILE // block_d))
    return min(triton.next_power_of_2(rows), max(1, _TAIL_TILE // (tail_s * block_d))), tail_s


def _counters(device: torch.device, groups: int) -> torch.Tensor:
    """At least ``groups`` zeroed int32 counters for the fused combine (see _COUNTERS)."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    buf = _COUNTERS.get((device, stream))
    if buf is None or buf.numel() < groups:
        # A launch still queued with the old buffer keeps its memory: the caching allocator
        # reuses it only for work queued after that launch on the same stream.
        buf = torch.zeros(triton.next_power_of_2(groups), dtype=torch.int32, device=device)
        _COUNTERS[(device, stream)] = buf
    return buf


def _kv_arguments(k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor | None,
                  plan: _Plan) -> dict:
    """The split kernel's K/V arguments by name; None and 0 where the layout needs none."""
    box = [1, 1, plan.block_n, plan.block_d]
    none = dict(desc_k=None, desc_v=None, K=None, V=None, Block_table=None, table_stride=0,
                stride_page=0, stride_slot=0, stride_head=0)
    if block_table is None:
        k, v = _tma_ready(k), _tma_ready(v)
        return none | dict(desc_k=TensorDescriptor.from_tensor(k, box),
                           desc_v=TensorDescriptor.from_tensor(v, box))
    if block_table.stride(1) != 1:
        block_table = block_table.contiguous()
    paged = none | dict(Block_table=block_table, table_stride=block_table.stride(0))
    if plan.gather:
        # Pointer loads: any strides with a unit last one, the same for both pools.
        if k.stride(-1) != 1 or v.stride() != k.stride():
            k, v = k.contiguous(), v.contiguous()
        return paged | dict(K=k, V=v, stride_page=k.stride(0), stride_slot=k.stride(1),
                            stride_head=k.stride(2))
    # Descriptors over (pages, kv_heads, page_size, D) views of the pools: a tile is then the
    # dense kernel's box (the copy engine takes any 16-byte strides).
    k, v = _tma_ready(k).transpose(1, 2), _tma_ready(v).transpose(1, 2)
    return paged | dict(desc_k=TensorDescriptor.from_tensor(k, box),
                        desc_v=TensorDescriptor.from_tensor(v, box))


def _launch_splits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, outputs: dict,
                   plan: _Plan, *, kv_heads: int, capacity: int, causal: bool, scale: float,
                   softcap: float | None, block_table: torch.Tensor | None,
                   cache_seqlens: torch.Tensor | None, precision: str, interpret: bool) -> None:
    """Stage 1, with the output arguments of _split_outputs (and in them, FUSED: stage 2)."""
    batch, heads, seq_len, head_dim = q.shape
    # reshape is a view whenever heads and queries merge (always at seq_len 1), else a copy of
    # the small q.
    q = _tma_ready(q.reshape(batch, 1, heads * seq_len, head_dim))
    if softcap is None:
        qk_scale, cap_scale = scale * _LOG2E, 0.0
    else:
        qk_scale, cap_scale = 2 * _LOG2E * scale / softcap, softcap * _LOG2E
    _split_kv_kernel[(plan.num_splits, batch * kv_heads)](
        desc_q=TensorDescriptor.from_tensor(q, [1, 1, plan.block_m, plan.block_d]),
        **_kv_arguments(k, v, block_table, plan), **outputs, Cache_seqlens=cache_seqlens,
        kv_heads=kv_heads, rows=heads // kv_heads * seq_len, seq_len=seq_len, kv_len=capacity,
        split_len=plan.split_len, num_splits=plan.num_splits, qk_scale=qk_scale,
        cap_scale=cap_scale, window=plan.window or 0, head_dim=head_dim,
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d, CAUSAL=causal,
        WINDOW=plan.window is not None, SOFTCAP=softcap is not None,
        SEQLENS=cache_seqlens is not None, PAGED=block_table is not None, GATHER=plan.gather,
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

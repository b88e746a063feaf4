"""Split-KV decode attention (flash-decoding) in Triton: a few queries against a long KV cache."""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from flashbench.kernels import triton_flash
from flashbench.kernels.triton_flash import _attend_rows, _load_tile, _tma_ready

__all__ = ["MAX_STACKED_ROWS", "MIN_DECODE_KV_LEN", "MIN_SPLIT_KEYS", "choose_num_splits",
           "decode_forward", "is_decode_shape", "unsupported_reason"]

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


@triton.jit
def _split_kv_kernel(
    desc_q, desc_k, desc_v, desc_po, Lse_part,
    kv_heads, rows, seq_len, kv_len, split_len, num_splits, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    pid_bk = tl.program_id(1)
    batch = pid_bk // kv_heads
    kv_head = pid_bk % kv_heads

    # The group's query heads are consecutive, so its `rows` = group * seq_len query rows are
    # consecutive in q viewed as (batch, 1, heads * seq_len, D): one tile, and every K/V tile
    # read below serves the whole group. Rows past `rows` (the next group's, or zero fill)
    # are computed independently and never stored.
    offs_r = tl.arange(0, BLOCK_M)
    q = _load_tile(desc_q, batch, 0, kv_head * rows, BLOCK_M, BLOCK_D, INTERPRET)

    # split_len is a whole number of tiles, so only the cache's last tile straddles an end.
    lo = split * split_len
    hi = tl.minimum(lo + split_len, kv_len)
    # Bottom-right causal alignment: query position i sees key j iff j <= i + diag. Keys below
    # diag + 1 are seen by every position; only the last seq_len - 1 keys need a mask.
    diag = kv_len - seq_len
    if CAUSAL:
        seen_by_all = tl.minimum(diag + 1, hi)
    else:
        seen_by_all = hi
    unmasked_hi = tl.maximum(seen_by_all // BLOCK_N * BLOCK_N, lo)
    pos = offs_r % seq_len
    # Normalised output and natural-log LSE: with one split these are the final results
    # (desc_po is then the output itself), and the combine needs nothing else. A row that saw
    # no key of this split (causal, last split) stores 0 and -inf, which weigh nothing there.
    out, lse = _attend_rows(q, desc_k, desc_v, batch, kv_head, lo, unmasked_hi, hi, pos, kv_len,
                            diag, qk_scale, CAUSAL, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_D,
                            DOT_PRECISION)
    # Viewed as (batch * kv_heads, rows, num_splits, D): the store is clipped to this group.
    desc_po.store([pid_bk, 0, split, 0],
                  out.to(desc_po.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))
    flat_row = pid_bk.to(tl.int64) * rows + offs_r
    tl.store(Lse_part + flat_row * num_splits + split, lse, mask=offs_r < rows)


@triton.jit
def _combine_chunk(acc, l_i, m_i, desc_po, Lse_part, row, s0, num_splits,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_s = s0 + tl.arange(0, BLOCK_S)
    lse = tl.load(Lse_part + row.to(tl.int64) * num_splits + offs_s, mask=offs_s < num_splits,
                  other=float("-inf")) * 1.4426950408889634
    # Splits past the last are zero-filled by the descriptor and weigh exp2(-inf) = 0.
    part = desc_po.load([0, row, s0, 0]).reshape(BLOCK_S, BLOCK_D)
    m_new = tl.maximum(m_i, tl.max(lse, 0))
    w = tl.exp2(lse - m_new)
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(w, 0)
    acc = acc * alpha + tl.sum(w[:, None] * part, 0)
    return acc, l_i, m_new


@triton.jit
def _combine_kernel(
    desc_po, Lse_part, desc_o, Lse, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    # One program per output row (flat batch, head, query), whose partials lie contiguous,
    # BLOCK_S splits at a time. Descriptor offsets are int32, pointer offsets int64.
    row = tl.program_id(0)
    m_i = tl.full([], -1.0e30, dtype=tl.float32)
    l_i = tl.full([], 0.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    # Same interpreter workaround as triton_flash._attend_tiles: no range() over runtime bounds.
    if INTERPRET:
        s0 = 0
        while s0 < num_splits:
            acc, l_i, m_i = _combine_chunk(acc, l_i, m_i, desc_po, Lse_part, row, s0, num_splits,
                                           BLOCK_S, BLOCK_D)
            s0 += BLOCK_S
    else:
        for s0 in range(0, num_splits, BLOCK_S):
            acc, l_i, m_i = _combine_chunk(acc, l_i, m_i, desc_po, Lse_part, row, s0, num_splits,
                                           BLOCK_S, BLOCK_D)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)
    desc_o.store([0, 0, row, 0], out.to(desc_o.dtype).reshape(1, 1, 1, BLOCK_D))
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    tl.store(Lse + row.to(tl.int64), lse)


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
    causal: bool,
) -> str | None:
    """Return None when the kernel can run this shape, else a one-line reason why not."""
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
    return None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    triton_flash._check_inputs(q, k, v, causal)
    reason = unsupported_reason(heads=q.shape[1], kv_heads=k.shape[1], seq_len=q.shape[2],
                                kv_len=k.shape[2], head_dim=q.shape[3], dtype=q.dtype,
                                causal=causal)
    if reason is not None:
        raise ValueError(reason)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
    num_splits: int | None = None, fp32_precision: str = "tf32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a few queries q (B, H, N, D) over a KV cache k, v (B, Hkv, Nk, D).

    Returns the output in q's dtype and the fp32 natural-log log-sum-exp (B, H, N).
    ``num_splits`` overrides ``choose_num_splits``; splits are rounded to whole key tiles, and
    splits that would start past the last key are not launched. ``fp32_precision`` is how fp32
    inputs are multiplied on a GPU: "tf32" or "ieee" (triton_flash.dot_precision).
    """
    _check_inputs(q, k, v, causal)
    precision = triton_flash.dot_precision(q.dtype, fp32_precision)
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    rows = heads // kv_heads * seq_len
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    block_m = max(16, triton.next_power_of_2(rows))  # tl.dot needs M >= 16
    block_d = triton.next_power_of_2(head_dim)
    block_n, num_warps, num_stages = _launch_config(head_dim, q.dtype, block_m, interpret)
    if num_splits is None:
        num_splits = choose_num_splits(batch, kv_heads, kv_len, _sm_count(q.device))
    if num_splits < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    split_len = triton.cdiv(triton.cdiv(kv_len, num_splits), block_n) * block_n
    num_splits = triton.cdiv(kv_len, split_len)

    # reshape is a view whenever heads and queries merge (always at seq_len 1), else a copy of
    # the small q.
    q = _tma_ready(q.reshape(batch, 1, heads * seq_len, head_dim))
    k, v = _tma_ready(k), _tma_ready(v)
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    # Partials in rows of flat (batch, head, query), so each KV head's group is a block of
    # rows; one split writes the output and LSE directly and needs no combine.
    if num_splits == 1:
        part, lse_part = out, lse
    else:
        part = torch.empty((batch * heads * seq_len, num_splits, head_dim), dtype=torch.float32,
                           device=q.device)
        lse_part = torch.empty((batch * heads * seq_len, num_splits), dtype=torch.float32,
                               device=q.device)

    desc_q = TensorDescriptor.from_tensor(q, [1, 1, block_m, block_d])
    desc_k = TensorDescriptor.from_tensor(k, [1, 1, block_n, block_d])
    desc_v = TensorDescriptor.from_tensor(v, [1, 1, block_n, block_d])
    desc_po = TensorDescriptor.from_tensor(
        part.view(batch * kv_heads, rows, num_splits, head_dim), [1, block_m, 1, block_d])
    _split_kv_kernel[(num_splits, batch * kv_heads)](
        desc_q, desc_k, desc_v, desc_po, lse_part,
        kv_heads, rows, seq_len, kv_len, split_len, num_splits, scale * _LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, CAUSAL=causal, INTERPRET=interpret,
        DOT_PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1:
        # Up to 32 splits of a row in one load (16 KB at D=128); more take several.
        block_s = min(triton.next_power_of_2(num_splits), 32)
        total_rows = batch * heads * seq_len
        _combine_kernel[(total_rows,)](
            TensorDescriptor.from_tensor(part.view(1, total_rows, num_splits, head_dim),
                                         [1, 1, block_s, block_d]),
            lse_part,
            TensorDescriptor.from_tensor(out.view(1, 1, total_rows, head_dim),
                                         [1, 1, 1, block_d]),
            lse, num_splits,
            BLOCK_S=block_s, BLOCK_D=block_d, INTERPRET=interpret, num_warps=4, num_stages=2,
        )
    return out, lse

"""The two kernels of split-KV decode (flash-decoding). Stage 1: one program per (split, sequence,
KV head) attends its GQA group's stacked query rows to one contiguous range of the cache;
stage 2 (with more than one split) combines each row's splits by their log-sum-exp: a kernel of
its own, or (``FUSED``) the tail of stage 1's program that finishes its group's splits last,
found by an atomic counter per group (_combine_if_last).

Each of stage 1's features is a constexpr, so that a launch without any compiles to the dense
kernel's code, instruction for instruction (scripts/inspect_decode.py --sass-dir): ``WINDOW``
(a sliding window: keys before it are never loaded, its edge tile is masked), ``SOFTCAP``
(scores capped as c·tanh(s/c) before masking), ``SEQLENS`` (each sequence's cache length read
from ``cache_seqlens``), ``PAGED`` (K and V pools of pages named by a block table; a tile
inside one page is one descriptor load) and ``GATHER`` (pages shorter than a tile: its rows
gathered by pointer arithmetic). ``FUSED`` (partials by pointer stores, then the counter and,
in the last split, the combine) is on for every launch of more than one split unless the
caller asks for the two launches.
"""

from __future__ import annotations

import triton
import triton.language as tl

from flashbench.kernels.triton_flash import _load_tile

__all__ = ["_combine_kernel", "_split_kv_kernel"]


@triton.jit
def _kv_tiles(desc_k, desc_v, K, V, table, batch, kv_head, start_n, key_lo, kv_len, offs_n,
              offs_d, stride_page, stride_slot, stride_head, head_dim,
              PAGED: tl.constexpr, GATHER: tl.constexpr, PAGE_SIZE: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    """The K and V tiles of keys [start_n, start_n + BLOCK_N) of this sequence and KV head."""
    if GATHER:
        # Pages shorter than the tile: each key's row through the block table, and no load
        # (not even of the block table) outside [key_lo, kv_len), so that pages before a
        # window or past the cache's end may be freed or hold anything.
        cols = start_n + offs_n
        in_cache = (cols >= key_lo) & (cols < kv_len)
        page = tl.load(table + cols // PAGE_SIZE, mask=in_cache, other=0)
        row = (page.to(tl.int64) * stride_page + (cols % PAGE_SIZE) * stride_slot
               + kv_head * stride_head)
        offs = row[:, None] + offs_d[None, :]
        mask = in_cache[:, None] & (offs_d < head_dim)[None, :]
        k = tl.load(K + offs, mask=mask, other=0.0)
        v = tl.load(V + offs, mask=mask, other=0.0)
        if INTERPRET:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
    elif PAGED:
        # The tile lies inside one page (PAGE_SIZE % BLOCK_N == 0): one block-table entry, then
        # the dense kernel's copy-engine loads, from the pools viewed as (pages, kv_heads,
        # page_size, D), the same box at the same shared-memory layout.
        page = tl.load(table + start_n // PAGE_SIZE)
        k = _load_tile(desc_k, page, kv_head, start_n % PAGE_SIZE, BLOCK_N, BLOCK_D, INTERPRET)
        v = _load_tile(desc_v, page, kv_head, start_n % PAGE_SIZE, BLOCK_N, BLOCK_D, INTERPRET)
    else:
        k = _load_tile(desc_k, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
        v = _load_tile(desc_v, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    return k, v


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, k, v, start_n, offs_n, pos, key_lo, kv_len, diag, window, qk_scale,
    cap_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr, CLEAR_V: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        cols = start_n + offs_n
        keep = cols[None, :] < kv_len
        if CAUSAL:
            keep = keep & (cols[None, :] <= pos[:, None] + diag)
        if WINDOW:
            keep = keep & (cols[None, :] >= pos[:, None] + diag - window)
        if CLEAR_V:
            # Rows of the tile outside the cache (a page's unused tail, keys before a window)
            # may hold anything: P is 0 there, but 0 * NaN is not.
            v = tl.where(((cols >= key_lo) & (cols < kv_len))[:, None], v, 0.0)
    if SOFTCAP:
        # qk_scale = 2·log2(e)·scale/c and cap_scale = c·log2(e), so this is
        # c·tanh(scale·qk/c) in base 2, tanh(x) = 1 - 2/(1 + e^2x): exact at both ends
        # (exp2 overflowing to inf gives c, underflowing to 0 gives -c), no NaN.
        qk = cap_scale - (2.0 * cap_scale) / (1.0 + tl.exp2(qk * qk_scale))
        if MASKED:
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
    elif MASKED:
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
    else:
        # Scale inside the max and the exponent, so the subtraction fuses into one FMA per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _step(acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page,
          stride_slot, stride_head, head_dim, start_n, offs_n, offs_d, pos, key_lo, kv_len, diag,
          window, qk_scale, cap_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
          WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, SEQLENS: tl.constexpr,
          PAGED: tl.constexpr, GATHER: tl.constexpr, PAGE_SIZE: tl.constexpr,
          INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
          DOT_PRECISION: tl.constexpr):
    """One key tile: its loads, then the online-softmax update."""
    k, v = _kv_tiles(desc_k, desc_v, K, V, table, batch, kv_head, start_n, key_lo, kv_len,
                     offs_n, offs_d, stride_page, stride_slot, stride_head, head_dim, PAGED,
                     GATHER, PAGE_SIZE, BLOCK_N, BLOCK_D, INTERPRET)
    # Copy-engine tiles hold whatever lies outside this sequence's keys; gathered ones are 0.
    return _attend_tile(acc, l_i, m_i, q, k, v, start_n, offs_n, pos, key_lo, kv_len, diag,
                        window, qk_scale, cap_scale, MASKED, CAUSAL, WINDOW, SOFTCAP,
                        (SEQLENS or WINDOW) and not GATHER, DOT_PRECISION)


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page,
                  stride_slot, stride_head, head_dim, lo, hi, pos, key_lo, kv_len, diag, window,
                  qk_scale, cap_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                  WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, SEQLENS: tl.constexpr,
                  PAGED: tl.constexpr, GATHER: tl.constexpr, PAGE_SIZE: tl.constexpr,
                  INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """Keys [lo, hi) in tiles (the constexprs are _split_kv_kernel's)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # The interpreter's scalars are 1-element numpy arrays, which range() rejects under
    # numpy >= 2.4; a while loop only needs their truth value. The GPU keeps the for loop,
    # which is what the software pipeliner (num_stages) works on.
    if INTERPRET:
        start_n = lo
        while start_n < hi:
            acc, l_i, m_i = _step(
                acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page,
                stride_slot, stride_head, head_dim, start_n, offs_n, offs_d, pos, key_lo,
                kv_len, diag, window, qk_scale, cap_scale, MASKED, CAUSAL, WINDOW, SOFTCAP,
                SEQLENS, PAGED, GATHER, PAGE_SIZE, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
            start_n += BLOCK_N
    elif MASKED and (WINDOW or SEQLENS or PAGED):
        # A tile or two: a pipeline's buffers would only cost shared memory (and clearing V
        # goes through registers, a buffer more), which would leave room for fewer programs.
        for start_n in tl.range(lo, hi, BLOCK_N, num_stages=1):
            acc, l_i, m_i = _step(
                acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page,
                stride_slot, stride_head, head_dim, start_n, offs_n, offs_d, pos, key_lo,
                kv_len, diag, window, qk_scale, cap_scale, MASKED, CAUSAL, WINDOW, SOFTCAP,
                SEQLENS, PAGED, GATHER, PAGE_SIZE, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    else:
        for start_n in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _step(
                acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page,
                stride_slot, stride_head, head_dim, start_n, offs_n, offs_d, pos, key_lo,
                kv_len, diag, window, qk_scale, cap_scale, MASKED, CAUSAL, WINDOW, SOFTCAP,
                SEQLENS, PAGED, GATHER, PAGE_SIZE, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _normalise(acc, l_i, m_i):
    """(acc / l_i, natural-log LSE) of running sums over rows (acc (R, D), base-2 l_i, m_i
    (R,)); a row that saw nothing gets 0 and -inf, which weigh nothing in a combine."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    # Back from base 2 to the natural log that callers (and a backward pass) expect.
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    return out, lse


@triton.jit
def _attend_rows(q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page, stride_slot,
                 stride_head, head_dim, lo, unmasked_lo, unmasked_hi, hi, pos, key_lo, kv_len,
                 diag, window, qk_scale, cap_scale, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                 WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, SEQLENS: tl.constexpr,
                 PAGED: tl.constexpr, GATHER: tl.constexpr, PAGE_SIZE: tl.constexpr,
                 INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Keys [lo, hi): a window's masked edge up to ``unmasked_lo``, the tiles every row sees in
    full up to ``unmasked_hi``, then the masked causal band and cache end. Returns the
    normalised output and the natural-log log-sum-exp; a row that saw no key gets 0 and -inf,
    which weigh nothing in the combine."""
    # A finite floor instead of -inf: a row that has seen no key yet then gets
    # exp2(-inf - floor) = 0 rather than NaN, and ends with l_i == 0, which _normalise guards.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WINDOW:
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page,
            stride_slot, stride_head, head_dim, lo, unmasked_lo, pos, key_lo, kv_len, diag,
            window, qk_scale, cap_scale, True, CAUSAL, WINDOW, SOFTCAP, SEQLENS, PAGED, GATHER,
            PAGE_SIZE, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page, stride_slot,
        stride_head, head_dim, unmasked_lo, unmasked_hi, pos, key_lo, kv_len, diag, window,
        qk_scale, cap_scale, False, CAUSAL, WINDOW, SOFTCAP, SEQLENS, PAGED, GATHER, PAGE_SIZE,
        INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page, stride_slot,
        stride_head, head_dim, unmasked_hi, hi, pos, key_lo, kv_len, diag, window, qk_scale,
        cap_scale, True, CAUSAL, WINDOW, SOFTCAP, SEQLENS, PAGED, GATHER, PAGE_SIZE, INTERPRET,
        BLOCK_N, BLOCK_D, DOT_PRECISION)
    return _normalise(acc, l_i, m_i)


@triton.jit
def _split_bounds(split, split_len, seq_len, kv_len, window, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SEQLENS: tl.constexpr):
    """(diag, key_lo, lo, unmasked_lo, unmasked_hi, hi): the causal diagonal's offset, the first
    key any row sees, and this split's keys [lo, hi) cut where the masked edge tiles end and
    begin."""
    # Bottom-right causal alignment: query position i sees key j iff j <= i + diag (and, with
    # a window, j >= i + diag - window). Keys below diag + 1 are seen by every position; only
    # the last seq_len - 1 keys, and a window's first, need a mask.
    # The splits cover [first, kv_len), first the window's first key rounded down to a tile
    # (so that a tile never straddles a page), each split a whole number of tiles.
    if WINDOW:
        key_lo = kv_len - seq_len - window
        first = tl.maximum(key_lo, 0) // BLOCK_N * BLOCK_N
    else:
        key_lo = 0
        first = 0
    lo = first + split * split_len
    hi = tl.minimum(lo + split_len, kv_len)
    if WINDOW or SEQLENS:
        hi = tl.maximum(hi, lo)  # a split past this sequence's end: nothing to load
    diag = kv_len - seq_len
    if CAUSAL:
        seen_by_all = tl.minimum(diag + 1, hi)
    else:
        seen_by_all = hi
    unmasked_hi = tl.maximum(seen_by_all // BLOCK_N * BLOCK_N, lo)
    if WINDOW:
        # Keys from diag + seq_len - 1 - window on are inside every row's window.
        inside = tl.maximum(diag + seq_len - 1 - window + BLOCK_N - 1, 0) // BLOCK_N * BLOCK_N
        unmasked_lo = tl.minimum(tl.maximum(inside, lo), hi)
        unmasked_hi = tl.maximum(unmasked_hi, unmasked_lo)
    else:
        unmasked_lo = lo
    return diag, key_lo, lo, unmasked_lo, unmasked_hi, hi


@triton.jit
def _split_kv_kernel(
    desc_q, desc_k, desc_v, desc_po, Part, Lse_part, Out, Lse, Counters, K, V, Block_table,
    Cache_seqlens, kv_heads, rows, seq_len, kv_len, split_len, num_splits, qk_scale, cap_scale,
    window, table_stride, stride_page, stride_slot, stride_head, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, SEQLENS: tl.constexpr,
    PAGED: tl.constexpr, GATHER: tl.constexpr, PAGE_SIZE: tl.constexpr, FUSED: tl.constexpr,
    TAIL_R: tl.constexpr, TAIL_S: tl.constexpr, INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
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
    if SEQLENS:
        kv_len = tl.load(Cache_seqlens + batch)
    diag, key_lo, lo, unmasked_lo, unmasked_hi, hi = _split_bounds(
        split, split_len, seq_len, kv_len, window, BLOCK_N, CAUSAL, WINDOW, SEQLENS)
    pos = offs_r % seq_len
    table = Block_table
    if PAGED:
        table = Block_table + batch.to(tl.int64) * table_stride
    # Normalised output and natural-log LSE: with one split these are the final results
    # (desc_po is then the output itself), and the combine needs nothing else. A split past
    # this sequence's keys (a short one, or before a window) stores 0 and -inf and counts.
    out, lse = _attend_rows(
        q, desc_k, desc_v, K, V, table, batch, kv_head, stride_page, stride_slot, stride_head,
        head_dim, lo, unmasked_lo, unmasked_hi, hi, pos, key_lo, kv_len, diag, window, qk_scale,
        cap_scale, BLOCK_M, CAUSAL, WINDOW, SOFTCAP, SEQLENS, PAGED, GATHER, PAGE_SIZE,
        INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    flat_row = pid_bk.to(tl.int64) * rows + offs_r
    if FUSED:
        # Plain stores, not the descriptor's: a copy-engine (async proxy) store is not ordered
        # by the release below, these are.
        offs_d = tl.arange(0, BLOCK_D)
        tl.store(Part + (flat_row * num_splits + split)[:, None] * head_dim + offs_d[None, :],
                 out, mask=(offs_r < rows)[:, None] & (offs_d < head_dim)[None, :])
    else:
        # Viewed as (batch * kv_heads, rows, num_splits, D): the store is clipped to this group.
        desc_po.store([pid_bk, 0, split, 0],
                      out.to(desc_po.dtype).reshape(1, BLOCK_M, 1, BLOCK_D))
    tl.store(Lse_part + flat_row * num_splits + split, lse, mask=offs_r < rows)
    if FUSED:
        _combine_if_last(Part, Lse_part, Out, Lse, Counters, pid_bk, rows, num_splits,
                         head_dim, TAIL_R, TAIL_S, BLOCK_D, INTERPRET)


@triton.jit
def _combine_if_last(Part, Lse_part, Out, Lse, Counters, pid_bk, rows, num_splits, head_dim,
                     TAIL_R: tl.constexpr, TAIL_S: tl.constexpr, BLOCK_D: tl.constexpr,
                     INTERPRET: tl.constexpr):
    """Stage 2 fused into stage 1: the group's split that finishes last combines all of its
    splits' partials, TAIL_R rows by TAIL_S splits at a time, and resets the group's counter
    (zero again for the next launch)."""
    # Every thread has issued its partial and LSE stores before the one thread that runs the
    # scalar atomic does: its release then covers them (bar.sync, then a cumulative release,
    # the pattern of CUTLASS's semaphores). acq_rel: each arrival also acquires the earlier
    # ones' releases, so the last one's acquire sees every split's stores.
    tl.debug_barrier()
    arrived = tl.atomic_add(Counters + pid_bk, 1, sem="acq_rel", scope="gpu")
    if arrived == num_splits - 1:
        # The acquire was one thread's; the barrier orders every thread's loads after it, and
        # the loads skip L1 (.cg), which may hold lines of this buffer from an earlier launch.
        tl.debug_barrier()
        tl.store(Counters + pid_bk, 0)
        first = pid_bk.to(tl.int64) * rows
        # Same interpreter workaround as _attend_tiles: no range() over runtime bounds.
        if INTERPRET:
            r0 = 0
            while r0 < rows:
                _combine_group_rows(Part, Lse_part, Out, Lse, first, r0, rows, num_splits,
                                    head_dim, TAIL_R, TAIL_S, BLOCK_D, INTERPRET)
                r0 += TAIL_R
        else:
            for r0 in range(0, rows, TAIL_R):
                _combine_group_rows(Part, Lse_part, Out, Lse, first, r0, rows, num_splits,
                                    head_dim, TAIL_R, TAIL_S, BLOCK_D, INTERPRET)


@triton.jit
def _combine_group_rows(Part, Lse_part, Out, Lse, first, r0, rows, num_splits, head_dim,
                        TAIL_R: tl.constexpr, TAIL_S: tl.constexpr, BLOCK_D: tl.constexpr,
                        INTERPRET: tl.constexpr):
    """The fused tail's rows r0.. of the group whose first flat row is ``first``: combined
    and stored, those under ``rows``."""
    offs_r = tl.arange(0, TAIL_R)
    inside = r0 + offs_r < rows
    row = first + r0 + offs_r
    out, lse = _combine_rows(None, Part, Lse_part, first + r0, offs_r, inside, num_splits,
                             head_dim, True, TAIL_R, TAIL_S, BLOCK_D, INTERPRET)
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(Out + row[:, None] * head_dim + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=inside[:, None] & (offs_d < head_dim)[None, :])
    tl.store(Lse + row, lse, mask=inside)


@triton.jit
def _split_chunk(desc_po, Part, Lse_part, row0, offs_r, inside, s0, num_splits, head_dim,
                 POINTERS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Base-2 LSEs (R, BLOCK_S) and partials (R, BLOCK_S, D) of splits s0.. of the flat
    (batch, head, query) rows row0 + offs_r; splits past the last, and rows not ``inside``,
    weigh exp2(-inf) = 0. By the combine kernel's descriptor (R = 1), or by the fused tail's
    pointer loads, which bypass L1 (see _combine_if_last)."""
    offs_s = s0 + tl.arange(0, BLOCK_S)
    slot = (row0.to(tl.int64) + offs_r)[:, None] * num_splits + offs_s[None, :]
    valid = inside[:, None] & (offs_s < num_splits)[None, :]
    if POINTERS:
        lse = tl.load(Lse_part + slot, mask=valid, other=float("-inf"), cache_modifier=".cg")
        offs_d = tl.arange(0, BLOCK_D)
        part = tl.load(Part + slot[:, :, None] * head_dim + offs_d[None, None, :],
                       mask=valid[:, :, None] & (offs_d < head_dim)[None, None, :], other=0.0,
                       cache_modifier=".cg")
    else:
        lse = tl.load(Lse_part + slot, mask=valid, other=float("-inf"))
        # Splits past the last are zero-filled by the descriptor.
        part = desc_po.load([0, row0, s0, 0]).reshape(1, BLOCK_S, BLOCK_D)
    return lse * 1.4426950408889634, part


@triton.jit
def _combine_rows(desc_po, Part, Lse_part, row0, offs_r, inside, num_splits, head_dim,
                  POINTERS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    """(output (BLOCK_R, D), natural-log LSE (BLOCK_R,)) of rows row0 + offs_r: their splits'
    partials weighed by their LSEs, BLOCK_S splits at a time (_split_chunk reads them)."""
    m_i = tl.full([BLOCK_R], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    # Same interpreter workaround as _attend_tiles: no range() over runtime bounds.
    if INTERPRET:
        s0 = 0
        while s0 < num_splits:
            lse, part = _split_chunk(desc_po, Part, Lse_part, row0, offs_r, inside, s0,
                                     num_splits, head_dim, POINTERS, BLOCK_S, BLOCK_D)
            acc, l_i, m_i = _merge_splits(acc, l_i, m_i, lse, part)
            s0 += BLOCK_S
    else:
        for s0 in range(0, num_splits, BLOCK_S):
            lse, part = _split_chunk(desc_po, Part, Lse_part, row0, offs_r, inside, s0,
                                     num_splits, head_dim, POINTERS, BLOCK_S, BLOCK_D)
            acc, l_i, m_i = _merge_splits(acc, l_i, m_i, lse, part)
    return _normalise(acc, l_i, m_i)


@triton.jit
def _merge_splits(acc, l_i, m_i, lse, part):
    """The online softmax over splits: running acc (R, D), l_i, m_i (R,) updated by a chunk of
    base-2 LSEs (R, S) and normalised partials (R, S, D)."""
    m_new = tl.maximum(m_i, tl.max(lse, 1))
    w = tl.exp2(lse - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(w, 1)
    acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * part, 1)
    return acc, l_i, m_new


@triton.jit
def _combine_kernel(
    desc_po, Lse_part, desc_o, Lse, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    # One program per output row (flat batch, head, query), whose partials lie contiguous,
    # BLOCK_S splits at a time. Descriptor offsets are int32, pointer offsets int64.
    row = tl.program_id(0)
    offs_r = tl.arange(0, 1)
    out, lse = _combine_rows(desc_po, None, Lse_part, row, offs_r, offs_r == 0, num_splits, 0,
                             False, 1, BLOCK_S, BLOCK_D, INTERPRET)
    desc_o.store([0, 0, row, 0], out.to(desc_o.dtype).reshape(1, 1, 1, BLOCK_D))
    tl.store(Lse + row.to(tl.int64) + offs_r, lse)

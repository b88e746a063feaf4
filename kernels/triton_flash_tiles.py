"""The device code of the prefill forward: one query tile against a range of K/V tiles.

Shared by the dense and varlen kernels (kernels/triton_flash.py) and the decode kernel
(kernels/triton_decode.py). Scores live in the base-2 domain: the softmax scale and log2(e)
are one multiply (``qk_scale``), every exp is an exp2. Three features are compile-time
switches, so that code without them is what it was:

* ``CAUSAL``: query row i sees key j iff j <= i + diag, diag = kv_len - seq_len (the
  diagonal aligned to the end);
* ``WINDOW``: also j >= i + diag - window (a sliding window of window + 1 keys);
* ``SOFTCAP``: the natural-scale score s = scale·q·kᵀ becomes softcap·tanh(s / softcap)
  before the mask and the softmax.

``kv_bounds`` gives the K/V tiles a query block visits: the tiles no row of the block sees
(past the diagonal, left of the window) are never loaded, the tiles every row sees in full
run unmasked, and only the bands across the window's left edge and the diagonal pay a mask.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LOG2E", "attend_rows", "capped_scores", "kv_bounds", "load_tile"]

# Working in base 2 turns every exp into one exp2 and lets the softmax scale share the score multiply.
LOG2E = 1.4426950408889634


@triton.jit
def load_tile(desc, batch, head, start, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
              INTERPRET: tl.constexpr):
    # A 4-D (batch, head, row, dim) descriptor: the copy engine zero-fills rows past the end of
    # this head and lanes past the head dim, so neither a next head nor padding leaks in.
    tile = desc.load([batch, head, start, 0]).reshape(ROWS, BLOCK_D)
    if INTERPRET:
        # The interpreter gets bf16 arithmetic wrong; its fp32 is exact IEEE.
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def capped_scores(qk, cap_in, cap_out):
    """Base-2 capped scores from raw q·kᵀ: log2(e)·c·tanh(scale·qk / c), with
    ``cap_in`` = 2·scale·log2(e) / c and ``cap_out`` = c·log2(e).

    tanh(x) = 1 - 2 / (e^2x + 1): one exp2 and one division, on the GPU and under the
    interpreter alike (libdevice's tanh is not there), and exact at both ends: e^2x overflows
    to inf for large x (tanh 1) and underflows to 0 for very negative x (tanh -1)."""
    e = tl.exp2(qk * cap_in)
    return cap_out - (2.0 * cap_out) / (e + 1.0)


@triton.jit
def kv_bounds(start_m, seq_len, kv_len, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """(lo, unmasked_lo, unmasked_hi, hi): the keys [lo, hi) the query rows [start_m,
    start_m + BLOCK_M) visit, in whole BLOCK_N tiles from lo; the tiles of [unmasked_lo,
    unmasked_hi) are seen in full by every row, the others are masked. Without WINDOW, lo and
    unmasked_lo are 0."""
    diag = kv_len - seq_len
    if CAUSAL:
        # Keys the block's first row sees are seen by every row; keys past its last row's
        # diagonal by none: those tiles are skipped, and only the diagonal band is masked.
        unmasked_hi = tl.minimum(start_m + diag + 1, kv_len)
        hi = tl.minimum(start_m + BLOCK_M + diag, kv_len)
    else:
        unmasked_hi = kv_len
        hi = kv_len
    unmasked_hi = tl.maximum(unmasked_hi, 0) // BLOCK_N * BLOCK_N
    lo = 0
    unmasked_lo = 0
    if WINDOW:
        # The first row's window starts leftmost: tiles before its tile are seen by no row.
        # Clamped before dividing, so that // rounds the same way on the GPU and in numpy.
        lo = tl.maximum(start_m + diag - window, 0) // BLOCK_N * BLOCK_N
        # Every row sees keys from the last row's left edge on: the unmasked tiles start at
        # the first tile boundary at or after it (and never past the band's end).
        last_left = tl.maximum(start_m + BLOCK_M - 1 + diag - window, 0)
        hi_tiles = (hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N
        unmasked_lo = tl.minimum(tl.maximum((last_left + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo),
                                 hi_tiles)
        # A window narrower than the block leaves no tile every row sees in full: then
        # [unmasked_lo, unmasked_hi) is empty and the two masked bands meet.
        unmasked_hi = tl.maximum(unmasked_hi, unmasked_lo)
    return lo, unmasked_lo, unmasked_hi, hi


@triton.jit
def _keep(cols, offs_m, kv_len, diag, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    keep = cols[None, :] < kv_len
    if CAUSAL:
        keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
    if WINDOW:
        keep = keep & (cols[None, :] >= offs_m[:, None] + diag - window)
    return keep


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n, kv_len, diag,
    qk_scale, kv_start, window, cap_in, cap_out, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    k = load_tile(desc_k, batch, kv_head, kv_start + start_n, BLOCK_N, BLOCK_D, INTERPRET)
    v = load_tile(desc_v, batch, kv_head, kv_start + start_n, BLOCK_N, BLOCK_D, INTERPRET)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if SOFTCAP:
        # Capped before the mask (a masked score is -inf whatever it was).
        qk = capped_scores(qk, cap_in, cap_out)
        if MASKED:
            keep = _keep(start_n + offs_n, offs_m, kv_len, diag, window, CAUSAL, WINDOW)
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
    elif MASKED:
        keep = _keep(start_n + offs_n, offs_m, kv_len, diag, window, CAUSAL, WINDOW)
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
def _attend_tiles(
    acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, lo, hi, offs_m, kv_len, diag, qk_scale,
    kv_start, window, cap_in, cap_out, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr = False,
):
    offs_n = tl.arange(0, BLOCK_N)
    # The interpreter's scalars are 1-element numpy arrays, which range() rejects under
    # numpy >= 2.4; a while loop only needs their truth value. The GPU keeps the for loop,
    # which is what the software pipeliner (num_stages) works on.
    if INTERPRET:
        start_n = lo
        while start_n < hi:
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n,
                kv_len, diag, qk_scale, kv_start, window, cap_in, cap_out, MASKED, CAUSAL,
                WINDOW, SOFTCAP, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
            start_n += BLOCK_N
    elif WARP_SPECIALIZE:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=True):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n,
                kv_len, diag, qk_scale, kv_start, window, cap_in, cap_out, MASKED, CAUSAL,
                WINDOW, SOFTCAP, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    else:
        for start_n in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, start_n, offs_m, offs_n,
                kv_len, diag, qk_scale, kv_start, window, cap_in, cap_out, MASKED, CAUSAL,
                WINDOW, SOFTCAP, INTERPRET, BLOCK_N, BLOCK_D, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def attend_rows(
    q, desc_k, desc_v, batch, kv_head, lo, unmasked_hi, hi, offs_m, kv_len, diag, qk_scale,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, unmasked_lo=0, kv_start=0, window=0,
    cap_in=0.0, cap_out=0.0, WINDOW: tl.constexpr = False, SOFTCAP: tl.constexpr = False,
    WARP_SPECIALIZE: tl.constexpr = False,
):
    """One query tile against keys [lo, hi) (``kv_bounds``): with WINDOW the masked band
    [lo, unmasked_lo) across the window's left edge first, then the tiles every row sees in
    full up to ``unmasked_hi``, then the masked band. K/V rows are read from ``kv_start`` on
    (a sequence's offset in a packed batch; masks count from it). Returns the normalised
    output, the natural-log log-sum-exp, and which rows saw no key (output 0, LSE -inf: they
    weigh nothing in a combine). The keyword arguments default to the dense kernel's.
    ``WARP_SPECIALIZE`` runs [lo, hi) as one loop that Triton warp-specializes."""
    # A finite floor instead of -inf: a row that has seen no key yet then gets
    # exp2(-inf - floor) = 0 rather than NaN, and ends with l_i == 0, which is guarded below.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WARP_SPECIALIZE:
        # One loop, every tile masked: triton 3.6's Hopper warp specialization fails to
        # compile a kernel with a second loop after the specialized one (and with the masked
        # bands split off), so the masks' compares run on every tile instead.
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, lo, hi, offs_m, kv_len, diag,
            qk_scale, kv_start, window, cap_in, cap_out, MASKED=True, CAUSAL=CAUSAL,
            WINDOW=WINDOW, SOFTCAP=SOFTCAP, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D, DOT_PRECISION=DOT_PRECISION, WARP_SPECIALIZE=True)
    elif WINDOW:
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, lo, unmasked_lo, offs_m, kv_len,
            diag, qk_scale, kv_start, window, cap_in, cap_out, MASKED=True, CAUSAL=CAUSAL,
            WINDOW=WINDOW, SOFTCAP=SOFTCAP, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D, DOT_PRECISION=DOT_PRECISION)
    if not WARP_SPECIALIZE:
        first_unmasked = unmasked_lo if WINDOW else lo
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, first_unmasked, unmasked_hi,
            offs_m, kv_len, diag, qk_scale, kv_start, window, cap_in, cap_out, MASKED=False,
            CAUSAL=CAUSAL, WINDOW=WINDOW, SOFTCAP=SOFTCAP, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D, DOT_PRECISION=DOT_PRECISION)
        acc, l_i, m_i = _attend_tiles(
            acc, l_i, m_i, q, desc_k, desc_v, batch, kv_head, unmasked_hi, hi, offs_m, kv_len,
            diag, qk_scale, kv_start, window, cap_in, cap_out, MASKED=True, CAUSAL=CAUSAL,
            WINDOW=WINDOW, SOFTCAP=SOFTCAP, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
            BLOCK_D=BLOCK_D, DOT_PRECISION=DOT_PRECISION)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    # Back from base 2 to the natural log that callers (and a backward pass) expect.
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    return out, lse

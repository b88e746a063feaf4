"""The tile-level pieces of the Triton backward (triton_flash_bwd): which tiles a sliding window
and the causal diagonal leave to visit, P and dS recomputed with or without a softcap, a tanh
that works on the GPU and under the interpreter, a ragged batch's bookkeeping and edge stores,
and one query tile's step of the dK/dV pass."""

from __future__ import annotations

import triton
import triton.language as tl

from flashbench.kernels.triton_flash_tiles import load_tile as _load_tile

# Every feature is a constexpr (WINDOW, SOFTCAP, VARLEN) whose off branch is the dense kernel's
# own code, and whose runtime arguments are None when it is off: the dense launches compile to
# the PTX they compiled to before the features existed.


@triton.jit
def _tanh(x):
    # tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow at any |x| (the
    # usual 2·sigmoid(2x) - 1 overflows exp for large negative x), one exp2 and one divide on
    # the GPU and plain numpy under the interpreter; absolute error a few fp32 ulps of 1.
    e = tl.exp2(-2.8853900817779268 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _query_range(start_n, seq_len, diag, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """The queries [lo, hi) that see any of keys [start_n, start_n + BLOCK_N), lo on a BLOCK_M
    boundary: query i sees key j iff i + diag - window <= j <= i + diag (diag = kv_len -
    seq_len, the causal diagonal aligned to the end)."""
    lo = 0
    hi = seq_len
    if CAUSAL:
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
    if WINDOW:
        # The block's last key is seen by queries up to start_n + BLOCK_N - 1 - diag + window.
        hi = tl.minimum(start_n + BLOCK_N - diag + window, seq_len)
    return lo, hi


@triton.jit
def _key_range(start_m, kv_len, diag, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """The keys [lo, hi) any of queries [start_m, start_m + BLOCK_M) sees, lo on a BLOCK_N
    boundary."""
    lo = 0
    hi = kv_len
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M + diag, kv_len)
    if WINDOW:
        lo = tl.maximum(start_m + diag - window, 0) // BLOCK_N * BLOCK_N
    return lo, hi


@triton.jit
def _sequence(CuSeqlens, batch, seq_len, VARLEN: tl.constexpr):
    """(first token, length) of a program's sequence: a ragged batch's from cu_seqlens."""
    tok = 0
    if VARLEN:
        tok = tl.load(CuSeqlens + batch)
        seq_len = tl.load(CuSeqlens + batch + 1) - tok
    return tok, seq_len


@triton.jit
def _lse_row(bh, head, tok, seq_len, total, VARLEN: tl.constexpr):
    """Where a head's LSE and delta start: (B, H, N) dense, (H, T) ragged."""
    if VARLEN:
        row = head.to(tl.int64) * total + tok
    else:
        row = bh.to(tl.int64) * seq_len
    return row


@triton.jit
def _per_query(x, TRANSPOSED: tl.constexpr):
    """A per-query vector broadcast along a tile's query axis (across when TRANSPOSED)."""
    return x[None, :] if TRANSPOSED else x[:, None]


@triton.jit
def _per_key(x, TRANSPOSED: tl.constexpr):
    return x[:, None] if TRANSPOSED else x[None, :]


@triton.jit
def _probs(qk, lse, offs_m, offs_n, kv_len, diag, window, qk_scale, cap_scale, cap_log2,
           CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
           TRANSPOSED: tl.constexpr):
    """P of a tile (TRANSPOSED: keys down, queries across) from the saved natural-log LSE;
    and, softcapped, t = tanh(s / c) for dS."""
    if SOFTCAP:
        # The capped score c·tanh(scale·qk / c) in base 2: cap_scale = scale / c and
        # cap_log2 = c·log2(e).
        t = _tanh(qk * cap_scale)
        p = tl.exp2(t * cap_log2 - _per_query(lse, TRANSPOSED) * 1.4426950408889634)
    else:
        t = qk
        p = tl.exp2(qk * qk_scale - _per_query(lse, TRANSPOSED) * 1.4426950408889634)
    keep = _per_key(offs_n, TRANSPOSED) < kv_len
    if CAUSAL:
        keep = keep & (_per_key(offs_n, TRANSPOSED) <= _per_query(offs_m, TRANSPOSED) + diag)
    if WINDOW:
        keep = keep & (_per_key(offs_n, TRANSPOSED)
                       >= _per_query(offs_m, TRANSPOSED) + diag - window)
    return tl.where(keep, p, 0.0), t


@triton.jit
def _dscores(p, dp, delta, t, SOFTCAP: tl.constexpr):
    """dS with respect to the uncapped score: P ∘ (dP − δ), times d(c·tanh(s/c))/ds."""
    ds = p * (dp - delta)
    if SOFTCAP:
        ds = ds * (1.0 - t * t)
    return ds


@triton.jit
def _store_tile(desc, ptr, tile, dbatch, head, tok, start, seq_len, stride_tok, stride_head,
                head_dim, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr):
    tile = tile.to(desc.dtype)
    if VARLEN:
        if start + ROWS > seq_len:
            # The sequence ends inside this tile and the next one's rows follow in memory,
            # where a whole-tile store would land: masked pointer stores at the edge.
            offs_r = start + tl.arange(0, ROWS)
            offs_d = tl.arange(0, BLOCK_D)
            ptrs = (ptr + (tok + offs_r).to(tl.int64)[:, None] * stride_tok + head * stride_head
                    + offs_d[None, :])
            tl.store(ptrs, tile, mask=(offs_r[:, None] < seq_len) & (offs_d[None, :] < head_dim))
        else:
            desc.store([dbatch, head, tok + start, 0], tile.reshape(1, 1, ROWS, BLOCK_D))
    else:
        # The descriptor clips the store to this head's rows and the real head dim.
        desc.store([dbatch, head, tok + start, 0], tile.reshape(1, 1, ROWS, BLOCK_D))


@triton.jit
def _dkdv_step(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dbatch, head, row, tok, start_m,
               offs_n, seq_len, kv_len, diag, window, qk_scale, cap_scale, cap_log2,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """One query tile streamed past a dK/dV program's keys: (dk, dv) with the tile's share
    added, and the tile's dSᵀ (keys down, queries across; unscaled), which the fused kernel
    turns into the tile's share of dQ."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    # Ragged: rows past the sequence's end are the next sequence's (or zeros past the packed
    # tensor's end); their infinite LSE makes their P, and so their share of dK and dV, 0.
    q = _load_tile(desc_q, dbatch, head, tok + start_m, BLOCK_M, BLOCK_D, INTERPRET)
    do = _load_tile(desc_do, dbatch, head, tok + start_m, BLOCK_M, BLOCK_D, INTERPRET)
    # Rows past the end get an infinite LSE, so their recomputed probabilities are exactly 0.
    lse = tl.load(Lse + row + offs_m, mask=offs_m < seq_len, other=float("inf"))
    delta = tl.load(Delta + row + offs_m, mask=offs_m < seq_len, other=0.0)
    # Work on the transposed tile (keys down, queries across) so dK and dV accumulate without
    # transposing P or dS.
    qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
    p_t, t_t = _probs(qk_t, lse, offs_m, offs_n, kv_len, diag, window, qk_scale, cap_scale,
                      cap_log2, CAUSAL, WINDOW, SOFTCAP, TRANSPOSED=True)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = _dscores(p_t, dp_t, delta[None, :], t_t, SOFTCAP)
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv, ds_t

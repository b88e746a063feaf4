"""The Triton backward in one pass: dQ accumulated inside the dK/dV kernel with fp32 atomics.

The two-kernel backward (triton_flash_bwd) recomputes S = QKᵀ and dP = dO·Vᵀ in its dQ kernel:
7 matrix products per (query tile, key tile) pair. Here the dK/dV program, which already has
dS for every query tile it visits, also multiplies dS·K and adds that share of dQ into an fp32
accumulator with atomics (FlashAttention-2's original scheme): 5 products. The host zeroes the
accumulator and casts it to the inputs' dtype. attention_backward launches this kernel when
``BackwardConfig.fused_dq`` is set or ``FLASHBENCH_TRITON_BWD=fused``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from flashbench.kernels.triton_flash import _load_tile
from flashbench.kernels.triton_flash_bwd_tiles import (_dkdv_step, _lse_row, _query_range,
                                                     _sequence, _store_tile)

__all__ = ["_dkdvdq_kernel"]


@triton.jit
def _dkdvdq_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dk, desc_dv, Dk, Dv, DqAcc, Lse, Delta, CuSeqlens,
    num_heads, kv_heads, group, seq_len, kv_len, total, stride_tok, stride_head, head_dim,
    stride_qb, stride_qh, stride_qm, q_dim, qk_scale, sm_scale, window, cap_scale, cap_log2,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, VARLEN: tl.constexpr, INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # The grid and loops of _dkdv_kernel (one program per BLOCK_N keys of one KV head, every
    # query tile of its GQA group streamed past them); DqAcc is fp32 in the (batch, head, row,
    # dim) view of q's layout, unit-stride dim, rows of a ragged batch packed (stride_qm apart).
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // kv_heads
    kv_head = pid_bh % kv_heads
    start_n = pid_n * BLOCK_N
    tok, seq_len = _sequence(CuSeqlens, batch, seq_len, VARLEN)
    if VARLEN:
        kv_len = seq_len
        if start_n >= seq_len:
            return
    dbatch = 0 if VARLEN else batch
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(desc_k, dbatch, kv_head, tok + start_n, BLOCK_N, BLOCK_D, INTERPRET)
    v = _load_tile(desc_v, dbatch, kv_head, tok + start_n, BLOCK_N, BLOCK_D, INTERPRET)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    diag = kv_len - seq_len
    lo, hi = _query_range(start_n, seq_len, diag, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)
    dq_batch = DqAcc  # a ragged batch's rows are tokens from the packed tensor's start
    if not VARLEN:
        dq_batch += batch.to(tl.int64) * stride_qb
    # The interpreter's scalars are numpy arrays that range() rejects: while loops there.
    if INTERPRET:
        g = 0
        while g < group:
            head = kv_head * group + g
            row = _lse_row(batch * num_heads + head, head, tok, seq_len, total, VARLEN)
            dq_head = dq_batch + head.to(tl.int64) * stride_qh
            start_m = lo
            while start_m < hi:
                dk, dv = _dkdvdq_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dq_head,
                                      stride_qm, q_dim, dbatch, head, row, tok, start_m, offs_n,
                                      seq_len, kv_len, diag, window, qk_scale, sm_scale,
                                      cap_scale, cap_log2, BLOCK_M, BLOCK_D, CAUSAL, WINDOW,
                                      SOFTCAP, INTERPRET, DOT_PRECISION)
                start_m += BLOCK_M
            g += 1
    else:
        for g in range(0, group):
            head = kv_head * group + g
            row = _lse_row(batch * num_heads + head, head, tok, seq_len, total, VARLEN)
            dq_head = dq_batch + head.to(tl.int64) * stride_qh
            for start_m in range(lo, hi, BLOCK_M):
                dk, dv = _dkdvdq_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dq_head,
                                      stride_qm, q_dim, dbatch, head, row, tok, start_m, offs_n,
                                      seq_len, kv_len, diag, window, qk_scale, sm_scale,
                                      cap_scale, cap_log2, BLOCK_M, BLOCK_D, CAUSAL, WINDOW,
                                      SOFTCAP, INTERPRET, DOT_PRECISION)
    _store_tile(desc_dk, Dk, dk * sm_scale, dbatch, kv_head, tok, start_n, seq_len, stride_tok,
                stride_head, head_dim, BLOCK_N, BLOCK_D, VARLEN)
    _store_tile(desc_dv, Dv, dv, dbatch, kv_head, tok, start_n, seq_len, stride_tok,
                stride_head, head_dim, BLOCK_N, BLOCK_D, VARLEN)


@triton.jit
def _dkdvdq_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dq_head, stride_qm, q_dim, dbatch,
                 head, row, tok, start_m, offs_n, seq_len, kv_len, diag, window, qk_scale,
                 sm_scale, cap_scale, cap_log2, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                 INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr):
    dk, dv, ds_t = _dkdv_step(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dbatch, head, row, tok,
                              start_m, offs_n, seq_len, kv_len, diag, window, qk_scale,
                              cap_scale, cap_log2, BLOCK_M, BLOCK_D, CAUSAL, WINDOW, SOFTCAP,
                              INTERPRET, DOT_PRECISION)
    # This key block's share of the tile's dQ, scaled as _dq_kernel scales its sum; every key
    # block of the head adds into the same rows, hence the atomics (relaxed: nothing reads
    # the sum before the kernel ends).
    dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PRECISION) * sm_scale
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = dq_head + (tok + offs_m).to(tl.int64)[:, None] * stride_qm + offs_d[None, :]
    # Rows past the sequence are the next head's or sequence's and lanes past q_dim the next
    # row's: their (zero) shares must not land there.
    mask = (offs_m[:, None] < seq_len) & (offs_d[None, :] < q_dim)
    tl.atomic_add(ptrs, dq, mask=mask, sem="relaxed")
    return dk, dv

"""FlashAttention-2 backward in Triton: P recomputed from the saved LSE, dK/dV per KV head, dQ;
sliding windows, softcapped scores and ragged (packed) batches as compile-time features."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from flashbench.kernels.triton_flash import _load_tile, _tma_ready, dot_precision
from flashbench.kernels.triton_flash_bwd_tiles import (_dkdv_step, _dscores, _key_range, _lse_row,
                                                     _probs, _query_range, _sequence,
                                                     _store_tile)

__all__ = ["FEATURES", "BackwardConfig", "attention_backward"]

# What attention_backward implements beyond dense attention (flashbench.core.cases.FEATURES).
FEATURES: frozenset[str] = frozenset({"window", "softcap", "ragged"})

_LOG2E = 1.4426950408889634


@triton.jit
def _dkdv_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dk, desc_dv, Dk, Dv, DqAcc, Lse, Delta, CuSeqlens,
    num_heads, kv_heads, group, seq_len, kv_len, total, stride_tok, stride_head, head_dim,
    stride_qb, stride_qh, stride_qm, q_dim, qk_scale, sm_scale, window, cap_scale, cap_log2,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, VARLEN: tl.constexpr, INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr, GROUP_SPLIT: tl.constexpr, FUSED_DQ: tl.constexpr,
):
    # One program owns BLOCK_N keys of one KV head and streams every query of every query head
    # in that head's GQA group past them: dK and dV come out summed over the group, with no
    # atomics and no repeated K/V. GROUP_SPLIT > 1 splits the group's heads over that many
    # programs, for more programs at small batch (_group_split).
    # FUSED_DQ: the program also turns each tile's dS into that tile's share of dQ and adds it
    # with fp32 atomics into DqAcc (fp32, q's (batch, head, row) strides stride_qb/qh/qm,
    # unit-stride dim of q_dim lanes; a ragged batch's rows packed from the start): 5 matrix
    # products per tile pair instead of the two-kernel path's 7, and no _dq_kernel launch.
    if GROUP_SPLIT > 1:
        # The split on the fastest grid axis and the key block on the slowest: programs are
        # dispatched in order, so every head's first key blocks (a causal mask's longest
        # programs: every query sees them) start first and shorter ones fill in behind.
        pid_n = tl.program_id(2)
    else:
        pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // kv_heads
    kv_head = pid_bh % kv_heads
    start_n = pid_n * BLOCK_N
    # This program's share of the group's heads, and the head its dK and dV go to: split,
    # program z (grid axis 0) takes heads [z, z + 1) · group / GROUP_SPLIT and stores fp32
    # partial sums as head z · kv_heads + kv_head of a scratch that the host sums over z.
    g_lo = 0
    g_hi = group
    out_head = kv_head
    if GROUP_SPLIT > 1:
        g_lo = tl.program_id(0) * (group // GROUP_SPLIT)
        g_hi = g_lo + group // GROUP_SPLIT
        out_head = tl.program_id(0) * kv_heads + kv_head
    # Ragged: the grid covers the longest sequence; indices below are within the sequence,
    # which starts at token ``tok`` of the packed tensors (descriptors over (1, H, T, D)).
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
    # Query blocks that see none of this block's keys (before the diagonal, past the window)
    # are skipped.
    lo, hi = _query_range(start_n, seq_len, diag, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)
    dq_batch = DqAcc  # None unless FUSED_DQ
    if FUSED_DQ and not VARLEN:
        dq_batch += batch.to(tl.int64) * stride_qb
    # The interpreter's scalars are numpy arrays that range() rejects: while loops there.
    if INTERPRET:
        g = g_lo
        while g < g_hi:
            head = kv_head * group + g
            row = _lse_row(batch * num_heads + head, head, tok, seq_len, total, VARLEN)
            start_m = lo
            while start_m < hi:
                dk, dv = _dkdv_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dq_batch,
                                    stride_qh, stride_qm, q_dim, sm_scale, dbatch, head, row,
                                    tok, start_m, offs_n, seq_len, kv_len, diag, window, qk_scale,
                                    cap_scale, cap_log2, BLOCK_M, BLOCK_D, CAUSAL, WINDOW, SOFTCAP,
                                    INTERPRET, DOT_PRECISION, FUSED_DQ)
                start_m += BLOCK_M
            g += 1
    else:
        for g in range(g_lo, g_hi):
            head = kv_head * group + g
            row = _lse_row(batch * num_heads + head, head, tok, seq_len, total, VARLEN)
            for start_m in range(lo, hi, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dq_batch,
                                    stride_qh, stride_qm, q_dim, sm_scale, dbatch, head, row,
                                    tok, start_m, offs_n, seq_len, kv_len, diag, window, qk_scale,
                                    cap_scale, cap_log2, BLOCK_M, BLOCK_D, CAUSAL, WINDOW, SOFTCAP,
                                    INTERPRET, DOT_PRECISION, FUSED_DQ)
    _store_tile(desc_dk, Dk, dk * sm_scale, dbatch, out_head, tok, start_n, seq_len, stride_tok,
                stride_head, head_dim, BLOCK_N, BLOCK_D, VARLEN)
    _store_tile(desc_dv, Dv, dv, dbatch, out_head, tok, start_n, seq_len, stride_tok,
                stride_head, head_dim, BLOCK_N, BLOCK_D, VARLEN)


@triton.jit
def _dkdv_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dq_batch, stride_qh, stride_qm, q_dim,
               sm_scale, dbatch, head, row, tok, start_m, offs_n, seq_len, kv_len, diag, window,
               qk_scale, cap_scale, cap_log2, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
               CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
               INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr, FUSED_DQ: tl.constexpr):
    dk, dv, ds_t = _dkdv_step(dk, dv, k, v, desc_q, desc_do, Lse, Delta, dbatch, head, row, tok,
                              start_m, offs_n, seq_len, kv_len, diag, window, qk_scale,
                              cap_scale, cap_log2, BLOCK_M, BLOCK_D, CAUSAL, WINDOW, SOFTCAP,
                              INTERPRET, DOT_PRECISION)
    if FUSED_DQ:
        # This key block's share of the tile's dQ, scaled as _dq_kernel scales its sum; every
        # key block of the head adds into the same rows, hence the atomics (relaxed: nothing
        # reads the sum before the kernel ends).
        dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PRECISION) * sm_scale
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = (dq_batch + head.to(tl.int64) * stride_qh
                + (tok + offs_m).to(tl.int64)[:, None] * stride_qm + offs_d[None, :])
        # Rows past the sequence are the next head's or sequence's and lanes past q_dim the
        # next row's: their (zero) shares must not land there.
        mask = (offs_m[:, None] < seq_len) & (offs_d[None, :] < q_dim)
        tl.atomic_add(ptrs, dq, mask=mask, sem="relaxed")
    return dk, dv


@triton.jit
def _dq_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dq, Dq, Lse, Delta, CuSeqlens,
    num_heads, group, seq_len, kv_len, total, stride_tok, stride_head, head_dim,
    qk_scale, sm_scale, window, cap_scale, cap_log2,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, VARLEN: tl.constexpr, INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program owns BLOCK_M queries of one head and streams the keys they can see.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    kv_head = head // group
    start_m = pid_m * BLOCK_M
    tok, seq_len = _sequence(CuSeqlens, batch, seq_len, VARLEN)
    if VARLEN:
        kv_len = seq_len
        if start_m >= seq_len:
            return
    dbatch = 0 if VARLEN else batch
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row = _lse_row(pid_bh, head, tok, seq_len, total, VARLEN)
    q = _load_tile(desc_q, dbatch, head, tok + start_m, BLOCK_M, BLOCK_D, INTERPRET)
    do = _load_tile(desc_do, dbatch, head, tok + start_m, BLOCK_M, BLOCK_D, INTERPRET)
    lse = tl.load(Lse + row + offs_m, mask=offs_m < seq_len, other=float("inf"))
    delta = tl.load(Delta + row + offs_m, mask=offs_m < seq_len, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diag = kv_len - seq_len
    lo, hi = _key_range(start_m, kv_len, diag, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)
    if INTERPRET:
        start_n = lo
        while start_n < hi:
            dq = _dq_tile(dq, q, do, lse, delta, desc_k, desc_v, dbatch, kv_head, tok, start_n,
                          offs_m, kv_len, diag, window, qk_scale, cap_scale, cap_log2, BLOCK_N,
                          BLOCK_D, CAUSAL, WINDOW, SOFTCAP, INTERPRET, DOT_PRECISION)
            start_n += BLOCK_N
    else:
        for start_n in range(lo, hi, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse, delta, desc_k, desc_v, dbatch, kv_head, tok, start_n,
                          offs_m, kv_len, diag, window, qk_scale, cap_scale, cap_log2, BLOCK_N,
                          BLOCK_D, CAUSAL, WINDOW, SOFTCAP, INTERPRET, DOT_PRECISION)
    _store_tile(desc_dq, Dq, dq * sm_scale, dbatch, head, tok, start_m, seq_len, stride_tok,
                stride_head, head_dim, BLOCK_M, BLOCK_D, VARLEN)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, desc_k, desc_v, dbatch, kv_head, tok, start_n, offs_m,
             kv_len, diag, window, qk_scale, cap_scale, cap_log2, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
             SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(desc_k, dbatch, kv_head, tok + start_n, BLOCK_N, BLOCK_D, INTERPRET)
    v = _load_tile(desc_v, dbatch, kv_head, tok + start_n, BLOCK_N, BLOCK_D, INTERPRET)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    p, t = _probs(qk, lse, offs_m, offs_n, kv_len, diag, window, qk_scale, cap_scale, cap_log2,
                  CAUSAL, WINDOW, SOFTCAP, TRANSPOSED=False)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = _dscores(p, dp, delta[:, None], t, SOFTCAP)
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit
def _delta_kernel(Out, Dout, Delta, rows, num_heads, head_dim, so_b, so_h, so_r, so_d, sd_b,
                  sd_h, sd_r, sd_d, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    # delta = rowsum(dO ∘ O) in fp32, one pass over both: torch's
    # (out.float() * dout.float()).sum(-1) wrote and reread three fp32 copies of them.
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // num_heads).to(tl.int64)
    head = (pid_bh % num_heads).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_r[:, None] < rows) & (offs_d[None, :] < head_dim)
    r64, d64 = offs_r.to(tl.int64)[:, None], offs_d.to(tl.int64)[None, :]
    o = tl.load(Out + batch * so_b + head * so_h + r64 * so_r + d64 * so_d, mask=mask, other=0.0)
    do = tl.load(Dout + batch * sd_b + head * sd_h + r64 * sd_r + d64 * sd_d, mask=mask,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + pid_bh.to(tl.int64) * rows + offs_r, delta, mask=offs_r < rows)


def _delta(out: torch.Tensor, dout: torch.Tensor, interpret: bool) -> torch.Tensor:
    """rowsum(dO ∘ O) of 4-D (B, H, N, D) views, as a contiguous float32 (B, H, N)."""
    batch, heads, rows, head_dim = out.shape
    delta = torch.empty((batch, heads, rows), dtype=torch.float32, device=out.device)
    block_r = 16 if interpret else 64
    _delta_kernel[(triton.cdiv(rows, block_r), batch * heads)](
        out, dout, delta, rows, heads, head_dim, *out.stride(), *dout.stride(),
        BLOCK_R=block_r, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=4)
    return delta


class BackwardConfig(NamedTuple):
    dkdv_block_m: int  # queries streamed per step past a block of keys
    dkdv_block_n: int  # keys a dK/dV program owns
    dq_block_m: int
    dq_block_n: int
    num_warps: int
    num_stages: int
    # dQ accumulated in the dK/dV pass with fp32 atomics (_dkdv_kernel's FUSED_DQ), on the
    # dK/dV tiles (the dq_* fields unused). The bf16/fp16 default, 32x128, 8 warps, 3 stages,
    # compiles for sm_90 at D=128 to 236 registers and no spills (scripts/inspect_bwd.py; 64
    # queries a step spill). Measured on the H200 it is slower than the two kernels at every
    # shape tried (kernels/NOTES.md, b4): an A/B switch, off by default.
    fused_dq: bool = False


def _config(head_dim: int, dtype: torch.dtype, interpret: bool) -> BackwardConfig:
    if interpret:
        return BackwardConfig(16, 32, 32, 16, 1, 1)
    if dtype == torch.float32 or head_dim > 128:
        return BackwardConfig(32, 64, 64, 32, 8, 2)
    # Compiled for sm_90 without spills at D=128 (230 and 154 registers); a dK/dV program owns
    # 128 keys and takes 32 queries at a time because its two fp32 accumulators fill the
    # registers (64 queries spill 160 bytes).
    return BackwardConfig(32, 128, 128, 64, 8, 3)


def _group_split(programs: int, group: int, sms: int, causal: bool) -> int:
    """How many dK/dV programs share one KV head's GQA group (GROUP_SPLIT): 1 unless more
    programs fill the SMs clearly better. ``programs`` is the unsplit grid's size.

    A dK/dV program holds a whole SM (230+ registers a thread at 8 warps: one per SM), so the
    grid runs in waves of ``sms`` programs. A split costs traffic, not FLOPs: each program
    writes fp32 partial dK and dV (s copies, summed on the host) and loads its K and V block
    (s times). So:
    - full mask: programs do equal work and a wave ends when its programs do; s splits make
      s times the programs, each 1/s as long: time ~ ceil(programs·s / sms) / s. Taken only
      under one wave, for the best s, ties to the smaller, if at least 1/4 faster (what the
      partials cost is not in the model). 128 programs on 132 SMs are a 97%-full wave: time
      1 at every s, so 1; 64 programs: 2 (one full wave of half-length programs).
    - causal: a program's work is the queries that see its keys, from all of them (first
      key block) to one block's worth (last). The split grid launches every head's longest
      programs first, which the scheduler then evens out; measured on the H200 (B=1, 64/8
      heads, results/reference/h200-kernels-17/bwd_gqa.md) split 2 took the backward from
      0.51 / 0.54 / 0.61 of cuDNN to 0.74 / 0.72 / 0.70 at 128 / 256 / 512 programs (N 2k /
      4k / 8k), split 4 and 8 were 2–8% behind 2, and at 1024 programs splits gained
      nothing. So under four waves: the smallest s >= 2 that makes at least one wave
      (16 programs: the whole group of 8), else 1.
    """
    if group == 1:
        return 1
    divisors = [s for s in range(1, group + 1) if group % s == 0]
    if causal:
        if programs >= 4 * sms:
            return 1
        return next((s for s in divisors[1:] if programs * s >= sms), group)
    if programs >= sms:
        return 1
    time = {s: -(-programs * s // sms) / s for s in divisors}
    best = min(divisors, key=lambda s: (time[s], s))
    return best if time[best] <= 0.75 else 1


def _split_count(group_split: int | None, group: int, programs: int, causal: bool,
                 device: torch.device, interpret: bool) -> int:
    """group_split checked, or the chooser's pick for this device (1 off CUDA)."""
    if group_split is not None:
        if isinstance(group_split, bool) or not isinstance(group_split, int) \
                or group_split < 1 or group % group_split:
            raise ValueError(f"group_split {group_split!r} must be a positive divisor of the "
                             f"GQA group size {group} (heads / kv_heads)")
        return group_split
    if interpret or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return _group_split(programs, group, sms, causal)


def _partials(t: torch.Tensor, split: int) -> torch.Tensor:
    """fp32 scratch for ``split`` partial sums of K-shaped t ((B, Hkv, Nk, D) or packed
    (T, Hkv, D)): the head axis split·Hkv wide, split-major, so that program z's partial of
    KV head h is head z·Hkv + h and the ragged edge stores keep working."""
    shape = list(t.shape)
    shape[1] *= split
    return torch.empty(shape, dtype=torch.float32, device=t.device)


class _Problem(NamedTuple):
    """The shape of one backward call, dense or ragged, as the kernels take it."""

    batch: int
    heads: int
    kv_heads: int
    seq_len: int  # ragged: the longest sequence (the grid's extent)
    kv_len: int
    total: int | None  # ragged: the packed tokens T, the stride of a head's LSE row
    cu_seqlens: torch.Tensor | None


def _problem(q, k, v, out, lse, dout, causal, window, softcap, cu_seqlens, max_seqlen
             ) -> _Problem:
    """Check the inputs against the layout they claim; ValueError naming what is off."""
    if window is not None and (not causal or window < 0):
        raise ValueError(f"window {window} needs causal=True and window >= 0")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap {softcap} must be positive")
    if cu_seqlens is None:
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError("dense q, k, v must be 4-D: (batch, heads, seq_len, head_dim)")
        batch, heads, seq_len, _ = q.shape
        problem = _Problem(batch, heads, k.shape[1], seq_len, k.shape[2], None, None)
        lse_shape = (batch, heads, seq_len)
    else:
        if q.dim() != 3 or k.dim() != 3:
            raise ValueError("ragged q, k, v must be packed 3-D: (tokens, heads, head_dim)")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or len(cu_seqlens) < 2:
            raise ValueError("cu_seqlens must be 1-D int32 offsets (batch + 1)")
        total, heads, _ = q.shape
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        problem = _Problem(len(cu_seqlens) - 1, heads, k.shape[1], max_seqlen, max_seqlen,
                           total, cu_seqlens)
        lse_shape = (heads, total)
    if v.shape != k.shape or out.shape != q.shape or dout.shape != q.shape:
        raise ValueError(f"incompatible shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, out {tuple(out.shape)}, dout {tuple(dout.shape)}")
    if tuple(lse.shape) != lse_shape or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 {lse_shape}, got {lse.dtype} {tuple(lse.shape)}")
    if heads % problem.kv_heads:
        raise ValueError(f"heads ({heads}) is not a multiple of kv_heads ({problem.kv_heads})")
    return problem


def _heads_view(t: torch.Tensor, ragged: bool) -> torch.Tensor:
    """The 4-D (batch, head, row, dim) view the descriptors take: a packed (T, H, D) tensor
    as (1, H, T, D), the rows of a head one token apart."""
    return t.permute(1, 0, 2).unsqueeze(0) if ragged else t


def _feature_args(problem: _Problem, grad: torch.Tensor, head_dim: int, scale: float,
                  window: int | None, softcap: float | None) -> dict:
    """The runtime arguments of the features, None where a feature is off (so that a dense
    launch specialises them away); ``grad`` is the output an edge tile stores through."""
    ragged = problem.cu_seqlens is not None
    return dict(
        CuSeqlens=problem.cu_seqlens, total=problem.total,
        stride_tok=grad.stride(0) if ragged else None,
        stride_head=grad.stride(1) if ragged else None, head_dim=head_dim if ragged else None,
        window=window, cap_scale=None if softcap is None else scale / softcap,
        cap_log2=None if softcap is None else softcap * _LOG2E)


def attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, *, causal: bool, scale: float, config: BackwardConfig | None = None,
    fp32_precision: str = "tf32", window: int | None = None, softcap: float | None = None,
    cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
    group_split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of attention_forward, from its saved output and LSE, in the
    inputs' layout; fp32 inputs multiplied as ``fp32_precision`` says ("tf32" or "ieee",
    triton_flash.dot_precision).

    Dense: q, out, dout (B, H, N, D); k, v (B, Hkv, Nk, D); lse float32 (B, H, N). Ragged
    (``cu_seqlens`` given: int32 (B + 1) offsets; ``max_seqlen`` at least the longest
    sequence, read from cu_seqlens when None, at the cost of a device sync; the grid covers
    that many rows): q, out, dout packed (T, H, D); k, v (T, Hkv, D); lse float32
    (H, T), each head's row contiguous; each sequence attends within itself. lse is the
    natural-log log-sum-exp of each query's scaled, capped, masked scores.

    ``config.fused_dq``, or the environment variable ``FLASHBENCH_TRITON_BWD=fused`` (which
    turns it on whatever the config says, for A/B sweeps without code changes): one kernel
    that adds dQ into an fp32 accumulator with atomics as it computes dK and dV (5 matrix
    products per tile pair instead of 7), instead of the dK/dV and dQ kernels.

    ``window``: query i sees keys i' - window .. i' (i' = i + Nk - N, the causal diagonal
    aligned to the end); needs causal. ``softcap``: scores s = scale·q·kᵀ capped as
    c·tanh(s / c) before masking and softmax.

    ``group_split``: how many dK/dV programs share a KV head's query heads, each summing
    its share into an fp32 partial that the host adds up; a divisor of heads / kv_heads
    (ValueError otherwise); None: _group_split's pick for the device (1 off CUDA). The fused
    path does not split (it runs with 1 whatever is asked: a split with atomics is untested).
    """
    problem = _problem(q, k, v, out, lse, dout, causal, window, softcap, cu_seqlens, max_seqlen)
    ragged = cu_seqlens is not None
    head_dim = q.shape[-1]
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = config or _config(head_dim, q.dtype, interpret)
    group = problem.heads // problem.kv_heads
    dkdv_grid = (triton.cdiv(problem.kv_len, cfg.dkdv_block_n), problem.batch * problem.kv_heads)
    split = _split_count(group_split, group, dkdv_grid[0] * dkdv_grid[1], causal, q.device,
                         interpret)
    fused = cfg.fused_dq or os.environ.get("FLASHBENCH_TRITON_BWD") == "fused"
    if fused:
        split = 1  # fused: dK/dV stored directly (a split with its atomics is untested)
    block_d = triton.next_power_of_2(head_dim)
    # delta_i = rowsum(dO_i * O_i) = rowsum(P_i * dP_i): the softmax's backward term, once,
    # in the LSE's layout ((1, H, T) is ragged's (H, T)).
    delta = _delta(_heads_view(out, ragged), _heads_view(dout, ragged), interpret)
    lse = lse.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk, dv = (torch.empty_like(t, memory_format=torch.contiguous_format) if split == 1
              else _partials(t, split) for t in (k, v))
    q4, k4, v4, do4 = (_tma_ready(_heads_view(t, ragged)) for t in (q, k, v, dout))
    dq4, dk4, dv4 = (_heads_view(t, ragged) for t in (dq, dk, dv))

    def desc(t: torch.Tensor, rows: int) -> TensorDescriptor:
        return TensorDescriptor.from_tensor(t, [1, 1, rows, block_d])

    common = dict(Lse=lse, Delta=delta, group=group,
                  seq_len=problem.seq_len, kv_len=problem.kv_len, qk_scale=scale * _LOG2E,
                  sm_scale=scale, BLOCK_D=block_d, CAUSAL=causal, WINDOW=window is not None,
                  SOFTCAP=softcap is not None, VARLEN=ragged, INTERPRET=interpret,
                  DOT_PRECISION=dot_precision(q.dtype, fp32_precision),
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    # Fused: dQ summed in fp32 by atomics, cast once at the end; no _dq_kernel.
    acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if fused else None
    stride_qb, stride_qh, stride_qm, _ = (_heads_view(acc, ragged).stride() if fused
                                          else (None,) * 4)
    bm, bn = cfg.dkdv_block_m, cfg.dkdv_block_n
    _dkdv_kernel[dkdv_grid if split == 1 else (split, dkdv_grid[1], dkdv_grid[0])](
        desc(q4, bm), desc(k4, bn), desc(v4, bn), desc(do4, bm), desc(dk4, bn), desc(dv4, bn),
        Dk=dk if ragged else None, Dv=dv if ragged else None, DqAcc=acc,
        num_heads=problem.heads, kv_heads=problem.kv_heads, stride_qb=stride_qb,
        stride_qh=stride_qh, stride_qm=stride_qm, q_dim=head_dim if fused else None,
        BLOCK_M=bm, BLOCK_N=bn, GROUP_SPLIT=split, FUSED_DQ=fused,
        **_feature_args(problem, dk, head_dim, scale, window, softcap), **common)
    if fused:
        return dq.copy_(acc), dk, dv
    bm, bn = cfg.dq_block_m, cfg.dq_block_n
    _dq_kernel[(triton.cdiv(problem.seq_len, bm), problem.batch * problem.heads)](
        desc(q4, bm), desc(k4, bn), desc(v4, bn), desc(do4, bm), desc(dq4, bm),
        Dq=dq if ragged else None, num_heads=problem.heads, BLOCK_M=bm, BLOCK_N=bn,
        **_feature_args(problem, dq, head_dim, scale, window, softcap), **common)
    if split > 1:
        # The partials summed in fp32, rounded once.
        dk, dv = (p.unflatten(1, (split, -1)).sum(1).to(t.dtype) for p, t in ((dk, k), (dv, v)))
    return dq, dk, dv

"""FlashAttention-2 backward in Triton: P recomputed from the saved LSE, dK/dV per KV head, dQ."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from flashbench.kernels.triton_flash import _load_tile, _tma_ready, dot_precision

__all__ = ["BackwardConfig", "attention_backward"]

_LOG2E = 1.4426950408889634


@triton.jit
def _dkdv_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dk, desc_dv, Lse, Delta,
    num_heads, kv_heads, group, seq_len, kv_len, qk_scale, sm_scale,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # One program owns BLOCK_N keys of one KV head and streams every query of every query head
    # in that head's GQA group past them: dK and dV come out summed over the group, with no
    # atomics and no repeated K/V.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // kv_heads
    kv_head = pid_bh % kv_heads
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(desc_k, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    v = _load_tile(desc_v, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    diag = kv_len - seq_len
    # Causal: query i sees key j iff j <= i + diag, so queries before start_n - diag see none
    # of this block's keys; their blocks are skipped.
    lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M if CAUSAL else 0
    # The interpreter's scalars are numpy arrays that range() rejects: while loops there.
    if INTERPRET:
        g = 0
        while g < group:
            head = kv_head * group + g
            row = (batch * num_heads + head).to(tl.int64) * seq_len
            start_m = lo
            while start_m < seq_len:
                dk, dv = _dkdv_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, batch, head, row,
                                    start_m, offs_n, seq_len, kv_len, diag, qk_scale, BLOCK_M,
                                    BLOCK_D, CAUSAL, INTERPRET, DOT_PRECISION)
                start_m += BLOCK_M
            g += 1
    else:
        for g in range(0, group):
            head = kv_head * group + g
            row = (batch * num_heads + head).to(tl.int64) * seq_len
            for start_m in range(lo, seq_len, BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, batch, head, row,
                                    start_m, offs_n, seq_len, kv_len, diag, qk_scale, BLOCK_M,
                                    BLOCK_D, CAUSAL, INTERPRET, DOT_PRECISION)
    # The descriptors clip the stores to this head's keys and the real head dim.
    desc_dk.store([batch, kv_head, start_n, 0],
                  (dk * sm_scale).to(desc_dk.dtype).reshape(1, 1, BLOCK_N, BLOCK_D))
    desc_dv.store([batch, kv_head, start_n, 0],
                  dv.to(desc_dv.dtype).reshape(1, 1, BLOCK_N, BLOCK_D))


@triton.jit
def _dkdv_tile(dk, dv, k, v, desc_q, desc_do, Lse, Delta, batch, head, row, start_m, offs_n,
               seq_len, kv_len, diag, qk_scale, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
               CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(desc_q, batch, head, start_m, BLOCK_M, BLOCK_D, INTERPRET)
    do = _load_tile(desc_do, batch, head, start_m, BLOCK_M, BLOCK_D, INTERPRET)
    # Rows past the end get an infinite LSE, so their recomputed probabilities are exactly 0.
    lse = tl.load(Lse + row + offs_m, mask=offs_m < seq_len, other=float("inf"))
    delta = tl.load(Delta + row + offs_m, mask=offs_m < seq_len, other=0.0)
    # Work on the transposed tile (keys down, queries across) so dK and dV accumulate without
    # transposing P or dS.
    qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
    p_t = tl.exp2(qk_t * qk_scale - lse[None, :] * 1.4426950408889634)
    keep = offs_n[:, None] < kv_len
    if CAUSAL:
        keep = keep & (offs_n[:, None] <= offs_m[None, :] + diag)
    p_t = tl.where(keep, p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dq_kernel(
    desc_q, desc_k, desc_v, desc_do, desc_dq, Lse, Delta,
    num_heads, group, seq_len, kv_len, qk_scale, sm_scale,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # One program owns BLOCK_M queries of one head and streams the keys they can see.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    kv_head = head // group
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row = pid_bh.to(tl.int64) * seq_len
    q = _load_tile(desc_q, batch, head, start_m, BLOCK_M, BLOCK_D, INTERPRET)
    do = _load_tile(desc_do, batch, head, start_m, BLOCK_M, BLOCK_D, INTERPRET)
    lse = tl.load(Lse + row + offs_m, mask=offs_m < seq_len, other=float("inf"))
    delta = tl.load(Delta + row + offs_m, mask=offs_m < seq_len, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diag = kv_len - seq_len
    hi = tl.minimum(start_m + BLOCK_M + diag, kv_len) if CAUSAL else kv_len
    if INTERPRET:
        start_n = 0
        while start_n < hi:
            dq = _dq_tile(dq, q, do, lse, delta, desc_k, desc_v, batch, kv_head, start_n, offs_m,
                          kv_len, diag, qk_scale, BLOCK_N, BLOCK_D, CAUSAL, INTERPRET,
                          DOT_PRECISION)
            start_n += BLOCK_N
    else:
        for start_n in range(0, hi, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse, delta, desc_k, desc_v, batch, kv_head, start_n, offs_m,
                          kv_len, diag, qk_scale, BLOCK_N, BLOCK_D, CAUSAL, INTERPRET,
                          DOT_PRECISION)
    desc_dq.store([batch, head, start_m, 0],
                  (dq * sm_scale).to(desc_dq.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))


@triton.jit
def _dq_tile(dq, q, do, lse, delta, desc_k, desc_v, batch, kv_head, start_n, offs_m, kv_len,
             diag, qk_scale, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
             INTERPRET: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(desc_k, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    v = _load_tile(desc_v, batch, kv_head, start_n, BLOCK_N, BLOCK_D, INTERPRET)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    p = tl.exp2(qk * qk_scale - lse[:, None] * 1.4426950408889634)
    keep = offs_n[None, :] < kv_len
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)
    p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


class BackwardConfig(NamedTuple):
    dkdv_block_m: int  # queries streamed per step past a block of keys
    dkdv_block_n: int  # keys a dK/dV program owns
    dq_block_m: int
    dq_block_n: int
    num_warps: int
    num_stages: int


def _config(head_dim: int, dtype: torch.dtype, interpret: bool) -> BackwardConfig:
    if interpret:
        return BackwardConfig(16, 32, 32, 16, 1, 1)
    if dtype == torch.float32 or head_dim > 128:
        return BackwardConfig(32, 64, 64, 32, 8, 2)
    # Compiled for sm_90 without spills at D=128 (230 and 154 registers); a dK/dV program owns
    # 128 keys and takes 32 queries at a time because its two fp32 accumulators fill the
    # registers (64 queries spill 160 bytes).
    return BackwardConfig(32, 128, 128, 64, 8, 3)


def attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dout: torch.Tensor, *, causal: bool, scale: float, config: BackwardConfig | None = None,
    fp32_precision: str = "tf32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of attention_forward, from its saved output and LSE; fp32 inputs
    multiplied as ``fp32_precision`` says ("tf32" or "ieee", triton_flash.dot_precision)."""
    precision = dot_precision(q.dtype, fp32_precision)
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = config or _config(head_dim, q.dtype, interpret)
    block_d = triton.next_power_of_2(head_dim)
    q, k, v, dout = (_tma_ready(t) for t in (q, k, v, dout))
    # delta_i = rowsum(dO_i * O_i) = rowsum(P_i * dP_i): the softmax's backward term, once.
    delta = (out.float() * dout.float()).sum(-1).contiguous()
    lse = lse.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)

    def desc(t: torch.Tensor, rows: int) -> TensorDescriptor:
        return TensorDescriptor.from_tensor(t, [1, 1, rows, block_d])

    qk_scale = scale * _LOG2E
    common = dict(BLOCK_D=block_d, CAUSAL=causal, INTERPRET=interpret, DOT_PRECISION=precision,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _dkdv_kernel[(triton.cdiv(kv_len, cfg.dkdv_block_n), batch * kv_heads)](
        desc(q, cfg.dkdv_block_m), desc(k, cfg.dkdv_block_n), desc(v, cfg.dkdv_block_n),
        desc(dout, cfg.dkdv_block_m), desc(dk, cfg.dkdv_block_n), desc(dv, cfg.dkdv_block_n),
        lse, delta, heads, kv_heads, heads // kv_heads, seq_len, kv_len, qk_scale, scale,
        BLOCK_M=cfg.dkdv_block_m, BLOCK_N=cfg.dkdv_block_n, **common)
    _dq_kernel[(triton.cdiv(seq_len, cfg.dq_block_m), batch * heads)](
        desc(q, cfg.dq_block_m), desc(k, cfg.dq_block_n), desc(v, cfg.dq_block_n),
        desc(dout, cfg.dq_block_m), desc(dq, cfg.dq_block_m), lse, delta,
        heads, heads // kv_heads, seq_len, kv_len, qk_scale, scale,
        BLOCK_M=cfg.dq_block_m, BLOCK_N=cfg.dq_block_n, **common)
    return dq, dk, dv

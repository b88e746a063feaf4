"""FlashAttention-2 style attention forward in Triton: online softmax, GQA/MQA, bottom-right causal mask, LSE."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = ["SUPPORTED_HEAD_DIMS", "attention_forward", "unsupported_reason"]

SUPPORTED_HEAD_DIMS: tuple[int, ...] = (32, 64, 96, 128, 256)
_SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
# Working in base 2 turns every exp into one exp2 and lets the softmax scale share the score multiply.
_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, stride_kn, stride_vn,
    offs_m, offs_n, d_mask, kv_len, diag, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, INTERPRET: tl.constexpr,
):
    cols = start_n + offs_n
    # Unmasked tiles lie wholly inside kv_len; only the padded head-dim lanes need guarding there.
    if MASKED:
        kv_mask = (cols < kv_len)[:, None] & d_mask[None, :]
    else:
        kv_mask = d_mask[None, :]
    k = tl.load(k_ptrs + start_n * stride_kn, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs + start_n * stride_vn, mask=kv_mask, other=0.0)
    if INTERPRET:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    qk = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        keep = cols[None, :] < kv_len
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
        qk = tl.where(keep, qk, float("-inf"))

    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _attend_tiles(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, lo, hi, stride_kn, stride_vn,
    offs_m, offs_n, d_mask, kv_len, diag, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr,
):
    if INTERPRET:
        # The interpreter's scalars are 1-element numpy arrays, which range() rejects under numpy >= 2.4;
        # a while loop only needs their truth value.
        start_n = lo
        while start_n < hi:
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, stride_kn, stride_vn,
                offs_m, offs_n, d_mask, kv_len, diag, qk_scale, MASKED, CAUSAL, INTERPRET,
            )
            start_n += BLOCK_N
    else:
        # A for loop over tiles is what the software pipeliner (num_stages) works on.
        for start_n in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, stride_kn, stride_vn,
                offs_m, offs_n, d_mask, kv_len, diag, qk_scale, MASKED, CAUSAL, INTERPRET,
            )
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, group, seq_len, kv_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, INTERPRET: tl.constexpr,
):
    # Under a causal mask the last query blocks see the most keys; launching them first shortens the tail.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 bases: batch * head offsets overflow int32 on large benchmark shapes.
    batch = (pid_bh // num_heads).to(tl.int64)
    head = (pid_bh % num_heads).to(tl.int64)
    kv_head = head // group

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_mask = (offs_m < seq_len)[:, None] & d_mask[None, :]

    q_ptrs = Q + batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    k_ptrs = K + batch * stride_kb + kv_head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + batch * stride_vb + kv_head * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    q = tl.load(q_ptrs, mask=row_mask, other=0.0)
    if INTERPRET:
        # The interpreter gets bf16 arithmetic wrong; its fp32 is exact IEEE.
        q = q.to(tl.float32)

    # A finite floor instead of -inf: a row that has seen no key yet then gets exp2(-inf - floor) = 0
    # rather than NaN, and ends with l_i == 0, which the epilogue guards.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Bottom-right causal alignment: row i sees key j iff j <= i + diag.
    diag = kv_len - seq_len
    if CAUSAL:
        # Keys the block's first row sees are seen by every row; keys past its last row's diagonal by none.
        unmasked_hi = tl.minimum(start_m + diag + 1, kv_len)
        hi = tl.minimum(start_m + BLOCK_M + diag, kv_len)
    else:
        unmasked_hi = kv_len
        hi = kv_len
    unmasked_hi = (unmasked_hi // BLOCK_N) * BLOCK_N

    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, 0, unmasked_hi, stride_kn, stride_vn,
        offs_m, offs_n, d_mask, kv_len, diag, qk_scale,
        MASKED=False, CAUSAL=CAUSAL, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
    )
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, unmasked_hi, hi, stride_kn, stride_vn,
        offs_m, offs_n, d_mask, kv_len, diag, qk_scale,
        MASKED=True, CAUSAL=CAUSAL, INTERPRET=INTERPRET, BLOCK_N=BLOCK_N,
    )

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    o_ptrs = Out + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_mask)

    # Back from base 2 to the natural log that callers (and a backward pass) expect.
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    tl.store(Lse + pid_bh * seq_len + offs_m, lse, mask=offs_m < seq_len)


class _LaunchConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _launch_config(head_dim: int, dtype: torch.dtype, interpret: bool) -> _LaunchConfig:
    # Fixed, untuned starting points for an H100; each compiles for sm_90 without register spills.
    if interpret:
        # The numpy interpreter pays per program and per op; small tiles keep tests fast, and
        # BLOCK_M != BLOCK_N makes the causal tail span several K/V tiles.
        return _LaunchConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        # 4-byte K/V tiles: smaller tiles keep the pipelined stages inside shared memory.
        if head_dim <= 128:
            return _LaunchConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
        return _LaunchConfig(block_m=64, block_n=16, num_warps=8, num_stages=2)
    if head_dim <= 128:
        return _LaunchConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)
    # Eight warps, not four: a 64x256 fp32 accumulator over four warps spills registers.
    return _LaunchConfig(block_m=64, block_n=32, num_warps=8, num_stages=2)


def unsupported_reason(
    *,
    heads: int,
    kv_heads: int,
    seq_len: int,
    kv_len: int,
    head_dim: int,
    dtype: torch.dtype,
    causal: bool,
) -> str | None:
    """Return None when the kernel can run this shape, else a one-line reason why not."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head_dim {head_dim} is not one of {SUPPORTED_HEAD_DIMS}"
    if dtype not in _SUPPORTED_DTYPES:
        return f"dtype {dtype} is not float16, bfloat16 or float32"
    if heads < 1 or kv_heads < 1 or seq_len < 1 or kv_len < 1:
        return "heads, kv_heads, seq_len and kv_len must all be at least 1"
    if heads % kv_heads != 0:
        return f"heads ({heads}) is not a multiple of kv_heads ({kv_heads})"
    if causal and seq_len > kv_len:
        return (
            f"causal with seq_len ({seq_len}) > kv_len ({kv_len}): with the diagonal aligned to the end "
            "the first query rows would see no key"
        )
    return None


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over q (B, H, N, D) and k, v (B, Hkv, Nk, D); returns (out in q.dtype, fp32 natural-log LSE (B, H, N))."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k and v must be 4-D: (batch, heads, seq_len, head_dim)")
    batch, heads, seq_len, head_dim = q.shape
    kv_batch, kv_heads, kv_len, kv_dim = k.shape
    if v.shape != k.shape or kv_batch != batch or kv_dim != head_dim:
        raise ValueError(f"incompatible shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k and v must share dtype and device")
    reason = unsupported_reason(
        heads=heads, kv_heads=kv_heads, seq_len=seq_len, kv_len=kv_len,
        head_dim=head_dim, dtype=q.dtype, causal=causal,
    )
    if reason is not None:
        raise ValueError(reason)

    # TRITON_INTERPRET=1 (set before triton is imported) runs the kernel on triton's CPU interpreter,
    # which needs the workarounds this flag turns on.
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = _launch_config(head_dim, q.dtype, interpret)
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(seq_len, cfg.block_m), batch * heads)
    # fp32 inputs take tl.dot's default TF32 tensor-core path on GPU (~1e-3 relative); the interpreter is exact.
    _attn_fwd_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, heads // kv_heads, seq_len, kv_len, scale * _LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        CAUSAL=causal, INTERPRET=interpret,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse

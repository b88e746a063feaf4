"""Correctness: a high-precision reference attention, error metrics and per-dtype tolerances."""

from __future__ import annotations

import torch

from flashbench.measure.inputs import AttentionInputs, dense_kv
from flashbench.measure.masks import apply_softcap, keep_mask

__all__ = ["FP32_IEEE_TOLERANCE", "REFERENCE_CHUNK_BYTES", "TOLERANCE", "errors",
           "reference_attention", "reference_gradients", "reference_input_gradients",
           "reference_output", "tolerance"]

# Relative Frobenius error allowed per input dtype. 16-bit outputs carry rounding of about
# 2^-9 (bf16) / 2^-12 (fp16) per element, plus P rounded to the input dtype before P·V in
# every flash kernel; fp32 allows for TF32 matrix products (about 3e-4 relative).
# TF32 keeps fp16's 10-bit mantissa: fp32 computed in TF32 gets fp16's allowance (on the H200
# our TF32 backward reached 2.3e-3, scripts/fp32_precision_check.py).
TOLERANCE: dict[str, float] = {"fp32": 5e-3, "fp16": 5e-3, "bf16": 2e-2}
# fp32 whose products ran in IEEE fp32 (a row's matmul_precision "ieee"): the kernel's own
# rounding and exp2 are about 1e-6 relative; 1e-4 leaves room for long rows and backward
# sums, and still refuses most of the error TF32 products bring (3e-4 and up).
FP32_IEEE_TOLERANCE = 1e-4

REFERENCE_CHUNK_BYTES = 256 << 20  # bound the reference's own S matrix per chunk


def tolerance(dtype: str, matmul_precision: str | None) -> float:
    """The relative error a row may show: its dtype's, tighter for fp32 computed in IEEE
    (TF32 or not said: the TF32 allowance)."""
    return FP32_IEEE_TOLERANCE if dtype == "fp32" and matmul_precision == "ieee" \
        else TOLERANCE[dtype]


def _masked_out(seq_len: int, kv_len: int, group: int, causal: bool, window: int | None,
                device: torch.device) -> torch.Tensor | None:
    """The pairs not attended, for the query heads of one group stacked along the rows."""
    keep = keep_mask(seq_len, kv_len, causal=causal, window=window, device=device)
    return None if keep is None else (~keep).repeat(group, 1)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        scale: float, dtype: torch.dtype, window: int | None = None,
                        softcap: float | None = None) -> torch.Tensor:
    """softmax(cap(Q·Kᵀ·scale))·V upcast to ``dtype``, in chunks of heads so it fits beside
    the case."""
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    qf = q.reshape(batch * kv_heads, group * seq_len, head_dim)
    kf = k.reshape(batch * kv_heads, kv_len, head_dim)
    vf = v.reshape(batch * kv_heads, kv_len, head_dim)
    masked_out = _masked_out(seq_len, kv_len, group, causal, window, q.device)
    out = torch.empty(qf.shape, dtype=dtype, device=q.device)
    per_slice = group * seq_len * kv_len * torch.finfo(dtype).bits // 8
    step = max(1, REFERENCE_CHUNK_BYTES // max(per_slice, 1))
    for i in range(0, qf.shape[0], step):
        s = torch.bmm(qf[i:i + step].to(dtype), kf[i:i + step].to(dtype).transpose(1, 2))
        s = apply_softcap(s.mul_(scale), softcap)
        if masked_out is not None:
            s.masked_fill_(masked_out, float("-inf"))
        out[i:i + step] = torch.bmm(torch.softmax(s, dim=-1), vf[i:i + step].to(dtype))
    return out.view(batch, heads, seq_len, head_dim)


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max absolute error, relative Frobenius error) of ``out`` against ``ref``; NaN never passes."""
    diff = out.to(ref.dtype) - ref
    if not torch.isfinite(diff).all():
        return float("nan"), float("nan")
    max_abs = diff.abs().max().item()
    rel = (torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()
    return max_abs, rel


def reference_gradients(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, *,
                        causal: bool, scale: float, dtype: torch.dtype,
                        window: int | None = None, softcap: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, dq, dk, dv) in ``dtype`` by autograd, one KV head (and its query group) at a time.

    A KV head and its query heads form an independent sub-problem, so each chunk's dK and dV
    are complete and the reference's own S and P stay the size of one chunk.
    """
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    qf = q.detach().reshape(batch * kv_heads, group * seq_len, head_dim)
    kf = k.detach().reshape(batch * kv_heads, kv_len, head_dim)
    vf = v.detach().reshape(batch * kv_heads, kv_len, head_dim)
    df = dout.detach().reshape(batch * kv_heads, group * seq_len, head_dim)
    masked_out = _masked_out(seq_len, kv_len, group, causal, window, q.device)
    results = [torch.empty(t.shape, dtype=dtype, device=q.device) for t in (qf, qf, kf, vf)]
    for i in range(qf.shape[0]):
        qi, ki, vi = (t[i].to(dtype).requires_grad_() for t in (qf, kf, vf))
        s = qi @ ki.T * scale
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)  # out of place: autograd differentiates it
        if masked_out is not None:
            s = s.masked_fill(masked_out, float("-inf"))
        out = torch.softmax(s, dim=-1) @ vi
        grads = torch.autograd.grad(out, (qi, ki, vi), df[i].to(dtype))
        for result, value in zip(results, (out.detach(), *grads)):
            result[i] = value
    out, dq, dk, dv = results
    return (out.view(q.shape), dq.view(q.shape), dk.view(k.shape), dv.view(v.shape))


def _sequences(inputs: AttentionInputs):
    """(start, end) of each sequence of a ragged batch, and its tensors as (1, heads, n, D)."""
    start = 0
    for n in inputs.seq_lens:
        yield start, start + n, tuple(t[start:start + n].transpose(0, 1).unsqueeze(0)
                                      for t in inputs.tensors)
        start += n


def reference_output(inputs: AttentionInputs, dtype: torch.dtype) -> torch.Tensor:
    """The reference output in the inputs' layout (packed for a ragged batch)."""
    mask = dict(causal=inputs.causal, scale=inputs.scale, dtype=dtype, window=inputs.window,
                softcap=inputs.softcap)
    if inputs.layout == "paged":
        # A sequence at a time: the whole cache gathered (and copied into the reference's
        # layout) beside its pool did not fit on the H200 at batch 64 and a 128k cache.
        out = torch.empty(inputs.q.shape, dtype=dtype, device=inputs.q.device)
        for b in range(inputs.q.shape[0]):
            out[b:b + 1] = reference_attention(inputs.q[b:b + 1], *dense_kv(inputs, b), **mask)
        return out
    if inputs.layout == "dense":
        return reference_attention(*inputs.tensors, **mask)
    out = torch.empty(inputs.q.shape, dtype=dtype, device=inputs.q.device)
    for start, end, (q, k, v) in _sequences(inputs):
        out[start:end] = reference_attention(q, k, v, **mask)[0].transpose(0, 1)
    return out


def reference_input_gradients(inputs: AttentionInputs, dout: torch.Tensor, dtype: torch.dtype
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' layout (a paged cache has no backward)."""
    mask = dict(causal=inputs.causal, scale=inputs.scale, dtype=dtype, window=inputs.window,
                softcap=inputs.softcap)
    if inputs.layout == "dense":
        return reference_gradients(*inputs.tensors, dout, **mask)[1:]
    assert inputs.layout == "ragged", "a paged KV cache has no backward"
    grads = tuple(torch.empty(t.shape, dtype=dtype, device=t.device) for t in inputs.tensors)
    for start, end, tensors in _sequences(inputs):
        d = dout[start:end].transpose(0, 1).unsqueeze(0)
        for whole, part in zip(grads, reference_gradients(*tensors, d, **mask)[1:]):
            whole[start:end] = part[0].transpose(0, 1)
    return grads

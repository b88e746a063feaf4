"""Naive attention: every intermediate (S, P) materialized in device memory, the textbook way."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["prepare"]


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
            scale: float) -> Callable[[], torch.Tensor]:
    """Return a zero-argument callable computing softmax(Q·Kᵀ·scale)·V.

    S = Q·Kᵀ·scale is written to memory, the causal mask applied in place, S upcast to fp32,
    the softmax reads it and writes P in fp32, P is cast back, and P·V reads it: round trips of
    N×Nk matrices through HBM that the ``naive`` traffic model in flashbench.core.costs counts.
    """
    batch, heads, seq_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # GQA without copying K/V: the query heads of one group are stacked along the rows, so one
    # batched matmul per KV head serves all of them.
    q3 = q.contiguous().view(batch * kv_heads, group * seq_len, head_dim)
    k3t = k.contiguous().view(batch * kv_heads, kv_len, head_dim).transpose(1, 2)
    v3 = v.contiguous().view(batch * kv_heads, kv_len, head_dim)
    masked_out = None
    if causal:
        # Diagonal aligned to the end: query i sees key j iff j <= i + kv_len - seq_len.
        keep = torch.ones(seq_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - seq_len)
        masked_out = (~keep).repeat(group, 1)

    def run() -> torch.Tensor:
        s = torch.bmm(q3 * scale, k3t)
        if masked_out is not None:
            s.masked_fill_(masked_out, float("-inf"))
        # An explicit fp32 copy of S, then the softmax: PyTorch's softmax(dtype=float32) makes
        # the same copy internally for bf16, so this is what happens anyway, made visible.
        s = s.float()
        p = torch.softmax(s, dim=-1)
        del s  # free S before P's cast copy: the peak is two fp32 N×Nk matrices, not three
        if p.dtype != v3.dtype:
            p = p.to(v3.dtype)
        return torch.bmm(p, v3).view(batch, heads, seq_len, head_dim)

    return run

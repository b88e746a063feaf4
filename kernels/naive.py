"""Naive attention: every intermediate (S, P) materialized in device memory, the textbook way."""

from __future__ import annotations

from typing import Callable

import torch

from flashbench.measure.inputs import AttentionInputs, dense_kv, packed, padded
from flashbench.measure.masks import apply_softcap, keep_mask, padded_keep_mask

__all__ = ["prepare"]


def prepare(inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
    """Return a zero-argument callable computing softmax(cap(Q·Kᵀ·scale))·V.

    S = Q·Kᵀ·scale is written to memory, the mask applied in place, S upcast to fp32 (and
    capped there), the softmax reads it and writes P in fp32, P is cast back, and P·V reads
    it: round trips of N×Nk matrices through HBM that the ``naive`` traffic model in
    flashbench.core.costs counts. A paged cache is gathered and a ragged batch padded inside
    the call, as a user of this code would have to.
    """
    if inputs.layout == "ragged":
        keep = padded_keep_mask(inputs.seq_lens, inputs.max_seqlen, causal=inputs.causal,
                                window=inputs.window, device=inputs.q.device)
        core = _attention(inputs, keep)
        return lambda: packed(inputs, core(*(padded(inputs, t) for t in inputs.tensors)))
    q = inputs.q
    kv_len = inputs.kv_len if inputs.layout == "paged" else inputs.k.shape[2]
    core = _attention(inputs, keep_mask(q.shape[2], kv_len, causal=inputs.causal,
                                        window=inputs.window, device=q.device))
    if inputs.layout == "paged":
        return lambda: core(q, *dense_kv(inputs))
    return lambda: core(*inputs.tensors)


def _attention(inputs: AttentionInputs, keep: torch.Tensor | None):
    """The materialized attention of dense (B, H, N, D) tensors; ``keep``: (N, Nk) or
    (B, 1, N, Nk) booleans, or None for every pair."""
    scale, softcap = inputs.scale, inputs.softcap

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads, seq_len, head_dim = q.shape
        kv_heads, kv_len = k.shape[1], k.shape[2]
        group = heads // kv_heads
        # GQA without copying K/V: the query heads of one group are stacked along the rows,
        # so one batched matmul per KV head serves all of them.
        q3 = q.contiguous().view(batch * kv_heads, group * seq_len, head_dim)
        k3t = k.contiguous().view(batch * kv_heads, kv_len, head_dim).transpose(1, 2)
        v3 = v.contiguous().view(batch * kv_heads, kv_len, head_dim)
        s = torch.bmm(q3 * scale, k3t)
        if softcap is not None:  # capped before masking: tanh would turn -inf into -softcap
            s = apply_softcap(s.float(), softcap)
        if keep is not None:
            if keep.dim() == 2:
                masked_out = (~keep).repeat(group, 1)
            else:  # one mask per sequence, shared by its KV heads and their query groups
                masked_out = (~keep).expand(batch, kv_heads, seq_len, kv_len).repeat(
                    1, 1, group, 1).view(batch * kv_heads, group * seq_len, kv_len)
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

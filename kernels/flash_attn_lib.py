"""Tri Dao's flash-attn package (FlashAttention-2), where it is installed: dense, window, softcap, ragged and paged.

flash-attn is an optional package (``pip install flash-attn``, built against the local torch
and CUDA); without it the backend is unavailable and says so (``flashbench list``, and every
row ``unsupported`` with that reason). It is imported only when a case or ``list`` asks. Its
calls, one per layout:

* dense: ``flash_attn_func`` on (B, N, H, D) tensors: ours are (B, H, N, D), and their
  transposes are views (flash-attn copies only a tensor whose last dim is not contiguous),
  as is the output transposed back;
* ragged: ``flash_attn_varlen_func`` on our packed layout as it is (it is flash-attn's own):
  ``cu_seqlens_q`` = ``cu_seqlens_k`` and ``max_seqlen_q`` = ``max_seqlen_k``;
* paged: ``flash_attn_with_kvcache`` on our pool as ``k_cache``/``v_cache`` (num_blocks,
  page_size, Hkv, D), with ``block_table`` and ``cache_seqlens``; q as a (B, N, H, D) view.
  FA2's paged kernel needs ``page_block_size`` to be a multiple of 256 (its docstring, and a
  check in its C++), so other page sizes are refused.

Every call passes ``softmax_scale``, ``causal`` (its diagonal is aligned to the bottom right,
as ours), ``window_size=(window, 0)`` with a window (keys i' - window ..  i', i' the query's
aligned position) else (-1, -1), and ``softcap`` (0.0: none; flash-attn >= 2.6). GQA is
native (K and V with fewer heads). FA2 has fp16 and bf16 kernels only, and head dims up to
256; the backward (bwd, fwd_bwd) runs through its autograd functions (dense and ragged).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flashbench.kernels.optional import package, package_unavailable, version
from flashbench.measure.inputs import AttentionInputs

__all__ = ["FEATURES", "PAGE_MULTIPLE", "prepare", "resolve", "unavailable", "unsupported"]

FEATURES = ("window", "softcap", "ragged", "paged")
PAGE_MULTIPLE = 256  # FA2's flash_attn_with_kvcache: page_block_size % 256 == 0
MAX_HEAD_DIM = 256


def unavailable(device: torch.device) -> str | None:
    return package_unavailable("flash_attn", "flash-attn", "flash-attn", device)


def unsupported(case: Any) -> str | None:
    if case.dtype == "fp32":
        return "flash-attn has fp16 and bf16 kernels only (FlashAttention-2 has no fp32 path)"
    if case.head_dim > MAX_HEAD_DIM:
        return f"flash-attn's kernels go up to head_dim {MAX_HEAD_DIM}, not {case.head_dim}"
    if case.page_size is not None and case.page_size % PAGE_MULTIPLE:
        return (f"flash-attn's paged kernel (flash_attn_with_kvcache) needs page_size to be "
                f"a multiple of {PAGE_MULTIPLE}, not {case.page_size}")
    return None


def _common(inputs: AttentionInputs) -> dict:
    return {"softmax_scale": inputs.scale, "causal": inputs.causal,
            "window_size": (inputs.window, 0) if inputs.window is not None else (-1, -1),
            "softcap": inputs.softcap if inputs.softcap is not None else 0.0}


def prepare(inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
    """The flash-attn call for the inputs' layout; no tensor is copied."""
    fa = package("flash_attn")
    q, k, v = inputs.tensors
    kwargs = _common(inputs)
    if inputs.layout == "ragged":
        n = inputs.max_seqlen
        return lambda: fa.flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=inputs.cu_seqlens, cu_seqlens_k=inputs.cu_seqlens,
            max_seqlen_q=n, max_seqlen_k=n, **kwargs)
    if inputs.layout == "paged":
        return lambda: fa.flash_attn_with_kvcache(
            q.transpose(1, 2), k, v, cache_seqlens=inputs.cache_seqlens,
            block_table=inputs.block_table, **kwargs).transpose(1, 2)
    return lambda: fa.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                      **kwargs).transpose(1, 2)


def resolve(inputs: AttentionInputs) -> str:
    """The flash-attn function that ran, and how our tensors reached it."""
    how = {"dense": "flash_attn_func (BNHD views)", "ragged": "flash_attn_varlen_func",
           "paged": "flash_attn_with_kvcache (BNHD view of q)"}[inputs.layout]
    return f"flash-attn {version('flash_attn')} {how}"

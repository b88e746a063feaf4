"""FlashInfer's batch decode over a paged KV cache (``BatchDecodeWithPagedKVCacheWrapper``), where flashinfer is installed.

Only the decode step is implemented: one new query token per sequence (``seq_len`` 1)
against a paged cache (``page_size`` set). FlashInfer's prefill wrappers (several query tokens,
dense or ragged batches) are not wired up, so those cases are ``unsupported`` and say so;
``flashinfer`` is an optional package (``pip install flashinfer-python``), imported only when
a case or ``flashbench list`` asks, and without it the backend is unavailable.

The wrapper takes our pool as it is: kv_layout ``"NHD"`` is (pages, page_size, Hkv, D), k and
v as the tuple ``(k_pool, v_pool)``. ``prepare`` plans (``wrapper.plan``: page indptr, page
indices, last page lengths, from our ``block_table`` and ``cache_seqlens``; the window as
``window_left``, the softcap as ``logits_soft_cap``, our scale as ``sm_scale``) outside the
samples, as a server plans once per step for all its layers; each sample is one
``wrapper.run``. With one query token the causal flag changes nothing (the query is the
cache's last position), and a window keeps the last window + 1 keys, FlashInfer's
``window_left`` as ours. fp16 and bf16 only.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flashbench.kernels.optional import package, package_unavailable, version
from flashbench.measure.inputs import AttentionInputs

__all__ = ["FEATURES", "WORKSPACE_BYTES", "prepare", "resolve", "unavailable", "unsupported"]

FEATURES = ("window", "softcap", "paged")
WORKSPACE_BYTES = 128 << 20  # the float workspace its examples allocate


def unavailable(device: torch.device) -> str | None:
    return package_unavailable("flashinfer", "flashinfer", "flashinfer-python", device)


def unsupported(case: Any) -> str | None:
    if case.page_size is None or case.seq_len != 1:
        return ("flashinfer is run here through its paged decode wrapper only: one query token "
                "per sequence (seq_len 1) against a paged cache (page_size)")
    if case.dtype == "fp32":
        return "flashinfer's decode kernels take fp16 and bf16, not fp32"
    return None


def prepare(inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
    """The planned wrapper, and its run on the pool as it lies."""
    fi = package("flashinfer")
    q, k_pool, v_pool = inputs.tensors
    batch, heads, _, head_dim = q.shape
    table = inputs.block_table
    per_seq, page = table.shape[1], k_pool.shape[1]
    device = q.device
    workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    wrapper = fi.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * per_seq
    last_page_len = (inputs.cache_seqlens - (per_seq - 1) * page).to(torch.int32)
    wrapper.plan(indptr, table.reshape(-1).contiguous(), last_page_len, heads, k_pool.shape[2],
                 head_dim, page, pos_encoding_mode="NONE",
                 window_left=inputs.window if inputs.window is not None else -1,
                 logits_soft_cap=inputs.softcap, q_data_type=q.dtype, kv_data_type=k_pool.dtype,
                 sm_scale=inputs.scale)
    q3 = q[:, :, 0]  # (B, H, D): one token per sequence
    return lambda: wrapper.run(q3, (k_pool, v_pool)).unsqueeze(2)


def resolve(inputs: AttentionInputs) -> str:
    return f"flashinfer {version('flashinfer')} BatchDecodeWithPagedKVCacheWrapper"

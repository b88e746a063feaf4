"""PyTorch FlexAttention (``torch.nn.attention.flex_attention``): masks and the score cap as code.

What runs where:

* **CUDA**: ``flex_attention`` compiled once per process (``torch.compile(flex_attention,
  dynamic=False)``, kept at module level); each case's shape, masks and cap make inductor
  generate and compile its own fused Triton kernel (or its split-KV decode kernel for fewer
  than 128 queries). ``prepare`` builds the block mask and calls the compiled function once
  (forward and, for the backward modes, backward), so the compiling is in the row's
  ``setup_ms`` and never in a sample. Dynamo's recompile limits are raised so that a sweep of
  many shapes keeps compiling, and a limit hit raises instead of falling back unnoticed to
  the unfused path. fp32 products follow torch's cuBLAS setting
  (``torch.backends.cuda.matmul.fp32_precision``, else ``get_float32_matmul_precision``) as it
  is when the kernel is compiled: ``tl.dot(..., input_precision="tf32")`` unless that says
  IEEE, which flashbench's ``fp32_matmul="torch"`` reads the same way.
* **CPU**: eager flex, torch's unfused implementation (it materializes the scores, in IEEE
  fp32 matmuls): compiling through inductor's C++ template took about 20 s per shape on a
  2-core machine. FlexAttention has no backward on a CPU, so ``bwd`` and ``fwd_bwd`` cases
  are refused there, and so are paged caches: unfused, every query would score every slot
  of the page pool (256 MiB and more, flashbench.measure.inputs), minutes for a toy case.

The masks, one ``mask_mod`` each, the same pairs as flashbench.measure.masks: causal with the
diagonal aligned to the end (``kv_idx <= q_idx + kv_len - seq_len``), a window (also
``kv_idx >= q_idx + kv_len - seq_len - window``); dense full attention has no block mask. The
softcap is a ``score_mod``, c·tanh(s/c) of the scaled score, before the mask. GQA through
``enable_gqa=True``.

Layouts (no copy of an input in any of them):

* ragged: the packed (T, H, D) batch as one sequence (1, H, T, D) (a transposed view), with
  a document id per token from ``cu_seqlens``: flex's document mask, each token attending
  within its own sequence (causal and window inside it);
* paged: flex's ``PagedAttention`` (torch.nn.attention.experimental._paged_attention) keeps
  the cache as (1, Hkv, pages·page_size, D); our pool (pages, page_size, Hkv, D) *is* that
  tensor as a strided view (the page and in-page axes merge), so the pool stays where it is.
  Its page table and physical-to-logical map are filled from our ``block_table``, and the
  logical block mask (KV blocks of one page) is converted to physical pages with the cache
  length as the upper bound. On CUDA the kernel's KV tile must divide the page: page sizes
  that are multiples of 128 keep flex's own tiles, multiples of 16 get a tile of the largest
  power of two dividing them (16, 32 or 64), other page sizes are refused.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention, noop_mask

from flashbench.measure.inputs import AttentionInputs

__all__ = ["FEATURES", "prepare", "resolve", "unavailable", "unsupported"]

FEATURES = ("window", "softcap", "ragged", "paged")
# Dynamo's limits on recompiling one function (8 and 256 by default): every flex case is a
# compile of its own (shape, mask and cap are constants of the kernel).
_RECOMPILE_LIMIT = 1 << 16


def unavailable(device: torch.device) -> str | None:
    """Why flex cannot run on ``device``: on CUDA it compiles to Triton. (It also needs dynamo:
    on a Python that torch.compile does not support, the first call says so; asking here
    would import torch._dynamo, seconds, for every `flashbench list`.)"""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"flex compiles to Triton, which is not installed ({e})"
    return None


def unsupported(case: Any) -> str | None:
    """Nothing flex refuses whatever the device; see ``prepare`` for what a CPU or the Triton
    template refuses."""
    return None


def resolve(inputs: AttentionInputs) -> str:
    """What ran: compiled (CUDA) or eager flex, and the layout's mask."""
    name = "flex (compiled)" if inputs.q.device.type == "cuda" else "flex (eager)"
    return name + {"ragged": " + document mask", "paged": " + paged KV"}.get(inputs.layout, "")


@functools.cache
def _compiled() -> Callable[..., torch.Tensor]:
    config = torch._dynamo.config
    for limit in ("recompile_limit", "accumulated_recompile_limit"):
        if hasattr(config, limit):
            setattr(config, limit, max(getattr(config, limit), _RECOMPILE_LIMIT))
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True
    return torch.compile(flex_attention, dynamic=False)


def _refuse(reason: str) -> None:
    from flashbench.measure.case import Refused

    raise Refused(f"flex: {reason}")


def _check_device(inputs: AttentionInputs) -> None:
    q = inputs.q
    grads = any(t.requires_grad for t in inputs.tensors)
    if q.device.type == "cpu" and grads:
        _refuse("no backward on a CPU (FlexAttention does not support backward on CPU)")
    if q.device.type == "cpu" and inputs.layout == "paged":
        _refuse(f"a paged cache on a CPU: eager flex is unfused, so every query would score "
                f"all {inputs.k.shape[0] * inputs.k.shape[1]:,} slots of the page pool "
                f"(minutes for a toy case); flex runs it compiled on CUDA")
    if q.device.type == "cuda" and q.shape[-1] < 16:
        _refuse(f"head_dim {q.shape[-1]}: its Triton template needs at least 16 (tl.dot)")
    if q.device.type == "cuda" and inputs.layout == "paged" and inputs.page_size % 16:
        _refuse(f"page_size {inputs.page_size}: the kernel's KV tile (a power of two, at "
                f"least 16) must divide a page")


def _score_mod(softcap: float | None):
    if softcap is None:
        return None

    def capped(score, b, h, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return capped


def _causal_mod(shift: int, window: int | None):
    """Query i sees key j iff j <= i + shift (and j >= i + shift - window)."""
    if window is None:
        return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + shift
    return lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx + shift) & (
        kv_idx >= q_idx + shift - window)


def _document_mod(inputs: AttentionInputs):
    """Each token attends within its own sequence; inside one, query and key positions differ
    by the same offset, so the causal diagonal is kv_idx <= q_idx."""
    lens = torch.tensor(inputs.seq_lens, device=inputs.q.device)
    doc = torch.repeat_interleave(torch.arange(len(inputs.seq_lens), device=inputs.q.device,
                                               dtype=torch.int32), lens)
    inner = _causal_mod(0, inputs.window) if inputs.causal else None

    def same_document(b, h, q_idx, kv_idx):
        same = doc[q_idx] == doc[kv_idx]
        return same & inner(b, h, q_idx, kv_idx) if inner is not None else same

    return same_document


# Mask pairs above which the block mask is built compiled (_block_mask): eager costs 8 bytes
# a pair at once, compiled about 20 s of set-up a case on the H200 (h200-deploy-flex, call 3).
EAGER_MASK_PAIRS = 1 << 31


def _block_mask(mask_mod, batch, heads, q_len, kv_len, *, device: torch.device,
                **kwargs) -> Any:
    """create_block_mask, eager unless that would not fit: eager, it evaluates mask_mod on
    every (query, key) pair at once in int64, which for a ragged batch of 124k tokens asked
    for 116 GiB on the H200. Compiled (torch's advice, and what its own ``_compile=True``
    does), it works a block at a time, at a compile per case (CUDA only: on a CPU that
    costs tens of seconds, and the CPU's shapes are small)."""
    make = _compiled_block_mask() if _mask_compiled(device, batch, heads, q_len, kv_len) \
        else create_block_mask
    return make(mask_mod, batch, heads, q_len, kv_len, device=device, **kwargs)


def _mask_compiled(device: torch.device, batch: int | None, heads: int | None, q_len: int,
                  kv_len: int) -> bool:
    """Whether _block_mask compiles the mask: on CUDA, beyond EAGER_MASK_PAIRS pairs."""
    pairs = (batch or 1) * (heads or 1) * q_len * kv_len
    return torch.device(device).type == "cuda" and pairs > EAGER_MASK_PAIRS


def _ragged(inputs: AttentionInputs) -> tuple[tuple, dict, Callable]:
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in inputs.tensors)  # (1, H, T, D) views
    total = q.shape[2]
    mask = _block_mask(_document_mod(inputs), 1, None, total, total, device=q.device)
    return (q, k, v), {"block_mask": mask}, lambda out: out[0].transpose(0, 1)


def _dense(inputs: AttentionInputs) -> tuple[tuple, dict, Callable]:
    q, k, _ = inputs.tensors
    seq_len, kv_len = q.shape[2], k.shape[2]
    if not inputs.causal:
        return inputs.tensors, {}, lambda out: out
    mask = _block_mask(_causal_mod(kv_len - seq_len, inputs.window), None, None, seq_len,
                       kv_len, device=q.device)
    return inputs.tensors, {"block_mask": mask}, lambda out: out


def _paged(inputs: AttentionInputs) -> tuple[tuple, dict, Callable]:
    from torch.nn.attention.experimental._paged_attention import PagedAttention

    q, pool_k, pool_v = inputs.tensors
    n_pages, page, kv_heads, d = pool_k.shape
    table = inputs.block_table.long()
    batch, per_seq = table.shape
    paged = PagedAttention(n_pages, page, batch, device=q.device)
    paged.page_table[:, :per_seq] = table
    rows = torch.arange(batch, device=q.device).unsqueeze(1)
    paged.physical_to_logical[rows, table] = torch.arange(per_seq, device=q.device)
    paged.capacity[:] = per_seq * page
    paged.empty_pages = []  # every page is ours: nothing for it to hand out

    def cache(pool: torch.Tensor) -> torch.Tensor:  # the same memory, (1, Hkv, pages·page, D)
        return pool.permute(2, 0, 1, 3).reshape(kv_heads, n_pages * page, d).unsqueeze(0)

    seq_len = q.shape[2]
    logical = _causal_mod(inputs.kv_len - seq_len, inputs.window) if inputs.causal \
        else noop_mask
    mask = _block_mask(logical, batch, None, seq_len, per_seq * page, device=q.device,
                       BLOCK_SIZE=(128, page))
    mask = paged.convert_logical_block_mask(mask, kv_len=inputs.cache_seqlens.long())
    kwargs: dict = {"block_mask": mask}
    if q.device.type == "cuda" and page % 128:
        kwargs["kernel_options"] = {"BLOCK_N": page & -page if page % 64 else 64}
    return (q, cache(pool_k), cache(pool_v)), kwargs, lambda out: out


def prepare(inputs: AttentionInputs) -> Callable[[], torch.Tensor]:
    """The block mask and cap for these inputs, flex compiled for them (CUDA), and the call."""
    _check_device(inputs)
    # Compiled first on CUDA: that raises dynamo's recompile limits, which the compiled block
    # mask (_block_mask) counts against too.
    attend = _compiled() if inputs.q.device.type == "cuda" else flex_attention
    layout = {"dense": _dense, "ragged": _ragged, "paged": _paged}[inputs.layout]
    tensors, kwargs, back = layout(inputs)
    q, k, _ = tensors
    kwargs |= {"score_mod": _score_mod(inputs.softcap), "scale": inputs.scale,
               "enable_gqa": k.shape[1] != q.shape[1]}

    def run() -> torch.Tensor:
        return back(attend(*tensors, **kwargs))

    with warnings.catch_warnings():  # eager flex says it is unfused: the docstring says so
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = run()  # compiles here, in the set-up, not in the first sample
    if out.requires_grad:
        torch.autograd.grad(out, [t for t in inputs.tensors if t.requires_grad],
                            torch.ones_like(out))
    return run

"""A case's input tensors in the layout its case asks for: dense, ragged (packed) or paged.

* ``dense``: q (B, H, N, D); k, v (B, Hkv, Nk, D), the layout SDPA takes.
* ``ragged``: the sequences packed without padding, as flash-attn's varlen functions take them:
  q (T, H, D), k, v (T, Hkv, D) with T the total tokens, and ``cu_seqlens`` (B + 1, int32), the
  offset of each sequence; queries attend within their own sequence.
* ``paged``: q (B, H, N, D) as dense; the KV cache in a pool of pages, k, v (pages, page_size,
  Hkv, D) (flash-attn's and vLLM's layout), ``block_table`` (B, pages per sequence, int32)
  naming each sequence's pages in order and ``cache_seqlens`` (B, int32). A real cache is
  fragmented: the pages are a seeded random choice from a pool larger than the cache, so no
  two logically adjacent pages are adjacent in memory and the cache is not one L2-sized block.

Also the helpers every backend that lacks a layout shares: ``dense_kv`` gathers a paged cache
into the contiguous one, ``padded`` pads a ragged batch to its longest sequence, ``packed``
undoes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from flashbench.core.cases import Case

__all__ = ["AttentionInputs", "POOL_SPARE_BYTES", "dense_kv", "make_inputs", "packed", "padded",
           "torch_dtype"]

_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]

Layout = Literal["dense", "ragged", "paged"]
# Pages the pool holds beyond the cache: at least half the cache again, and at least this
# much, so that a small cache is scattered over memory well beyond the L2 (50 MiB on an H200).
POOL_SPARE_BYTES = 256 << 20


@dataclass
class AttentionInputs:
    """What a backend is given: the tensors, the mask, and the layout's bookkeeping."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: bool
    scale: float
    window: int | None = None
    softcap: float | None = None
    layout: Layout = "dense"
    cu_seqlens: torch.Tensor | None = None  # ragged
    max_seqlen: int | None = None  # ragged: the longest sequence
    block_table: torch.Tensor | None = None  # paged
    cache_seqlens: torch.Tensor | None = None  # paged
    seq_lens: tuple[int, ...] = ()  # ragged: each sequence's length, on the host
    pad_index: torch.Tensor | None = None  # ragged: each token's row in the padded batch
    kv_len: int = 0  # paged: the cache length of every sequence

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q, self.k, self.v

    @property
    def page_size(self) -> int | None:
        return self.k.shape[1] if self.layout == "paged" else None


def make_inputs(case: Case, device: torch.device, seed: int | None = None) -> AttentionInputs:
    """Random normal Q, K, V drawn afresh per case from the case's own seed (or ``seed``)."""
    gen = torch.Generator(device=device).manual_seed(case.seed if seed is None else seed)
    dtype = torch_dtype(case.dtype)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    common = dict(causal=case.causal, scale=1.0 / math.sqrt(case.head_dim), window=case.window,
                  softcap=case.softcap)
    d = case.head_dim
    if case.ragged is not None:
        lens = case.seq_lens
        offsets = [0]
        for n in lens:
            offsets.append(offsets[-1] + n)
        total = offsets[-1]
        longest = max(lens)
        rows = [b * longest + i for b, n in enumerate(lens) for i in range(n)]
        return AttentionInputs(
            randn(total, case.heads, d), randn(total, case.kv_heads, d),
            randn(total, case.kv_heads, d), layout="ragged",
            cu_seqlens=torch.tensor(offsets, dtype=torch.int32, device=device),
            max_seqlen=longest, seq_lens=lens,
            pad_index=torch.tensor(rows, dtype=torch.long, device=device), **common)
    q = randn(case.batch, case.heads, case.seq_len, d)
    if case.page_size is None:
        return AttentionInputs(q, randn(case.batch, case.kv_heads, case.kv_len, d),
                               randn(case.batch, case.kv_heads, case.kv_len, d), **common)
    per_seq = -(-case.kv_len // case.page_size)
    needed = case.batch * per_seq
    page_bytes = case.page_size * case.kv_heads * d * dtype.itemsize
    pool = needed + max(needed // 2, -(-POOL_SPARE_BYTES // page_bytes))
    # The permutation on the host: a CUDA generator's randperm differs by device and version.
    host = torch.Generator().manual_seed(case.seed if seed is None else seed)
    table = torch.randperm(pool, generator=host)[:needed].view(case.batch, per_seq)
    return AttentionInputs(
        q, randn(pool, case.page_size, case.kv_heads, d),
        randn(pool, case.page_size, case.kv_heads, d), layout="paged",
        block_table=table.to(device=device, dtype=torch.int32),
        cache_seqlens=torch.full((case.batch,), case.kv_len, dtype=torch.int32, device=device),
        kv_len=case.kv_len, **common)


def dense_kv(inputs: AttentionInputs, sequence: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A paged cache gathered into contiguous (B, Hkv, Nk, D) K and V: what a backend without
    a paged kernel must do first (and a user of it pays for). ``sequence``: that one
    sequence's cache only, as (1, Hkv, Nk, D)."""
    assert inputs.layout == "paged" and inputs.block_table is not None
    table = inputs.block_table if sequence is None \
        else inputs.block_table[sequence:sequence + 1]
    batch, per_seq = table.shape

    def gather(pool: torch.Tensor) -> torch.Tensor:
        pages = pool[table.reshape(-1).long()]  # (B·pages, page, Hkv, D)
        flat = pages.view(batch, per_seq * pool.shape[1], pool.shape[2], pool.shape[3])
        return flat[:, :inputs.kv_len].transpose(1, 2)

    return gather(inputs.k), gather(inputs.v)


def padded(inputs: AttentionInputs, t: torch.Tensor) -> torch.Tensor:
    """A packed (T, heads, D) tensor as (B, heads, longest, D), zeros after each sequence
    (one scatter, differentiable: what a user without a varlen kernel runs)."""
    assert inputs.layout == "ragged" and inputs.pad_index is not None
    batch, longest = len(inputs.seq_lens), inputs.max_seqlen
    out = t.new_zeros(batch * longest, *t.shape[1:]).index_copy(0, inputs.pad_index, t)
    return out.view(batch, longest, *t.shape[1:]).transpose(1, 2)


def packed(inputs: AttentionInputs, out: torch.Tensor) -> torch.Tensor:
    """A padded (B, heads, longest, D) output back to the packed (T, heads, D) layout."""
    assert inputs.pad_index is not None
    rows = out.transpose(1, 2).reshape(-1, *out.shape[1:2], out.shape[-1])
    return rows.index_select(0, inputs.pad_index)

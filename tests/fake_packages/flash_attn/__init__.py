"""A fake flash-attn (see fake_attention): flash_attn_func, flash_attn_varlen_func and flash_attn_with_kvcache."""

import torch

from fake_attention import attend, check_half, describe, log

__version__ = "2.99.0+fake"
__flashbench_devices__ = ("cpu", "cuda")


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """q (B, Sq, H, D); k, v (B, Sk, Hkv, D)."""
    check_half(q, k, v)
    log("flash_attn_func", q=describe(q), k=describe(k), causal=causal,
        window_size=list(window_size), softcap=softcap, softmax_scale=softmax_scale,
        window_is_tuple=isinstance(window_size, tuple))
    return torch.stack([attend(q[b], k[b], v[b], scale=softmax_scale, causal=causal,
                               window_left=window_size[0], window_right=window_size[1],
                               softcap=softcap) for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (Tq, H, D); k, v (Tk, Hkv, D); cu_seqlens int32 (B + 1)."""
    check_half(q, k, v)
    assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32
    log("flash_attn_varlen_func", q=describe(q), cu_seqlens_q=cu_seqlens_q.tolist(),
        cu_seqlens_k=cu_seqlens_k.tolist(), max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, causal=causal, window_size=list(window_size),
        softcap=softcap)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    parts = [attend(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]],
                    scale=softmax_scale, causal=causal, window_left=window_size[0],
                    window_right=window_size[1], softcap=softcap) for b in range(len(cq) - 1)]
    return torch.cat(parts)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, block_table=None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    """q (B, Sq, H, D); a paged cache (num_blocks, page_block_size, Hkv, D) + block_table."""
    check_half(q, k_cache, v_cache)
    assert block_table is not None and block_table.dtype == torch.int32
    assert cache_seqlens.dtype == torch.int32
    page = k_cache.shape[1]
    if page % 256:
        raise RuntimeError("Paged KV cache block size must be divisible by 256")
    log("flash_attn_with_kvcache", q=describe(q), k_cache=describe(k_cache),
        block_table=list(block_table.shape), cache_seqlens=cache_seqlens.tolist(),
        causal=causal, window_size=list(window_size), softcap=softcap)
    outs = []
    for b in range(q.shape[0]):
        n = int(cache_seqlens[b])
        pages = block_table[b].long()
        kb = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:n]
        vb = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:n]
        outs.append(attend(q[b], kb, vb, scale=softmax_scale, causal=causal,
                           window_left=window_size[0], window_right=window_size[1],
                           softcap=softcap))
    return torch.stack(outs)

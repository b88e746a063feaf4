"""A fake flashinfer (see fake_attention): BatchDecodeWithPagedKVCacheWrapper, plan then run."""

import torch

from fake_attention import attend, check_half, describe, log

__version__ = "0.99.0+fake"
__flashbench_devices__ = ("cpu", "cuda")


class BatchDecodeWithPagedKVCacheWrapper:
    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_cuda_graph=False,
                 use_tensor_cores=False, **kwargs):
        assert kv_layout == "NHD" and float_workspace_buffer.dtype == torch.uint8
        self._plan = None

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
             page_size, *, pos_encoding_mode="NONE", window_left=-1, logits_soft_cap=None,
             q_data_type="float16", kv_data_type=None, data_type=None, sm_scale=None,
             rope_scale=None, rope_theta=None, non_blocking=True):
        for t in (indptr, indices, last_page_len):
            assert t.dtype == torch.int32 and t.dim() == 1
        assert 1 <= int(last_page_len.min()) and int(last_page_len.max()) <= page_size
        log("plan", indptr=indptr.tolist(), n_indices=indices.numel(),
            last_page_len=last_page_len.tolist(), heads=[num_qo_heads, num_kv_heads],
            head_dim=head_dim, page_size=page_size, window_left=window_left,
            logits_soft_cap=logits_soft_cap, sm_scale=sm_scale,
            pos_encoding_mode=pos_encoding_mode)
        self._plan = (indptr.tolist(), indices.long(), last_page_len.tolist(), page_size,
                      window_left, logits_soft_cap or 0.0, sm_scale)

    def run(self, q, paged_kv_cache, **kwargs):
        """q (B, H, D); paged_kv_cache (k, v), each (pages, page_size, Hkv, D) (NHD)."""
        indptr, indices, last, page, window_left, softcap, scale = self._plan
        k_cache, v_cache = paged_kv_cache
        check_half(q, k_cache, v_cache)
        log("run", q=describe(q), k_cache=describe(k_cache))
        outs = []
        for b in range(q.shape[0]):
            pages = indices[indptr[b]:indptr[b + 1]]
            n = (len(pages) - 1) * page + last[b]
            kb = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:n]
            vb = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:n]
            outs.append(attend(q[b:b + 1], kb, vb, scale=scale, causal=True,
                               window_left=window_left, softcap=softcap)[0])
        return torch.stack(outs)

"""The prefill forward's sliding window, softcap and ragged (varlen) batches against a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from kernel_inputs import (BF16, DEVICE, DTYPES, F16, F32, INTERPRET, TOLERANCES, LaunchSpy,
                           make_inputs)

from flashbench.kernels import triton_flash, triton_flash_support, triton_flash_tiles
from flashbench.kernels.triton_flash import attention_forward
from flashbench.measure.masks import apply_softcap, keep_mask

# The interpreter's tiles (triton_flash_configs.default_config): 32 query rows, 16 keys.
BLOCK_M, BLOCK_N = 32, 16


def reference(q, k, v, *, causal, scale, window=None, softcap=None):
    """(out, lse) in float64 of dense (B, H, N, D) inputs, masked by flashbench's one mask
    definition (flashbench.measure.masks)."""
    q, k, v = (t.detach().to(device="cpu", dtype=torch.float64) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = apply_softcap(q @ k.transpose(-1, -2) * scale, softcap)
    keep = keep_mask(q.shape[2], k.shape[2], causal=causal, window=window, device="cpu")
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def assert_close(out, lse, ref_out, ref_lse, dtype):
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    out_tol, lse_tol = TOLERANCES[dtype]
    rel = ((out.cpu().double() - ref_out).norm() / ref_out.norm()).item()
    lse_err = (lse.cpu().double() - ref_lse).abs().max().item()
    assert rel < out_tol, f"relative output error {rel:.3e} >= {out_tol:.0e}"
    assert lse_err < lse_tol, f"max lse error {lse_err:.3e} >= {lse_tol:.0e}"


def check_dense(q, k, v, *, causal=True, window=None, softcap=None, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = attention_forward(q, k, v, causal=causal, scale=scale, window=window,
                                 softcap=softcap)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    assert_close(out, lse, *reference(q, k, v, causal=causal, scale=scale, window=window,
                                      softcap=softcap), q.dtype)
    return out, lse


@pytest.mark.parametrize(("n", "nk", "window", "hkv", "dtype"), [
    pytest.param(37, 37, 0, 2, F32, id="window-0"),
    pytest.param(70, 70, 5, 2, F32, id="narrower-than-a-key-tile"),
    pytest.param(70, 70, BLOCK_N, 1, F32, id="one-key-tile"),
    pytest.param(70, 70, BLOCK_M - 1, 2, F16, id="narrower-than-a-query-tile"),
    pytest.param(100, 100, 41, 1, BF16, id="interior-tiles"),
    pytest.param(40, 150, 23, 2, F32, id="kv-longer"),
    pytest.param(1, 90, 30, 1, F32, id="one-query"),
    pytest.param(64, 64, 62, 2, F32, id="hides-one-key"),
])
def test_window_matches_reference(n: int, nk: int, window: int, hkv: int,
                                  dtype: torch.dtype) -> None:
    check_dense(*make_inputs(2, 4, hkv, n, nk, 32, dtype, seed=window), window=window)


@pytest.mark.parametrize(("causal", "window", "softcap", "n", "nk"), [
    pytest.param(False, None, None, 45, 61, id="full"),
    pytest.param(True, None, None, 70, 70, id="causal"),
    pytest.param(True, None, None, 20, 90, id="causal-kv-longer"),
    pytest.param(True, 9, 3.0, 70, 83, id="window-softcap"),
])
def test_warp_specialized_path_matches_reference(monkeypatch: pytest.MonkeyPatch, causal: bool,
                                                 window: int | None, softcap: float | None,
                                                 n: int, nk: int) -> None:
    # Its own code: descriptors made in the kernel, one loop with every tile masked, a masked
    # pointer store of the output (lengths that are not whole tiles test all three).
    config = triton_flash.LaunchConfig(BLOCK_M, BLOCK_N, 1, 1, warp_specialize=True)
    monkeypatch.setattr(triton_flash, "_launch_config", lambda *_: config)
    spy = LaunchSpy(triton_flash._attn_fwd_kernel)
    monkeypatch.setattr(triton_flash, "_attn_fwd_kernel", spy)
    check_dense(*make_inputs(2, 4, 2, n, nk, 32, F32, seed=n), causal=causal, window=window,
                softcap=softcap)
    assert [launch["WARP_SPECIALIZE"] for launch in spy.launches] == [True]


@pytest.mark.parametrize("window", [63, 64, 10_000])
def test_a_window_that_hides_nothing_is_causal(monkeypatch: pytest.MonkeyPatch,
                                               window: int) -> None:
    spy = LaunchSpy(triton_flash._attn_fwd_kernel)
    monkeypatch.setattr(triton_flash, "_attn_fwd_kernel", spy)
    q, k, v = make_inputs(1, 2, 1, 50, 64, 32, F32)
    windowed, _ = check_dense(q, k, v, window=window)
    causal, _ = attention_forward(q, k, v, causal=True, scale=1 / math.sqrt(32))
    assert torch.equal(windowed, causal)
    # The causal kernel itself ran: no window code, no window cost.
    assert [launch["WINDOW"] for launch in spy.launches] == [False, False]


def test_the_window_skips_the_tiles_left_of_it() -> None:
    # One query block (32 rows) at the end of 1024 keys with a window of 64: its keys start at
    # 1024 - 32 - 64 = 928, a tile boundary. NaN in every key and value before that would
    # reach the output (0 · NaN is NaN, masked or not) if any of those tiles were loaded.
    window, n, nk = 64, 32, 1024
    q, k, v = make_inputs(1, 2, 1, n, nk, 32, F32, seed=3)
    first = nk - n - window
    assert first % BLOCK_N == 0
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, :first] = float("nan")
    poisoned_v[:, :, :first] = float("nan")
    scale = 1 / math.sqrt(32)
    out, lse = attention_forward(q, poisoned_k, poisoned_v, causal=True, scale=scale,
                                 window=window)
    assert_close(out, lse, *reference(q, k, v, causal=True, scale=scale, window=window), F32)


@triton.jit
def _bounds_probe(Out, seq_len, kv_len, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    # The kernels' own bound function, run on the device (or the interpreter) for each block.
    pid = tl.program_id(0)
    lo, unmasked_lo, unmasked_hi, hi = triton_flash_tiles.kv_bounds(
        pid * BLOCK_M, seq_len, kv_len, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOW)
    tl.store(Out + pid * 4 + 0, lo)
    tl.store(Out + pid * 4 + 1, unmasked_lo)
    tl.store(Out + pid * 4 + 2, unmasked_hi)
    tl.store(Out + pid * 4 + 3, hi)


def kv_bounds(seq_len: int, kv_len: int, window: int | None, block_m: int, block_n: int,
              causal: bool = True) -> list[tuple[int, int, int, int]]:
    """(lo, unmasked_lo, unmasked_hi, hi) of every query block, from the kernels' function."""
    blocks = triton.cdiv(seq_len, block_m)
    out = torch.zeros(blocks * 4, dtype=torch.int32, device=DEVICE)
    _bounds_probe[(blocks,)](out, seq_len, kv_len, 0 if window is None else window,
                             BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                             WINDOW=window is not None)
    return [tuple(b) for b in out.view(blocks, 4).tolist()]


@pytest.mark.parametrize(("block_m", "block_n"), [(32, 16), (64, 64), (128, 64), (128, 128),
                                                  (16, 64)])
@pytest.mark.parametrize(("seq_len", "kv_len", "window"), [
    (300, 300, 0), (300, 300, 7), (300, 300, 64), (300, 300, 129), (300, 300, None),
    (100, 333, 50), (5, 1000, 3), (1, 700, 200),
])
def test_kv_bounds_cover_the_window_and_leave_only_the_edges_masked(
        seq_len: int, kv_len: int, window: int | None, block_m: int, block_n: int) -> None:
    keep = keep_mask(seq_len, kv_len, causal=True, window=window, device="cpu")
    for block, (lo, unmasked_lo, unmasked_hi, hi) in enumerate(
            kv_bounds(seq_len, kv_len, window, block_m, block_n)):
        rows = keep[block * block_m:(block + 1) * block_m]
        seen = rows.any(0).nonzero().flatten()
        # Every key a row sees is visited; the loops start on tile boundaries, in order.
        assert lo <= seen.min() and seen.max() < hi <= kv_len
        assert lo % block_n == unmasked_lo % block_n == unmasked_hi % block_n == 0
        assert lo <= unmasked_lo <= unmasked_hi <= triton.cdiv(hi, block_n) * block_n
        # The unmasked tiles are seen in full by every real row of the block.
        assert rows[:, unmasked_lo:unmasked_hi].all()
        # What is visited: at most one partial tile beyond the keys the block sees.
        visited = triton.cdiv(hi - lo, block_n)
        assert visited <= triton.cdiv(int(seen.max() - seen.min()) + 1, block_n) + 1
        if window is None:
            assert lo == unmasked_lo == 0


@pytest.mark.parametrize(("block_m", "block_n", "most"), [(64, 64, 2), (128, 64, 3),
                                                          (128, 128, 2)])
def test_a_window_of_64_over_1024_keys_visits_a_few_tiles_per_block(block_m: int, block_n: int,
                                                                    most: int) -> None:
    bounds = kv_bounds(1024, 1024, 64, block_m, block_n)
    visited = [triton.cdiv(hi - lo, block_n) for lo, _, _, hi in bounds]
    assert max(visited) <= most
    # The causal loop's last block visits every tile.
    causal = kv_bounds(1024, 1024, None, block_m, block_n)
    assert max(triton.cdiv(hi, block_n) for *_, hi in causal) == 1024 // block_n


@triton.jit
def _softcap_probe(X, Y, n, cap_in, cap_out, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n, other=0.0)
    tl.store(Y + offs, triton_flash_tiles.capped_scores(x, cap_in, cap_out), mask=offs < n)


def test_capped_scores_are_tanh_and_saturate_without_nan() -> None:
    softcap, scale = 5.0, 0.125
    x = torch.tensor([0.0, 1e-6, -1e-6, 0.3, -2.0, 40.0, -40.0, 1e4, -1e4, 1e30, -1e30, 3e38,
                      -3e38], dtype=torch.float32, device=DEVICE)
    y = torch.empty_like(x)
    log2e = triton_flash_tiles.LOG2E
    _softcap_probe[(1,)](x, y, x.numel(), 2 * scale * log2e / softcap, softcap * log2e,
                         BLOCK=16)
    expected = softcap * torch.tanh(x.cpu().double() * scale / softcap) * log2e
    assert torch.isfinite(y).all()
    assert (y.cpu().double() - expected).abs().max().item() < 1e-5
    assert y[-1].item() == pytest.approx(-softcap * log2e) and y[-2].item() > 0


@pytest.mark.parametrize(("causal", "window", "softcap", "n", "nk", "hkv", "dtype"), [
    pytest.param(False, None, 2.0, 37, 53, 2, F32, id="full"),
    pytest.param(True, None, 3.0, 37, 37, 1, F32, id="causal"),
    pytest.param(True, None, 5.0, 20, 70, 2, F16, id="causal-kv-longer"),
    pytest.param(False, None, 2.0, 45, 30, 1, BF16, id="gqa-bf16"),
    pytest.param(True, 9, 2.5, 70, 70, 2, F32, id="window"),
    pytest.param(True, 40, 4.0, 50, 120, 1, F16, id="window-kv-longer"),
])
def test_softcap_matches_reference(causal: bool, window: int | None, softcap: float, n: int,
                                   nk: int, hkv: int, dtype: torch.dtype) -> None:
    q, k, v = make_inputs(1, 4, hkv, n, nk, 64, dtype, seed=n)
    # Scores of about ±8 (scale 1): a cap of 2-5 changes every row's softmax.
    uncapped, _ = reference(q, k, v, causal=causal, scale=1.0, window=window)
    capped, _ = reference(q, k, v, causal=causal, scale=1.0, window=window, softcap=softcap)
    assert ((capped - uncapped).norm() / capped.norm()).item() > 0.1
    check_dense(q, k, v, causal=causal, window=window, softcap=softcap, scale=1.0)


def test_softcap_with_huge_scores_stays_finite() -> None:
    # scale 100: raw scores in the thousands, where exp2 of the tanh argument overflows.
    check_dense(*make_inputs(1, 2, 1, 30, 40, 32, F32), causal=False, softcap=3.0, scale=100.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", triton_flash.SUPPORTED_HEAD_DIMS)
def test_window_and_softcap_in_every_head_dim_and_dtype(head_dim: int,
                                                        dtype: torch.dtype) -> None:
    check_dense(*make_inputs(1, 2, 1, 40, 57, head_dim, dtype), window=19, softcap=4.0)


def make_ragged(lens, heads, kv_heads, head_dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lens)
    q, k, v = (torch.randn(total, h, head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
               for h in (heads, kv_heads, kv_heads))
    offsets = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                           device=DEVICE)
    return q, k, v, offsets


def check_ragged(lens, q, k, v, cu, *, causal=True, window=None, softcap=None, scale=None,
                 max_seqlen=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = attention_forward(q, k, v, causal=causal, scale=scale, window=window,
                                 softcap=softcap, cu_seqlens=cu,
                                 max_seqlen=max(lens) if max_seqlen is None else max_seqlen)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[1], q.shape[0])  # (H, T): each head's tokens contiguous
    ref_out = torch.empty(q.shape, dtype=torch.float64)
    ref_lse = torch.empty(lse.shape, dtype=torch.float64)
    start = 0
    for n in lens:
        part = (t[start:start + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o, s = reference(*part, causal=causal, scale=scale, window=window, softcap=softcap)
        ref_out[start:start + n], ref_lse[:, start:start + n] = o[0].transpose(0, 1), s[0]
        start += n
    assert_close(out, lse, ref_out, ref_lse, q.dtype)
    return out, lse


@pytest.mark.parametrize(("lens", "causal", "window", "softcap", "hkv", "dtype"), [
    pytest.param((20, 64, 33), True, None, None, 2, F32, id="causal"),
    pytest.param((1, 70, 17, 1, 32), True, None, None, 1, F32, id="causal-length-1"),
    pytest.param((45, 1, 90), False, None, None, 2, F16, id="full"),
    pytest.param((70, 3, 50), True, 11, None, 2, BF16, id="window"),
    pytest.param((1, 70, 33), True, 0, None, 1, F32, id="window-0"),
    pytest.param((33, 80, 2), False, None, 3.0, 2, F32, id="softcap"),
    pytest.param((64, 1, 47), True, 20, 2.0, 1, F16, id="window-softcap"),
    pytest.param((100,), True, None, None, 4, F32, id="one-sequence"),
])
def test_ragged_matches_reference(lens, causal: bool, window: int | None,
                                  softcap: float | None, hkv: int, dtype: torch.dtype) -> None:
    q, k, v, cu = make_ragged(lens, 4, hkv, 32, dtype, seed=len(lens))
    check_ragged(lens, q, k, v, cu, causal=causal, window=window, softcap=softcap,
                 scale=1.0 if softcap else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", triton_flash.SUPPORTED_HEAD_DIMS)
def test_ragged_in_every_head_dim_and_dtype(head_dim: int, dtype: torch.dtype) -> None:
    lens = (1, 40, 7)
    q, k, v, cu = make_ragged(lens, 2, 1, head_dim, dtype, seed=head_dim)
    check_ragged(lens, q, k, v, cu, window=13, softcap=4.0, scale=1.0)


def test_a_ragged_batch_of_one_sequence_is_the_dense_kernel() -> None:
    q, k, v, cu = make_ragged((77,), 4, 2, 64, F32)
    packed, packed_lse = attention_forward(q, k, v, causal=True, scale=0.2, cu_seqlens=cu,
                                           window=30, softcap=5.0)
    dense, dense_lse = attention_forward(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)),
                                         causal=True, scale=0.2, window=30, softcap=5.0)
    torch.testing.assert_close(packed, dense[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(packed_lse, dense_lse[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head_dim", [64, 96])
def test_ragged_reads_nothing_outside_the_tensors(head_dim: int) -> None:
    # Packed tensors inside NaN: rows after the last token and lanes past the head dim. (Rows
    # of the next sequence are real data; they must be masked, which the reference checks.)
    lens = (5, 40, 19)
    q, k, v, cu = make_ragged(lens, 2, 1, head_dim, F32)

    def poisoned(t):
        buf = torch.full((t.shape[0] + 40, t.shape[1], head_dim + 32), float("nan"),
                         device=DEVICE)
        view = buf[:t.shape[0], :, :head_dim]
        view.copy_(t)
        return view

    check_ragged(lens, poisoned(q), poisoned(k), poisoned(v), cu, window=9)


def test_ragged_max_seqlen_is_found_when_not_given() -> None:
    q, k, v, cu = make_ragged((3, 50), 2, 2, 32, F32)
    given, _ = attention_forward(q, k, v, causal=True, scale=0.2, cu_seqlens=cu, max_seqlen=50)
    found, _ = attention_forward(q, k, v, causal=True, scale=0.2, cu_seqlens=cu)
    assert torch.equal(given, found)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"window": 4, "causal": False}, "needs causal"),
    ({"window": -1}, "at least 0"),
    ({"softcap": 0.0}, "positive"),
    ({"softcap": float("inf")}, "positive"),
])
def test_bad_features_are_refused(kwargs: dict, needle: str) -> None:
    q, k, v = make_inputs(1, 2, 2, 8, 8, 32, F32)
    with pytest.raises(ValueError, match=needle):
        attention_forward(q, k, v, scale=0.1, **({"causal": True} | kwargs))


def test_packed_inputs_are_checked() -> None:
    q, k, v, cu = make_ragged((4, 4), 2, 2, 32, F32)
    with pytest.raises(ValueError, match="int32"):
        attention_forward(q, k, v, causal=True, scale=0.1, cu_seqlens=cu.long(), max_seqlen=4)
    with pytest.raises(ValueError, match="3-D"):
        attention_forward(q[None], k[None], v[None], causal=True, scale=0.1, cu_seqlens=cu,
                          max_seqlen=4)


@pytest.mark.parametrize(("window", "softcap", "constexprs"), [
    (None, None, (False, False)), (8, None, (True, False)), (None, 4.0, (False, True)),
    (8, 4.0, (True, True)),
])
def test_features_are_constexprs_off_by_default(monkeypatch: pytest.MonkeyPatch, window,
                                                softcap, constexprs) -> None:
    dense = LaunchSpy(triton_flash._attn_fwd_kernel)
    varlen = LaunchSpy(triton_flash._attn_fwd_varlen_kernel)
    monkeypatch.setattr(triton_flash, "_attn_fwd_kernel", dense)
    monkeypatch.setattr(triton_flash, "_attn_fwd_varlen_kernel", varlen)
    q, k, v = make_inputs(1, 2, 1, 20, 20, 32, F32)
    attention_forward(q, k, v, causal=True, scale=0.2, window=window, softcap=softcap)
    q, k, v, cu = make_ragged((20, 9), 2, 1, 32, F32)
    attention_forward(q, k, v, causal=True, scale=0.2, window=window, softcap=softcap,
                      cu_seqlens=cu, max_seqlen=20)
    for spy in (dense, varlen):
        (launch,) = spy.launches
        assert (launch["WINDOW"], launch["SOFTCAP"]) == constexprs


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("window", "softcap"), [(1024, None), (None, 50.0), (1024, 50.0)])
def test_gpu_window_and_softcap_within_twice_naive(dtype: torch.dtype, window, softcap) -> None:
    # B=2, H=8/2, N=4096, D=128, every tuned configuration: at most twice the error of the
    # materialized naive backend (fp32 softmax) on the same inputs, both against fp32.
    from flashbench.kernels import naive
    from flashbench.measure.inputs import AttentionInputs
    from flashbench.measure.reference import reference_output

    q, k, v = make_inputs(2, 8, 2, 4096, 4096, 128, dtype, device="cuda", seed=4096)
    inputs = AttentionInputs(q, k, v, causal=True, scale=128 ** -0.5, window=window,
                             softcap=softcap)
    ref = reference_output(inputs, torch.float32)
    naive_err = ((naive.prepare(inputs)().float() - ref).norm() / ref.norm()).item()
    for config in triton_flash.candidate_configs(128, dtype):
        out, _ = attention_forward(q, k, v, causal=True, scale=inputs.scale, config=config,
                                   window=window, softcap=softcap)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err <= 2 * naive_err + 1e-4, f"{config}: {err:.3e} > 2 x naive's {naive_err:.3e}"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("window", "softcap"), [(None, None), (1024, None), (None, 50.0)])
def test_gpu_ragged_lognormal_within_twice_naive(dtype: torch.dtype, window, softcap) -> None:
    from flashbench.core.cases import Case, Mode
    from flashbench.kernels import naive
    from flashbench.measure.inputs import make_inputs as case_inputs
    from flashbench.measure.reference import reference_output

    case = Case(backend="triton", mode=Mode.FWD, batch=8, heads=8, kv_heads=2, seq_len=4096,
                kv_len=4096, head_dim=128, dtype="bf16" if dtype == BF16 else "fp16",
                causal=True, window=window, softcap=softcap,
                ragged="lognormal(mean=1500,max=4096,seed=0)")
    inputs = case_inputs(case, torch.device("cuda"))
    ref = reference_output(inputs, torch.float32)
    naive_err = ((naive.prepare(inputs)().float() - ref).norm() / ref.norm()).item()
    for config in triton_flash.candidate_configs(128, dtype):
        out, _ = attention_forward(*inputs.tensors, causal=True, scale=inputs.scale,
                                   config=config, window=window, softcap=softcap,
                                   cu_seqlens=inputs.cu_seqlens, max_seqlen=inputs.max_seqlen)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err <= 2 * naive_err + 1e-4, f"{config}: {err:.3e} > 2 x naive's {naive_err:.3e}"

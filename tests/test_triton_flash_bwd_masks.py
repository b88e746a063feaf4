"""The Triton backward's sliding window, softcap and ragged batches against float64 autograd.

The forward's (out, LSE) come from a float64 reference here, so these tests do not depend on
the forward kernel implementing the features."""

from __future__ import annotations

import math
import os

import pytest
import torch
import triton
import triton.language as tl

from flashbench.kernels import triton_flash_bwd, triton_flash_bwd_tiles as tiles
from flashbench.kernels.triton_flash_bwd import FEATURES, attention_backward
from flashbench.measure.inputs import AttentionInputs
from flashbench.measure.masks import apply_softcap, keep_mask
from flashbench.measure.reference import reference_input_gradients
from kernel_inputs import LaunchSpy

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# Relative error of each gradient against float64 autograd on the same rounded inputs.
TOLERANCE = {F32: 1e-5 if INTERPRET else 5e-3, F16: 5e-3, BF16: 3e-2}


def reference_forward(q, k, v, *, causal, scale, window, softcap):
    """Float64 (out, natural-log LSE) of dense (B, H, N, D) inputs: the forward's contract."""
    q, k, v = (t.detach().double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    s = q @ k.repeat_interleave(group, 1).transpose(-1, -2) * scale
    s = apply_softcap(s, softcap)
    keep = keep_mask(q.shape[2], k.shape[2], causal=causal, window=window, device=q.device)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v.repeat_interleave(group, 1), torch.logsumexp(s, -1)


def ragged_forward(q, k, v, lens, **mask):
    """The same for a packed batch: out (T, H, D) and LSE (H, T)."""
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float64, device=q.device)
    start = 0
    for n in lens:
        part = [t[start:start + n].transpose(0, 1)[None] for t in (q, k, v)]
        o, s = reference_forward(*part, **mask)
        out[start:start + n], lse[:, start:start + n] = o[0].transpose(0, 1), s[0]
        start += n
    return out, lse


def run_backward(q, k, v, dout, *, causal, window=None, softcap=None, lens=None,
                 group_split=None):
    """(ours, float64 reference) gradients for dense inputs, or packed ones when ``lens``."""
    scale = 1 / math.sqrt(q.shape[-1])
    mask = dict(causal=causal, scale=scale, window=window, softcap=softcap)
    if lens is None:
        out, lse = reference_forward(q, k, v, **mask)
        ragged = {}
        inputs = AttentionInputs(q, k, v, **mask)
    else:
        out, lse = ragged_forward(q, k, v, lens, **mask)
        offsets = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        ragged = dict(cu_seqlens=offsets.to(q.device), max_seqlen=max(lens))
        inputs = AttentionInputs(q, k, v, **mask, layout="ragged", seq_lens=tuple(lens),
                                 **ragged)
    ours = attention_backward(q, k, v, out.to(q.dtype), lse.float(), dout, **mask, **ragged,
                              group_split=group_split)
    return ours, reference_input_gradients(inputs, dout, torch.float64)


def assert_close(ours, want, dtype):
    for name, got, ref in zip("qkv", ours, want):
        assert got.shape == ref.shape and got.dtype == dtype
        assert torch.isfinite(got).all(), f"d{name} is not finite"
        if ref.norm() == 0:
            # A query that sees one key only (window 0) has P = 1 whatever its score: dS,
            # and with it dQ and dK, vanish; ours must be rounding-small next to dV.
            err = (got.double().abs().max() / want[2].abs().max()).item()
            assert err < TOLERANCE[dtype], f"d{name}: {err:.2e} of dv where 0 is exact"
            continue
        rel = ((got.double() - ref).norm() / ref.norm()).item()
        assert rel < TOLERANCE[dtype], f"d{name}: relative error {rel:.2e}"


def randn(gen, *shape, dtype, std=1.0):
    return (torch.randn(*shape, generator=gen) * std).to(DEVICE, dtype)


def dense(b, h, hkv, n, nk, d, dtype, std=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (randn(gen, b, h, n, d, dtype=dtype, std=std),
            randn(gen, b, hkv, nk, d, dtype=dtype, std=std),
            randn(gen, b, hkv, nk, d, dtype=dtype), randn(gen, b, h, n, d, dtype=dtype))


def packed(lens, h, hkv, d, dtype, std=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lens)
    return (randn(gen, total, h, d, dtype=dtype, std=std),
            randn(gen, total, hkv, d, dtype=dtype, std=std),
            randn(gen, total, hkv, d, dtype=dtype), randn(gen, total, h, d, dtype=dtype))


def test_features_declared():
    assert FEATURES == frozenset({"window", "softcap", "ragged"})


FEATURE_ARGS = ("window", "cap_scale", "cap_log2", "CuSeqlens", "total", "stride_tok",
                "stride_head", "head_dim")


def test_dense_launches_compile_the_dense_kernels(monkeypatch):
    # Features off: their constexprs False and their arguments None (specialised away), so a
    # dense launch compiles the code it compiled before the features existed; on, both set.
    spies = {name: LaunchSpy(getattr(triton_flash_bwd, name))
             for name in ("_dkdv_kernel", "_dq_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(triton_flash_bwd, name, spy)
    q, k, v, dout = dense(1, 2, 2, 20, 20, 32, F32)
    run_backward(q, k, v, dout, causal=True)
    q, k, v, dout = packed((7, 20), 2, 2, 32, F32)
    run_backward(q, k, v, dout, causal=True, window=3, softcap=4.0, lens=(7, 20))
    for spy in spies.values():
        off, on = spy.launches
        assert [off[f] for f in ("WINDOW", "SOFTCAP", "VARLEN")] == [False] * 3
        assert all(off[a] is None for a in FEATURE_ARGS)
        assert [on[f] for f in ("WINDOW", "SOFTCAP", "VARLEN")] == [True] * 3
        assert all(on[a] is not None for a in FEATURE_ARGS)


# The interpreter's tiles: dK/dV programs own 32 keys and take 16 queries a step, dQ programs
# own 32 queries and take 16 keys a step; windows below and above those edges.
@pytest.mark.parametrize(("h", "hkv", "n", "nk", "window", "dtype"), [
    pytest.param(2, 2, 37, 37, 0, F32, id="diagonal-only"),
    pytest.param(2, 2, 37, 37, 5, F32, id="under-a-tile"),
    pytest.param(4, 2, 50, 50, 20, F32, id="gqa-between-tiles"),
    # 17 = 16 + 1: the first and last tile either bound keeps hold one attended pair only.
    pytest.param(2, 2, 50, 50, 17, F32, id="one-pair-edge-tiles"),
    pytest.param(2, 1, 37, 37, 37, F32, id="window-is-kv-len"),
    pytest.param(2, 2, 29, 45, 7, F32, id="kv-longer"),
    pytest.param(2, 2, 29, 45, 0, F32, id="kv-longer-diagonal"),
    pytest.param(2, 2, 33, 50, 20, F32, id="diagonal-one-past-a-tile"),
    pytest.param(2, 2, 40, 56, 9, BF16, id="bf16"),
    pytest.param(4, 2, 48, 48, 16, F16, id="fp16-gqa"),
])
def test_window_gradients_match_autograd(h, hkv, n, nk, window, dtype):
    q, k, v, dout = dense(1, h, hkv, n, nk, 32, dtype)
    assert_close(*run_backward(q, k, v, dout, causal=True, window=window), dtype)


@pytest.mark.parametrize("extra", [0, 100])
def test_window_past_kv_len_is_plain_causal(extra):
    q, k, v, dout = dense(1, 2, 2, 29, 45, 32, F32)
    windowed, _ = run_backward(q, k, v, dout, causal=True, window=45 + extra)
    causal, _ = run_backward(q, k, v, dout, causal=True)
    for a, b in zip(windowed, causal):
        assert torch.equal(a, b)


def test_window_needs_causal():
    q, k, v, dout = dense(1, 2, 2, 16, 16, 32, F32)
    lse = torch.zeros(1, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="window"):
        attention_backward(q, k, v, q, lse, dout, causal=False, scale=0.2, window=4)


# Scores of about ±5 (inputs of std √5): the cap bends them hard.
@pytest.mark.parametrize(("h", "hkv", "n", "nk", "causal", "window", "softcap", "dtype"), [
    pytest.param(2, 2, 37, 37, False, None, 2.0, F32, id="full-cap2"),
    pytest.param(4, 2, 29, 45, True, None, 5.0, F32, id="gqa-causal-kv-longer-cap5"),
    pytest.param(2, 2, 37, 37, True, 6, 3.0, F32, id="window-cap3"),
    pytest.param(2, 2, 40, 40, True, None, 5.0, BF16, id="bf16-cap5"),
    pytest.param(2, 1, 33, 20, False, None, 4.0, F16, id="fp16-mqa-cap4"),
])
def test_softcap_gradients_match_autograd(h, hkv, n, nk, causal, window, softcap, dtype):
    q, k, v, dout = dense(1, h, hkv, n, nk, 32, dtype, std=math.sqrt(5))
    assert_close(*run_backward(q, k, v, dout, causal=causal, window=window, softcap=softcap),
                 dtype)


@triton.jit
def _tanh_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n)
    tl.store(Y + offs, tiles._tanh(x), mask=offs < n)


def test_tanh_is_accurate_and_finite_at_any_size():
    x = torch.cat([torch.linspace(-30, 30, 4001), torch.tensor([0.0, 1e-30, -1e-7, 88.0,
                                                                -88.0, 1e4, -1e4, 1e30])])
    x = x.to(DEVICE)
    y = torch.empty_like(x)
    _tanh_kernel[(triton.cdiv(len(x), 1024),)](x, y, len(x), BLOCK=1024)
    want = torch.tanh(x.double())
    assert torch.isfinite(y).all()
    assert (y.double() - want).abs().max().item() < 5e-7
    assert y[-3:].tolist() == [1.0, -1.0, 1.0]


# Lengths of 1, under a tile, a tile's worth, past two tiles (the dQ tile is 32 rows), packed
# back to back: a store that spilled past a sequence's end would land in the next one's rows.
@pytest.mark.parametrize(("lens", "h", "hkv", "causal", "window", "softcap", "dtype"), [
    pytest.param((1, 37, 70, 16), 4, 2, True, None, None, F32, id="causal-gqa"),
    pytest.param((70, 1, 23), 2, 2, False, None, None, F32, id="full"),
    pytest.param((1, 37, 70, 16), 2, 1, True, 9, None, F32, id="window-mqa"),
    pytest.param((45, 1, 33), 4, 2, True, 20, 3.0, F32, id="window-softcap"),
    pytest.param((5, 0, 40, 0), 2, 1, True, None, None, F32, id="empty-sequences"),
    pytest.param((1, 37, 70, 16), 2, 2, True, None, None, BF16, id="bf16"),
])
def test_ragged_gradients_match_autograd(lens, h, hkv, causal, window, softcap, dtype):
    std = math.sqrt(5) if softcap else 1.0
    q, k, v, dout = packed(lens, h, hkv, 32, dtype, std=std)
    assert_close(*run_backward(q, k, v, dout, causal=causal, window=window, softcap=softcap,
                               lens=lens), dtype)


def test_ragged_lse_layout_is_checked():
    lens = (5, 9)
    q, k, v, dout = packed(lens, 2, 2, 32, F32)
    offsets = torch.tensor([0, 5, 14], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"lse must be float32 \(2, 14\)"):
        attention_backward(q, k, v, q, torch.zeros(1, 2, 14, device=DEVICE), dout, causal=True,
                           scale=0.2, cu_seqlens=offsets, max_seqlen=9)


# The GQA group's query heads split over 2, 4 or 8 dK/dV programs, each storing fp32 partials
# that the host sums: against autograd, and against the unsplit kernel (dQ untouched, dK and
# dV the same sums in another order).
@pytest.mark.parametrize(("split", "h", "hkv", "causal", "window", "softcap", "lens", "dtype"), [
    pytest.param(2, 8, 2, True, None, None, None, F32, id="causal-split2"),
    pytest.param(4, 8, 2, False, None, None, None, F32, id="full-split4"),
    pytest.param(8, 8, 1, True, None, None, None, F32, id="causal-mqa-split8"),
    pytest.param(4, 8, 1, True, 9, None, None, F32, id="window-group8-split4"),
    pytest.param(2, 4, 1, False, None, 3.0, None, F32, id="softcap-split2"),
    pytest.param(4, 8, 2, True, None, None, None, F16, id="fp16-split4"),
    pytest.param(2, 8, 2, True, None, None, (1, 37, 40, 16), F32, id="ragged-split2"),
    pytest.param(4, 8, 2, True, 20, 3.0, (45, 1, 33), F32, id="ragged-window-softcap-split4"),
])
def test_group_split_gradients_match_autograd_and_unsplit(split, h, hkv, causal, window,
                                                          softcap, lens, dtype):
    std = math.sqrt(5) if softcap else 1.0
    q, k, v, dout = (dense(1, h, hkv, 37, 45, 32, dtype, std=std) if lens is None
                     else packed(lens, h, hkv, 32, dtype, std=std))
    mask = dict(causal=causal, window=window, softcap=softcap, lens=lens)
    ours, want = run_backward(q, k, v, dout, **mask, group_split=split)
    assert_close(ours, want, dtype)
    unsplit, _ = run_backward(q, k, v, dout, **mask, group_split=1)
    assert torch.equal(ours[0], unsplit[0])
    for got, ref in zip(ours[1:], unsplit[1:]):
        assert got.is_contiguous() and got.shape == ref.shape
        # The same fp32 sums added in another order, then rounded to the dtype: a few ulps.
        ulp = torch.finfo(dtype).eps * ref.abs().max().item()
        assert (got - ref).abs().max().item() <= 8 * ulp


def test_group_split_reaches_the_kernel_as_a_constexpr(monkeypatch):
    spy = LaunchSpy(triton_flash_bwd._dkdv_kernel)
    monkeypatch.setattr(triton_flash_bwd, "_dkdv_kernel", spy)
    q, k, v, dout = dense(1, 4, 1, 20, 20, 32, F32)
    for split in (None, 1, 4):
        run_backward(q, k, v, dout, causal=True, group_split=split)
    # None off CUDA is 1: the unsplit kernel, its direct stores.
    assert [launch["GROUP_SPLIT"] for launch in spy.launches] == [1, 1, 4]


@triton.jit
def _ranges_kernel(Out, seq_len, kv_len, window, BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    # The kernels' bounds of every block at once (the helpers are elementwise): block b's
    # queries for key block b, and its keys for query block b.
    b = tl.arange(0, BLOCKS)
    diag = kv_len - seq_len
    q_lo, q_hi = tiles._query_range(b * BLOCK_N, seq_len, diag, window, BLOCK_M, BLOCK_N, CAUSAL,
                                 WINDOW)
    k_lo, k_hi = tiles._key_range(b * BLOCK_M, kv_len, diag, window, BLOCK_M, BLOCK_N, CAUSAL,
                               WINDOW)
    tl.store(Out + b * 4, q_lo)
    tl.store(Out + b * 4 + 1, q_hi)
    tl.store(Out + b * 4 + 2, k_lo)
    tl.store(Out + b * 4 + 3, k_hi)


def visited_tiles(seq_len, kv_len, window, causal, block_m, block_n):
    """The (query block, key block) pairs the kernels' bounds visit, and those any pair of
    which is attended: (dK/dV visits, dQ visits, attended)."""
    blocks = triton.next_power_of_2(max(triton.cdiv(kv_len, block_n),
                                        triton.cdiv(seq_len, block_m)))
    out = torch.zeros(blocks * 4, dtype=torch.int32, device=DEVICE)
    _ranges_kernel[(1,)](out, seq_len, kv_len, window if window is not None else 0,
                         BLOCKS=blocks, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
                         WINDOW=window is not None)
    r = out.view(-1, 4).cpu().tolist()
    keep = keep_mask(seq_len, kv_len, causal=causal, window=window, device="cpu")
    keep = torch.ones(seq_len, kv_len, dtype=torch.bool) if keep is None else keep
    pad = torch.zeros(blocks * block_m, blocks * block_n, dtype=torch.bool)
    pad[:seq_len, :kv_len] = keep
    seen = pad.view(blocks, block_m, blocks, block_n).any(3).any(1)  # (query blk, key blk)
    attended = {(m, n) for m, n in seen.nonzero().tolist()}
    dkdv = {(m // block_m, n) for n in range(triton.cdiv(kv_len, block_n))
            for m in range(r[n][0], r[n][1], block_m)}
    dq = {(m, n // block_n) for m in range(triton.cdiv(seq_len, block_m))
          for n in range(r[m][2], r[m][3], block_n)}
    return dkdv, dq, attended


@pytest.mark.parametrize(("seq_len", "kv_len", "window", "causal", "block_m", "block_n"), [
    (37, 37, 0, True, 16, 32), (37, 37, 5, True, 32, 16), (50, 50, 20, True, 16, 32),
    (29, 45, 7, True, 16, 32), (29, 45, 0, True, 32, 16), (100, 300, 3, True, 16, 16),
    (37, 37, None, True, 16, 32), (29, 45, None, False, 32, 16), (37, 37, 200, True, 16, 32),
    (4096, 4096, 1024, True, 32, 128), (4096, 4096, 1024, True, 128, 64),
    (1000, 3000, 100, True, 128, 64),
])
def test_tile_bounds_visit_exactly_the_attended_tiles(seq_len, kv_len, window, causal,
                                                      block_m, block_n):
    dkdv, dq, attended = visited_tiles(seq_len, kv_len, window, causal, block_m, block_n)
    assert dkdv == attended
    assert dq == attended


@pytest.mark.parametrize(("seq_len", "kv_len"), [(50, 50), (29, 45), (33, 50)])
def test_tile_bounds_are_exact_for_every_small_window(seq_len, kv_len):
    # An off-by-one in a bound drops or adds a tile only where the window's edge meets a tile
    # edge: every window up to past kv_len, both tile orientations.
    for window in range(0, kv_len + 3):
        for block_m, block_n in ((16, 32), (32, 16)):
            dkdv, dq, attended = visited_tiles(seq_len, kv_len, window, True, block_m, block_n)
            assert dkdv == attended and dq == attended, (window, block_m, block_n)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize(("window", "softcap"), [(1024, None), (None, 50.0), (1024, 50.0)])
def test_gpu_dense_window_softcap(window, softcap):
    q, k, v, dout = dense(2, 8, 2, 4096, 4096, 128, BF16, std=2.0, seed=window or 1)
    assert_close(*run_backward(q, k, v, dout, causal=True, window=window, softcap=softcap),
                 BF16)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize(("causal", "window", "softcap", "dtype"), [
    (True, None, None, BF16), (False, None, None, F16), (True, 1024, 50.0, BF16)])
def test_gpu_ragged(causal, window, softcap, dtype):
    lens = (4096, 1, 1000, 2500, 127, 3000)
    q, k, v, dout = packed(lens, 8, 2, 128, dtype, std=2.0)
    assert_close(*run_backward(q, k, v, dout, causal=causal, window=window, softcap=softcap,
                               lens=lens), dtype)

"""The Triton backward kernels against float64 autograd, under the interpreter (and on a GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from flashbench.kernels import triton_flash_bwd
from flashbench.kernels.triton_flash import attention, attention_forward
from kernel_inputs import (BF16, DEVICE, F16, F32, INTERPRET, LaunchSpy,
                           assert_gradients_within_twice, gradient_inputs)

# Relative error of each gradient against float64 autograd on the same rounded inputs.
TOLERANCE = {F32: 1e-5 if INTERPRET else 5e-3, F16: 5e-3, BF16: 3e-2}


def reference(q, k, v, dout, *, causal, scale):
    q, k, v, dout = (t.detach().to("cpu", torch.float64).requires_grad_() for t in (q, k, v, dout))
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ kk.transpose(-1, -2) * scale
    if causal:
        n, nk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(n, nk, dtype=torch.bool).tril(nk - n), float("-inf"))
    out = torch.softmax(s, -1) @ vv
    return torch.autograd.grad(out, (q, k, v), dout.detach())


def check(b, h, hkv, n, nk, d, causal, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, hh, length, d, generator=gen).to(DEVICE, dtype).requires_grad_()
               for hh, length in ((h, n), (hkv, nk), (hkv, nk)))
    dout = torch.randn(b, h, n, d, generator=gen).to(DEVICE, dtype)
    scale = 1 / math.sqrt(d)
    grads = torch.autograd.grad(attention(q, k, v, causal=causal, scale=scale), (q, k, v), dout)
    for name, got, want in zip("qkv", grads, reference(q, k, v, dout, causal=causal, scale=scale)):
        assert got.shape == want.shape and got.dtype == dtype
        rel = ((got.cpu().double() - want).norm() / want.norm()).item()
        assert rel < TOLERANCE[dtype], f"d{name}: relative error {rel:.2e}"


@pytest.mark.parametrize(("b", "h", "hkv", "n", "nk", "d", "causal", "dtype"), [
    pytest.param(1, 2, 2, 37, 37, 32, False, F32, id="odd-full"),
    pytest.param(1, 2, 2, 37, 37, 32, True, F32, id="odd-causal"),
    pytest.param(2, 4, 2, 29, 45, 64, True, F32, id="gqa-causal-kv-longer"),
    pytest.param(1, 4, 1, 33, 20, 32, False, F32, id="mqa-more-queries"),
    pytest.param(1, 2, 1, 48, 48, 64, True, F16, id="fp16"),
    pytest.param(1, 2, 2, 40, 56, 32, True, BF16, id="bf16"),
    pytest.param(1, 2, 2, 21, 30, 96, False, F32, id="d96"),
])
def test_gradients_match_autograd(b, h, hkv, n, nk, d, causal, dtype):
    check(b, h, hkv, n, nk, d, causal, dtype)


def test_forward_only_needs_no_grad():
    q = torch.randn(1, 2, 20, 32, device=DEVICE)
    out = attention(q, q, q, causal=True, scale=0.2)
    assert out.shape == q.shape and not out.requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("hkv", "n", "d", "dtype"), [(8, 1000, 128, BF16), (2, 777, 64, F16),
                                                       (8, 2048, 128, F16)])
def test_gpu_gradients_within_twice_sdpa(hkv, n, d, dtype, causal):
    q, k, v, dout = gradient_inputs(2, 8, hkv, n, d, dtype, seed=n)
    scale = 1 / math.sqrt(d)
    ref = reference(q, k, v, dout, causal=causal, scale=scale)
    ours = torch.autograd.grad(attention(q, k, v, causal=causal, scale=scale), (q, k, v), dout)
    assert_gradients_within_twice(ours, sdpa_gradients(q, k, v, dout, causal, scale), ref)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("split", [2, 4])
def test_gpu_group_split_gradients_within_twice_sdpa(split):
    # Batch 1, GQA 16/2: the shape class the split is for, its fp32 partials summed on the host.
    q, k, v, dout = gradient_inputs(1, 16, 2, 1024, 128, BF16, seed=split)
    scale = 1 / math.sqrt(128)
    ref = reference(q, k, v, dout, causal=True, scale=scale)
    plain = [t.detach() for t in (q, k, v)]
    out, lse = attention_forward(*plain, causal=True, scale=scale)
    ours = triton_flash_bwd.attention_backward(*plain, out, lse, dout, causal=True, scale=scale,
                                               group_split=split)
    assert_gradients_within_twice(ours, sdpa_gradients(q, k, v, dout, True, scale), ref)


def sdpa_gradients(q, k, v, dout, causal, scale):
    """SDPA's (dq, dk, dv) of the same inputs: the GPU tests' yardstick."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return torch.autograd.grad(out, (q, k, v), dout)


# (programs, group, SMs, causal) -> split, on an H200's 132 SMs; B=1, 8 KV heads, 128-key
# blocks: N=2048 is 128 programs, 4096 is 256, 8192 is 512, 16384 is 1024.
@pytest.mark.parametrize(("programs", "group", "causal", "split"), [
    pytest.param(128, 8, False, 1, id="full-2048-a-97%-wave"),
    pytest.param(128, 8, True, 2, id="causal-2048"),
    pytest.param(256, 8, True, 2, id="causal-4096"),
    pytest.param(256, 8, False, 1, id="full-4096"),
    pytest.param(512, 8, True, 2, id="causal-8192"),
    pytest.param(1024, 8, True, 1, id="causal-16384-four-waves"),
    pytest.param(64, 8, False, 2, id="full-1024-half-a-wave"),
    pytest.param(100, 8, False, 1, id="full-no-quarter-gained"),
    pytest.param(16, 8, True, 8, id="causal-whole-group"),
    pytest.param(16, 1, True, 1, id="mha"),
    pytest.param(64, 1, False, 1, id="mha-full"),
    pytest.param(140, 4, False, 1, id="full-over-a-wave"),
])
def test_group_split_chooser(programs, group, causal, split):
    assert triton_flash_bwd._group_split(programs, group, 132, causal) == split


def test_group_split_is_1_off_cuda_unless_forced():
    cpu = torch.device("cpu")
    assert triton_flash_bwd._split_count(None, 8, 16, True, cpu, True) == 1
    assert triton_flash_bwd._split_count(4, 8, 16, True, cpu, True) == 4


@pytest.mark.parametrize("split", [0, -2, 3, 8, True, 2.0])
def test_group_split_must_divide_the_group(split):
    q = torch.randn(1, 4, 20, 32, device=DEVICE)
    k = torch.randn(1, 1, 20, 32, device=DEVICE)
    lse = torch.zeros(1, 4, 20, device=DEVICE)
    with pytest.raises(ValueError, match="group_split .* divisor of the GQA group size 4"):
        triton_flash_bwd.attention_backward(q, k, k, q, lse, q, causal=True, scale=0.2,
                                            group_split=split)


@pytest.mark.parametrize(("dtype", "setting", "launched"), [(F32, "ieee", "ieee"),
                                                            (F32, "tf32", "tf32"),
                                                            (F16, "ieee", "tf32")])
def test_fp32_precision_reaches_both_backward_kernels(monkeypatch, dtype, setting, launched):
    spies = {name: LaunchSpy(getattr(triton_flash_bwd, name))
             for name in ("_dkdv_kernel", "_dq_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(triton_flash_bwd, name, spy)
    q = torch.randn(1, 2, 20, 32, device=DEVICE, dtype=dtype, requires_grad=True)
    out = attention(q, q, q, causal=True, scale=0.2, fp32_precision=setting)
    torch.autograd.grad(out, q, torch.ones_like(out))
    assert {name: [s["DOT_PRECISION"] for s in spy.launches] for name, spy in spies.items()} \
        == {"_dkdv_kernel": [launched], "_dq_kernel": [launched]}


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_fp32_ieee_gradients_as_accurate_as_sdpa_math(causal):
    q, k, v, dout = gradient_inputs(2, 8, 2, 777, 64, F32, seed=7)
    ref = reference(q, k, v, dout, causal=causal, scale=0.125)
    ours = torch.autograd.grad(attention(q, k, v, causal=causal, scale=0.125,
                                         fp32_precision="ieee"), (q, k, v), dout)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        theirs = sdpa_gradients(q, k, v, dout, causal, 0.125)
    assert_gradients_within_twice(ours, theirs, ref, peer="SDPA math", slack=1e-6)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_delta_is_the_rowsum_of_dout_times_out_at_any_strides(dtype):
    gen = torch.Generator().manual_seed(3)
    # out as a fused projection's (B, N, H, D) viewed (B, H, N, D); dout broadcast from one row
    # (stride 0, what autograd hands over for out.sum()); head dim 96 (masked lanes).
    out = torch.randn(2, 37, 3, 96, generator=gen).to(DEVICE, dtype).transpose(1, 2)
    dout = torch.randn(1, 1, 1, 96, generator=gen).to(DEVICE, dtype).expand(2, 3, 37, 96)
    delta = triton_flash_bwd._delta(out, dout, INTERPRET)
    want = (out.double() * dout.double()).sum(-1)
    assert delta.dtype == F32 and delta.shape == (2, 3, 37) and delta.is_contiguous()
    assert ((delta.double() - want).abs().max() / want.abs().max()).item() < 1e-6

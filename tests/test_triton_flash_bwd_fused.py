"""The fused Triton backward (dQ accumulated in the dK/dV pass with atomics) against float64
autograd and against the two-kernel backward, under the interpreter (and on a GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from flashbench.kernels import triton_flash_bwd
from flashbench.kernels.triton_flash import attention
from kernel_inputs import (DEVICE, INTERPRET, LaunchSpy, assert_gradients_within_twice,
                           gradient_inputs)
from test_triton_flash_bwd import reference, sdpa_gradients
from test_triton_flash_bwd_masks import F16, F32, assert_close, dense, packed, run_backward

KERNELS = ("_dkdv_kernel", "_dq_kernel")


def both_paths(monkeypatch, q, k, v, dout, **mask):
    """(fused, two-kernel, float64 reference) gradients of the same inputs."""
    monkeypatch.setenv("FLASHBENCH_TRITON_BWD", "fused")
    fused, want = run_backward(q, k, v, dout, **mask)
    monkeypatch.delenv("FLASHBENCH_TRITON_BWD")
    two_kernel, _ = run_backward(q, k, v, dout, **mask)
    return fused, two_kernel, want


# The interpreter's dK/dV tiles: 32 keys, 16 queries a step; lengths off both edges, so every
# dQ row takes shares from several key blocks (and GQA heads from several query heads' K).
@pytest.mark.parametrize(("h", "hkv", "n", "nk", "causal", "extra", "dtype"), [
    pytest.param(2, 2, 37, 37, False, {}, F32, id="mha-full"),
    pytest.param(2, 2, 37, 37, True, {}, F32, id="mha-causal"),
    pytest.param(4, 2, 29, 45, True, {}, F32, id="gqa2-causal-kv-longer"),
    pytest.param(8, 2, 50, 50, False, {}, F32, id="gqa4-full"),
    pytest.param(4, 1, 33, 70, True, {}, F32, id="gqa4-causal-kv-longer"),
    pytest.param(4, 2, 50, 50, True, dict(window=17), F32, id="gqa2-window"),
    pytest.param(4, 2, 37, 37, True, dict(softcap=3.0), F32, id="gqa2-softcap"),
    pytest.param(4, 2, 48, 48, True, {}, F16, id="fp16-gqa2-causal"),
    pytest.param(2, 2, 40, 40, False, {}, F16, id="fp16-full"),
])
def test_fused_gradients_match_autograd_and_two_kernels(monkeypatch, h, hkv, n, nk, causal,
                                                         extra, dtype):
    std = math.sqrt(5) if "softcap" in extra else 1.0
    q, k, v, dout = dense(2 if dtype == F32 else 1, h, hkv, n, nk, 32, dtype, std=std)
    fused, two_kernel, want = both_paths(monkeypatch, q, k, v, dout, causal=causal, **extra)
    assert_close(fused, want, dtype)
    # Same tiles, same order: dK and dV are the two-kernel path's bit for bit; dQ is summed in
    # another order (over key blocks, in fp32, then rounded once).
    assert torch.equal(fused[1], two_kernel[1]) and torch.equal(fused[2], two_kernel[2])
    err = ((fused[0].double() - two_kernel[0].double()).norm() / want[0].norm()).item()
    assert err < (1e-6 if dtype == F32 else 2e-3), f"dq: {err:.2e} from the two-kernel path"


@pytest.mark.parametrize(("lens", "h", "hkv", "extra"), [
    pytest.param((1, 37, 70, 16), 4, 2, {}, id="causal-gqa"),
    pytest.param((45, 1, 33), 4, 2, dict(window=20, softcap=3.0), id="window-softcap"),
])
def test_fused_ragged_gradients_match_autograd(monkeypatch, lens, h, hkv, extra):
    # Packed back to back: an atomic past a sequence's end would land in the next one's rows.
    std = math.sqrt(5) if "softcap" in extra else 1.0
    q, k, v, dout = packed(lens, h, hkv, 32, F32, std=std)
    fused, two_kernel, want = both_paths(monkeypatch, q, k, v, dout, causal=True, lens=lens,
                                         **extra)
    assert_close(fused, want, F32)
    assert torch.equal(fused[1], two_kernel[1]) and torch.equal(fused[2], two_kernel[2])


def test_fused_head_dim_lanes_and_strided_inputs(monkeypatch):
    # Head dim 48 (16 masked lanes of a 64-wide tile) and q a (B, N, H, D) view: the
    # accumulator is q's shape, contiguous, and the result too.
    q, k, v, dout = dense(1, 4, 2, 37, 37, 48, F32)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    fused, _, want = both_paths(monkeypatch, q, k, v, dout, causal=True)
    assert_close(fused, want, F32)
    assert fused[0].is_contiguous()


def spy_on_kernels(monkeypatch) -> dict[str, LaunchSpy]:
    spies = {name: LaunchSpy(getattr(triton_flash_bwd, name)) for name in KERNELS}
    for name, spy in spies.items():
        monkeypatch.setattr(triton_flash_bwd, name, spy)
    return spies


def launched(spies) -> dict[str, list]:
    """Each kernel's launches as (DOT_PRECISION, FUSED_DQ) (the dQ kernel has no FUSED_DQ)."""
    return {name: [(s["DOT_PRECISION"], s.get("FUSED_DQ")) for s in spy.launches]
            for name, spy in spies.items()}


@pytest.mark.parametrize("how", ["default", "config", "env"])
def test_the_flag_and_the_environment_choose_the_fused_kernel(monkeypatch, how):
    spies = spy_on_kernels(monkeypatch)
    monkeypatch.delenv("FLASHBENCH_TRITON_BWD", raising=False)
    q, k, v, dout = dense(1, 2, 2, 20, 20, 32, F32)
    out, lse = torch.zeros_like(q), torch.zeros(1, 2, 20, device=DEVICE)
    config = triton_flash_bwd._config(32, F32, INTERPRET)
    if how == "config":
        config = config._replace(fused_dq=True)
    elif how == "env":
        monkeypatch.setenv("FLASHBENCH_TRITON_BWD", "fused")
    triton_flash_bwd.attention_backward(q, k, v, out, lse, dout, causal=True, scale=0.2,
                                        config=config, fp32_precision="ieee")
    fused = how != "default"
    assert launched(spies) == {"_dkdv_kernel": [("ieee", fused)],
                               "_dq_kernel": [] if fused else [("ieee", None)]}


def test_the_config_flag_defaults_off():
    assert triton_flash_bwd._config(128, torch.bfloat16, False).fused_dq is False
    assert triton_flash_bwd.BackwardConfig(32, 128, 128, 64, 8, 3).fused_dq is False


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hkv", [8, 2])
def test_gpu_fused_gradients_within_twice_sdpa(monkeypatch, hkv, causal):
    monkeypatch.setenv("FLASHBENCH_TRITON_BWD", "fused")
    spies = spy_on_kernels(monkeypatch)
    q, k, v, dout = gradient_inputs(2, 8, hkv, 1024, 128, torch.bfloat16, seed=hkv)
    scale = 1 / math.sqrt(128)
    ref = reference(q, k, v, dout, causal=causal, scale=scale)
    ours = torch.autograd.grad(attention(q, k, v, causal=causal, scale=scale), (q, k, v), dout)
    assert launched(spies)["_dkdv_kernel"] == [("tf32", True)]  # dQ in it: no dQ kernel
    assert not spies["_dq_kernel"].launches
    assert_gradients_within_twice(ours, sdpa_gradients(q, k, v, dout, causal, scale), ref)

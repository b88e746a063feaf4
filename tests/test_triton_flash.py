"""Numerical tests of the Triton FlashAttention forward kernel against a float64 reference."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_inputs import (BF16, DEVICE, DTYPES, F16, F32, INTERPRET, LaunchSpy,
                           assert_matches_reference, make_inputs, reference)

from flashbench.kernels import triton_flash
from flashbench.kernels.triton_flash import SUPPORTED_HEAD_DIMS, attention_forward, unsupported_reason


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float | None = None) -> None:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = attention_forward(q, k, v, causal=causal, scale=scale)
    assert_matches_reference(out, lse, q, k, v, causal=causal, scale=scale)



@pytest.mark.parametrize(
    ("b", "h", "hkv", "n", "nk", "d", "causal", "dtype"),
    [
        pytest.param(2, 2, 2, 37, 53, 64, False, F32, id="odd-lengths"),
        pytest.param(1, 2, 2, 37, 37, 64, True, F32, id="causal-square"),
        pytest.param(1, 2, 2, 20, 70, 64, True, F16, id="causal-fewer-queries"),
        pytest.param(1, 2, 2, 64, 64, 32, True, BF16, id="causal-block-multiple"),
        pytest.param(2, 4, 2, 33, 41, 32, True, BF16, id="gqa-causal"),
        pytest.param(1, 4, 2, 45, 30, 64, False, F32, id="gqa"),
        pytest.param(1, 4, 1, 29, 45, 128, False, F16, id="mqa"),
        pytest.param(1, 4, 1, 26, 61, 64, True, F32, id="mqa-causal"),
        pytest.param(1, 4, 1, 1, 300, 64, False, BF16, id="decode"),
        pytest.param(1, 2, 2, 1, 300, 128, True, F32, id="decode-causal"),
        pytest.param(1, 1, 1, 1, 4000, 32, True, F16, id="decode-long"),
        pytest.param(1, 2, 2, 70, 20, 96, False, F32, id="more-queries-than-keys"),
        pytest.param(1, 2, 1, 17, 1, 64, False, F32, id="single-key"),
    ],
)
def test_matches_reference(b: int, h: int, hkv: int, n: int, nk: int, d: int, causal: bool, dtype: torch.dtype) -> None:
    _check(*make_inputs(b, h, hkv, n, nk, d, dtype), causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", SUPPORTED_HEAD_DIMS)
def test_every_head_dim_and_dtype(head_dim: int, dtype: torch.dtype) -> None:
    _check(*make_inputs(1, 2, 1, 40, 57, head_dim, dtype), causal=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("layout", "dtype"), [("bnhd", BF16), ("bnhd", F32), ("strided_d", F16)])
def test_non_contiguous_inputs(layout: str, dtype: torch.dtype, causal: bool) -> None:
    q, k, v = make_inputs(2, 4, 2, 35, 50, 64, dtype, layout=layout)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    _check(q, k, v, causal=causal)


def _poisoned(shape: tuple[int, int, int, int], gen: torch.Generator, pad: int) -> torch.Tensor:
    b, h, n, d = shape
    buf = torch.full((b, h, n + pad, d + pad), float("nan"), device=DEVICE)
    view = buf[:, :, :n, :d]
    view.copy_(torch.randn(shape, generator=gen))
    return view


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 96])
def test_reads_nothing_outside_the_tensors(head_dim: int, causal: bool) -> None:
    # The interpreter does not trap out-of-bounds accesses, so surround every tensor with NaN: a load
    # past the last key or the last head-dim lane would carry NaN into the output.
    gen = torch.Generator().manual_seed(0)
    q = _poisoned((1, 2, 37, head_dim), gen, pad=40)
    k = _poisoned((1, 1, 53, head_dim), gen, pad=40)
    v = _poisoned((1, 1, 53, head_dim), gen, pad=40)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_scale_is_applied(scale: float) -> None:
    _check(*make_inputs(1, 2, 2, 30, 40, 32, F32), causal=True, scale=scale)


@pytest.mark.parametrize(("block_m", "block_n"), [(128, 64), (64, 32), (64, 16), (16, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_tile_shapes(monkeypatch: pytest.MonkeyPatch, block_m: int, block_n: int, causal: bool) -> None:
    # The tile split into unmasked and masked loops must hold for the GPU tile shapes too, including BLOCK_N > BLOCK_M.
    config = triton_flash.LaunchConfig(block_m=block_m, block_n=block_n, num_warps=4, num_stages=2)
    monkeypatch.setattr(triton_flash, "_launch_config", lambda *_: config)
    _check(*make_inputs(1, 2, 1, 150, 203, 64, F32), causal=causal)


SUPPORTED_SHAPE = dict(heads=8, kv_heads=2, seq_len=100, kv_len=200, head_dim=128, dtype=torch.bfloat16, causal=True)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"head_dim": 80}, "head_dim"),
        ({"head_dim": 512}, "head_dim"),
        ({"dtype": torch.float64}, "dtype"),
        ({"dtype": torch.int8}, "dtype"),
        ({"heads": 6, "kv_heads": 4}, "multiple of kv_heads"),
        ({"seq_len": 201}, "causal"),
        ({"kv_len": 0, "causal": False}, "at least 1"),
    ],
)
def test_unsupported_reason_rejects(override: dict[str, object], needle: str) -> None:
    reason = unsupported_reason(**(SUPPORTED_SHAPE | override))  # type: ignore[arg-type]
    assert reason is not None and needle in reason and "\n" not in reason


@pytest.mark.parametrize(
    "override",
    [
        {},
        {"seq_len": 200},
        {"seq_len": 1, "kv_len": 4000},
        {"seq_len": 300, "causal": False},
        {"kv_heads": 1},
        {"kv_heads": 8},
        *({"head_dim": d} for d in SUPPORTED_HEAD_DIMS),
        *({"dtype": dt} for dt in DTYPES),
    ],
)
def test_unsupported_reason_accepts(override: dict[str, object]) -> None:
    assert unsupported_reason(**(SUPPORTED_SHAPE | override)) is None  # type: ignore[arg-type]


def test_attention_forward_refuses_unsupported_shapes() -> None:
    q, k, v = make_inputs(1, 2, 2, 8, 8, 80, F32)
    with pytest.raises(ValueError, match="head_dim"):
        attention_forward(q, k, v, causal=False, scale=0.1)
    q, k, v = make_inputs(1, 2, 2, 9, 8, 64, F32)
    with pytest.raises(ValueError, match="causal"):
        attention_forward(q, k, v, causal=True, scale=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("kv_len", [1000, 1500])
@pytest.mark.parametrize(("dtype", "out_tol"), [(BF16, 1e-2), (F16, 2e-3)], ids=["bf16", "fp16"])
def test_gpu_large_shapes(dtype: torch.dtype, out_tol: float, kv_len: int, head_dim: int, causal: bool) -> None:
    q, k, v = make_inputs(2, 8, 2, 1000, kv_len, head_dim, dtype, device="cuda")
    scale = 1.0 / math.sqrt(head_dim)
    out, lse = attention_forward(q, k, v, causal=causal, scale=scale)
    ref_out, ref_lse = reference(q, k, v, causal=causal, scale=scale, dtype=torch.float32, device="cuda")
    rel = ((out.float() - ref_out).norm() / ref_out.norm()).item()
    lse_err = (lse - ref_lse).abs().max().item()
    assert rel < out_tol, f"relative output error {rel:.3e} >= {out_tol:.0e}"
    assert lse_err < 1e-3, f"max lse error {lse_err:.3e}"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "head_dim", "hkv"), [(777, 64, 8), (2048, 128, 8), (1500, 128, 2)])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_gpu_error_within_twice_sdpa(dtype: torch.dtype, n: int, head_dim: int, hkv: int,
                                     causal: bool) -> None:
    # The bar: on the same random inputs, at most twice the error of PyTorch's own fused
    # kernel, both against an fp32 reference, with every tuned configuration the kernel may pick.
    q, k, v = make_inputs(2, 8, hkv, n, n, head_dim, dtype, device="cuda", seed=n)
    scale = 1.0 / math.sqrt(head_dim)
    ref, _ = reference(q, k, v, causal=causal, scale=scale, dtype=torch.float32, device="cuda")
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                                            enable_gqa=hkv != 8)
    sdpa_err = ((sdpa.float() - ref).norm() / ref.norm()).item()
    for config in triton_flash.candidate_configs(head_dim, dtype):
        out, _ = attention_forward(q, k, v, causal=causal, scale=scale, config=config)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err <= 2 * sdpa_err, f"{config}: {err:.3e} > 2 x SDPA's {sdpa_err:.3e}"


@pytest.mark.parametrize(("dtype", "setting", "launched"), [
    (F32, "ieee", "ieee"), (F32, "tf32", "tf32"),
    # 16-bit tiles ignore it: one compiled kernel, whatever the setting.
    (BF16, "ieee", "tf32"), (F16, "ieee", "tf32"),
])
def test_fp32_precision_reaches_the_forward_launch(monkeypatch: pytest.MonkeyPatch,
                                                   dtype: torch.dtype, setting: str,
                                                   launched: str) -> None:
    spy = LaunchSpy(triton_flash._attn_fwd_kernel)
    monkeypatch.setattr(triton_flash, "_attn_fwd_kernel", spy)
    q, k, v = make_inputs(1, 2, 1, 20, 20, 32, dtype)
    out, lse = attention_forward(q, k, v, causal=True, scale=0.2, fp32_precision=setting)
    triton_flash.prepare(q, k, v, causal=True, scale=0.2, fp32_precision=setting)()
    assert [launch["DOT_PRECISION"] for launch in spy.launches] == [launched, launched]
    assert_matches_reference(out, lse, q, k, v, causal=True, scale=0.2)


def test_an_unknown_fp32_precision_is_refused_before_any_launch() -> None:
    q, k, v = make_inputs(1, 1, 1, 16, 16, 32, F32)
    with pytest.raises(ValueError, match="fp32_precision 'tf32x3' is not one of"):
        triton_flash.prepare(q, k, v, causal=False, scale=0.2, fp32_precision="tf32x3")


# Compiled for sm_90 on this machine (triton ships ptxas): the setting must change the code,
# tensor-core MMAs for tf32 and none for ieee, which the interpreter cannot show.
_COMPILE = """
import sys
sys.path.insert(0, {scripts!r})
import inspect_kernel as ik
for precision in ("tf32", "ieee"):
    ptx = ik.compile_config(ik.tf.LaunchConfig(64, 32, 4, 2), 64, "fp32", True, precision).asm["ptx"]
    print(precision, ptx.count("wgmma.mma_async"), ptx.count("fma.rn.f32"))
"""


@pytest.mark.skipif(not INTERPRET, reason="the GPU tests run the kernels themselves")
def test_fp32_precision_compiles_to_tensor_cores_or_fmas_for_sm90() -> None:
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE.format(scripts=str(scripts))],
                          capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0 and "ptxas" in done.stderr:
        pytest.skip(f"cannot compile for sm_90 here: {done.stderr.splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = {p: (int(mma), int(fma)) for p, mma, fma in
              (line.split() for line in done.stdout.splitlines())}
    assert counts["tf32"][0] > 0, counts  # wgmma on TF32 operands
    assert counts["ieee"][0] == 0 and counts["ieee"][1] > 1000, counts  # every product an FMA


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_fp32_ieee_is_as_accurate_as_sdpa_math(head_dim: int, causal: bool) -> None:
    # fp32_precision="ieee": every tuned configuration within twice (plus 1e-6) the error of
    # SDPA's math backend in IEEE fp32, against a float64 reference; "tf32" is far above it.
    q, k, v = make_inputs(2, 8, 2, 1000, 1000, head_dim, F32, device="cuda", seed=head_dim)
    scale = 1.0 / math.sqrt(head_dim)
    ref, _ = reference(q, k, v, causal=causal, scale=scale, dtype=torch.float64, device="cuda")
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        math_out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
    math_err = ((math_out.double() - ref).norm() / ref.norm()).item()
    for config in triton_flash.candidate_configs(head_dim, F32, "ieee"):
        out, _ = attention_forward(q, k, v, causal=causal, scale=scale, config=config,
                                   fp32_precision="ieee")
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err <= 2 * math_err + 1e-6, f"{config}: {err:.3e} vs SDPA math {math_err:.3e}"
    tf32, _ = attention_forward(q, k, v, causal=causal, scale=scale, fp32_precision="tf32")
    assert ((tf32.double() - ref).norm() / ref.norm()).item() > 10 * max(err, 1e-7)

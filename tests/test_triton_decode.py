"""Numerical tests of the Triton split-KV decode kernel against a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from kernel_inputs import (BF16, DEVICE, DTYPES, F16, F32, INTERPRET, LaunchSpy,
                           assert_matches_reference, make_inputs, reference)

from flashbench.kernels import triton_decode, triton_flash
from flashbench.kernels.triton_decode import (MIN_SPLIT_KEYS, choose_num_splits, decode_forward,
                                              is_decode_shape, unsupported_reason)

def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
           num_splits: int | None = None, scale: float | None = None) -> None:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = decode_forward(q, k, v, causal=causal, scale=scale, num_splits=num_splits)
    assert_matches_reference(out, lse, q, k, v, causal=causal, scale=scale)


@pytest.mark.parametrize(
    ("b", "h", "hkv", "n", "nk", "d", "causal", "dtype", "splits"),
    [
        pytest.param(1, 8, 2, 1, 1000, 64, False, BF16, None, id="gqa-decode"),
        pytest.param(1, 8, 2, 1, 1000, 128, True, F32, 3, id="gqa-decode-causal-3-splits"),
        pytest.param(1, 8, 2, 4, 1000, 64, True, F16, 3, id="gqa-spec4-causal"),
        pytest.param(2, 8, 2, 4, 333, 64, False, F32, 1, id="gqa-spec4-1-split"),
        pytest.param(1, 8, 2, 16, 333, 64, True, BF16, 3, id="gqa-spec16-causal-128-rows"),
        pytest.param(1, 4, 1, 1, 333, 128, True, F16, 3, id="mqa-decode"),
        pytest.param(1, 4, 1, 16, 1000, 64, True, F32, 3, id="mqa-spec16-causal"),
        pytest.param(1, 4, 1, 4, 1000, 64, False, BF16, None, id="mqa-spec4"),
        pytest.param(2, 2, 2, 1, 333, 128, False, F32, 3, id="mha-decode"),
        pytest.param(1, 2, 2, 16, 1000, 64, True, F16, 3, id="mha-spec16-causal"),
        pytest.param(1, 2, 2, 16, 1000, 64, False, F32, 1, id="mha-spec16-1-split"),
        pytest.param(1, 4, 2, 1, 4097, 64, False, BF16, None, id="long-chosen-splits"),
        pytest.param(1, 2, 1, 16, 4097, 64, True, F32, None, id="long-spec16-causal"),
    ],
)
def test_matchesreference(b: int, h: int, hkv: int, n: int, nk: int, d: int, causal: bool,
                           dtype: torch.dtype, splits: int | None) -> None:
    _check(*make_inputs(b, h, hkv, n, nk, d, dtype), causal=causal, num_splits=splits)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("splits", [64, 1000])
def test_more_splits_than_key_tiles(splits: int, causal: bool) -> None:
    # 1025 keys: the last tile holds one key, which under the causal mask the first 15 query
    # positions do not see, so their split is empty and must weigh nothing in the combine.
    _check(*make_inputs(1, 4, 2, 16, 1025, 64, F32), causal=causal, num_splits=splits)


def test_split_count_does_not_change_the_result() -> None:
    q, k, v = make_inputs(1, 4, 1, 4, 700, 64, F32)
    outs = [decode_forward(q, k, v, causal=True, scale=0.125, num_splits=s) for s in (1, 2, 7)]
    for out, lse in outs[1:]:
        torch.testing.assert_close(out, outs[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse, outs[0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("head_dim", "dtype"), [
    (d, dt) for d in (32, 64, 96, 128, 256) for dt in DTYPES if not (d == 256 and dt == F32)])
def test_every_head_dim_and_dtype(head_dim: int, dtype: torch.dtype) -> None:
    _check(*make_inputs(1, 4, 2, 2, 300, head_dim, dtype), causal=True, num_splits=2)


@pytest.mark.parametrize(("layout", "n", "dtype"),
                         [("bnhd", 1, BF16), ("bnhd", 4, F32), ("strided_d", 4, F16)])
def test_non_contiguousmake_inputs(layout: str, n: int, dtype: torch.dtype) -> None:
    # bnhd at one query merges heads and queries as a view; at four, q is copied.
    q, k, v = make_inputs(1, 4, 2, n, 300, 64, dtype, layout=layout)
    assert not (k.is_contiguous() or v.is_contiguous())
    _check(q, k, v, causal=True, num_splits=3)


def _poisoned(shape: tuple[int, int, int, int], gen: torch.Generator, pad: int) -> torch.Tensor:
    b, h, n, d = shape
    buf = torch.full((b, h, n + pad, d + pad), float("nan"), device=DEVICE)
    view = buf[:, :, :n, :d]
    view.copy_(torch.randn(shape, generator=gen))
    return view


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "head_dim"), [(1, 64), (4, 96)])
def test_reads_nothing_outside_the_tensors(n: int, head_dim: int, causal: bool) -> None:
    # The interpreter does not trap out-of-bounds accesses, so surround every tensor with NaN:
    # a load past the last key, query or head-dim lane would carry NaN into the output. At one
    # query q's heads are read in place, NaN rows between them.
    gen = torch.Generator().manual_seed(0)
    q = _poisoned((1, 4, n, head_dim), gen, pad=40)
    k = _poisoned((1, 2, 300, head_dim), gen, pad=40)
    v = _poisoned((1, 2, 300, head_dim), gen, pad=40)
    _check(q, k, v, causal=causal, num_splits=3)


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_scale_is_applied(scale: float) -> None:
    _check(*make_inputs(1, 4, 2, 4, 300, 32, F32), causal=True, scale=scale, num_splits=2)


@pytest.mark.parametrize("causal", [False, True])
def test_gpu_key_tile(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    # The GPU's 64-key tiles change where splits and the causal tail fall.
    monkeypatch.setattr(triton_decode, "_launch_config", lambda *_: (64, 4, 4))
    _check(*make_inputs(1, 8, 2, 4, 1000, 64, F32), causal=causal, num_splits=3)


def test_choose_num_splits() -> None:
    # Batch 1 with a long cache: enough programs to fill the GPU, each split still long.
    many = choose_num_splits(batch=1, kv_heads=8, kv_len=131072, sm_count=132)
    assert many * 8 >= 2 * 132 and 131072 // many >= MIN_SPLIT_KEYS
    assert choose_num_splits(batch=1, kv_heads=8, kv_len=131072, sm_count=16) < many
    # Batch 64 already has 512 programs.
    assert choose_num_splits(batch=64, kv_heads=8, kv_len=8192, sm_count=132) <= 2
    assert choose_num_splits(batch=64, kv_heads=32, kv_len=8192, sm_count=132) == 1
    # A short cache is not split.
    for kv_len in (1, 256, 1000):
        assert choose_num_splits(batch=1, kv_heads=1, kv_len=kv_len, sm_count=132) == 1
    for batch in (1, 4, 16, 64):
        for kv_heads in (1, 8, 32):
            for kv_len in (1000, 4097, 32768, 131072):
                s = choose_num_splits(batch, kv_heads, kv_len, 132)
                assert s >= 1 and (s == 1 or kv_len // s >= MIN_SPLIT_KEYS)


@pytest.mark.parametrize(
    ("seq_len", "kv_len", "heads", "kv_heads", "expected"),
    [
        (1, 4096, 32, 8, True),
        (4, 8192, 32, 8, True),
        (16, 8192, 32, 8, True),  # 8 * 16 = 128 stacked rows: the limit
        (16, 8192, 36, 4, False),  # 9 * 16 rows
        (1, 4096, 32, 32, True),  # MHA
        (1, 4096, 128, 1, True),  # MQA, 128 rows
        (2, 4096, 128, 1, False),
        (17, 8192, 8, 8, False),  # a prefill
        (1, 255, 32, 8, False),  # too short to split
        (1, 256, 32, 8, True),
    ],
)
def test_is_decode_shape(seq_len: int, kv_len: int, heads: int, kv_heads: int,
                         expected: bool) -> None:
    assert is_decode_shape(seq_len, kv_len, heads, kv_heads) is expected


SUPPORTED_SHAPE = dict(heads=32, kv_heads=8, seq_len=4, kv_len=8192, head_dim=128,
                       dtype=torch.bfloat16, causal=True)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"head_dim": 80}, "head_dim"),
        ({"dtype": torch.float64}, "dtype"),
        ({"heads": 6, "kv_heads": 4}, "multiple of kv_heads"),
        ({"seq_len": 8, "kv_len": 4}, "causal"),
        ({"kv_len": 0, "causal": False}, "at least 1"),
        ({"seq_len": 33}, "128-row tile"),
        ({"head_dim": 256, "dtype": torch.float32}, "float32"),
    ],
)
def test_unsupported_reason_rejects(override: dict[str, object], needle: str) -> None:
    reason = unsupported_reason(**(SUPPORTED_SHAPE | override))  # type: ignore[arg-type]
    assert reason is not None and needle in reason and "\n" not in reason


@pytest.mark.parametrize(
    "override",
    [{}, {"seq_len": 16}, {"seq_len": 1, "kv_len": 1}, {"kv_heads": 32},
     {"kv_heads": 1, "seq_len": 4}, {"head_dim": 256}, {"dtype": torch.float32}],
)
def test_unsupported_reason_accepts(override: dict[str, object]) -> None:
    assert unsupported_reason(**(SUPPORTED_SHAPE | override)) is None  # type: ignore[arg-type]


def test_decode_forward_refuses_bad_arguments() -> None:
    q, k, v = make_inputs(1, 2, 1, 80, 100, 64, F32)
    with pytest.raises(ValueError, match="128-row tile"):
        decode_forward(q, k, v, causal=False, scale=0.1)
    q, k, v = make_inputs(1, 2, 1, 1, 100, 64, F32)
    with pytest.raises(ValueError, match="num_splits"):
        decode_forward(q, k, v, causal=False, scale=0.1, num_splits=0)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("b", "n", "nk"), [(1, 1, 32768), (16, 4, 8192)])
@pytest.mark.parametrize(("dtype", "out_tol"), [(BF16, 1e-2), (F16, 2e-3)], ids=["bf16", "fp16"])
def test_gpu_error_within_twice_sdpa(dtype: torch.dtype, out_tol: float, b: int, n: int, nk: int,
                                     causal: bool) -> None:
    # Against an fp32 reference on the same inputs: within the dtype's tolerance, and at most
    # twice the error of PyTorch's own kernel.
    q, k, v = make_inputs(b, 32, 8, n, nk, 128, dtype, device="cuda", seed=nk)
    scale = 1.0 / math.sqrt(128)
    ref, ref_lse = reference(q, k, v, causal=causal, scale=scale, dtype=torch.float32,
                              device="cuda")
    out, lse = decode_forward(q, k, v, causal=causal, scale=scale)
    # SDPA's is_causal aligns the diagonal top-left; this kernel's mask is bottom-right.
    visible = (torch.ones(n, nk, dtype=torch.bool, device="cuda").tril(diagonal=nk - n)
               if causal else None)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                                            scale=scale, enable_gqa=True)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    sdpa_err = ((sdpa.float() - ref).norm() / ref.norm()).item()
    assert err < out_tol, f"relative output error {err:.3e} >= {out_tol:.0e}"
    assert err <= 2 * sdpa_err, f"{err:.3e} > 2 x SDPA's {sdpa_err:.3e}"
    assert (lse - ref_lse).abs().max().item() < 1e-3


@pytest.mark.parametrize(("dtype", "setting", "launched"), [(F32, "ieee", "ieee"),
                                                            (F32, "tf32", "tf32"),
                                                            (BF16, "ieee", "tf32")])
def test_fp32_precision_reaches_the_split_kernel(monkeypatch: pytest.MonkeyPatch,
                                                 dtype: torch.dtype, setting: str,
                                                 launched: str) -> None:
    spy = LaunchSpy(triton_decode._split_kv_kernel)
    monkeypatch.setattr(triton_decode, "_split_kv_kernel", spy)
    q, k, v = make_inputs(1, 2, 1, 1, 300, 32, dtype)
    # Through prepare, as a sweep runs it: a decode shape takes this kernel.
    out = triton_flash.prepare(q, k, v, causal=False, scale=0.2, fp32_precision=setting)()
    assert [launch["DOT_PRECISION"] for launch in spy.launches] == [launched]
    ref, _ = reference(q, k, v, causal=False, scale=0.2)
    assert ((out.cpu().double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize(("b", "n", "nk"), [(1, 1, 32768), (16, 4, 8192)])
def test_gpu_fp32_ieee_is_as_accurate_as_sdpa_math(b: int, n: int, nk: int) -> None:
    q, k, v = make_inputs(b, 32, 8, n, nk, 128, F32, device="cuda", seed=nk)
    scale = 1.0 / math.sqrt(128)
    ref, _ = reference(q, k, v, causal=False, scale=scale, dtype=torch.float64, device="cuda")
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        math_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale,
                                                                    enable_gqa=True)
    math_err = ((math_out.double() - ref).norm() / ref.norm()).item()
    out, _ = decode_forward(q, k, v, causal=False, scale=scale, fp32_precision="ieee")
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err <= 2 * math_err + 1e-6, f"{err:.3e} vs SDPA math {math_err:.3e}"

"""Numerical tests of the Triton split-KV decode kernel against a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from kernel_inputs import (BF16, DEVICE, DTYPES, F16, F32, INTERPRET, LaunchSpy,
                           assert_matches_reference, make_inputs, reference,
                           reference_and_sdpa_error, relative_error)

from flashbench.kernels import triton_decode, triton_flash
from flashbench.kernels.triton_decode import (MIN_SPLIT_KEYS, DecodeConfig, choose_num_splits,
                                              decode_candidates, decode_forward,
                                              is_decode_shape, unsupported_reason)
from flashbench.kernels.triton_decode_configs import SPLIT_SCALES, tuning_key


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
           num_splits: int | None = None, scale: float | None = None,
           fused_combine: bool = True) -> None:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out, lse = decode_forward(q, k, v, causal=causal, scale=scale, num_splits=num_splits,
                              fused_combine=fused_combine)
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


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launch"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("splits", [64, 1000])
def test_more_splits_than_key_tiles(splits: int, causal: bool, fused: bool) -> None:
    # 1025 keys: the last tile holds one key, which under the causal mask the first 15 query
    # positions do not see, so their split is empty and must weigh nothing in the combine.
    _check(*make_inputs(1, 4, 2, 16, 1025, 64, F32), causal=causal, num_splits=splits,
           fused_combine=fused)


@pytest.mark.parametrize(("b", "h", "hkv", "n", "causal", "splits"), [
    (2, 8, 2, 1, False, 2), (1, 8, 2, 4, True, 3), (1, 4, 1, 16, True, 5),
    (2, 2, 2, 1, True, 64), (1, 2, 2, 16, False, 3)],
    ids=["gqa-decode-2", "gqa-spec4-causal-3", "mqa-spec16-causal-5", "mha-decode-causal-64",
         "mha-spec16-3"])
def test_fused_and_two_launch_combines_agree(monkeypatch: pytest.MonkeyPatch, b: int, h: int,
                                             hkv: int, n: int, causal: bool,
                                             splits: int) -> None:
    # One launch: the split kernel combines (FUSED) and the combine kernel never runs.
    combines = LaunchSpy(triton_decode._combine_kernel)
    monkeypatch.setattr(triton_decode, "_combine_kernel", combines)
    q, k, v = make_inputs(b, h, hkv, n, 333, 64, F32)
    fused = decode_forward(q, k, v, causal=causal, scale=0.125, num_splits=splits)
    assert combines.launches == []
    two = decode_forward(q, k, v, causal=causal, scale=0.125, num_splits=splits,
                         fused_combine=False)
    assert len(combines.launches) == 1
    # The same partials, summed in other groupings: equal to fp32 rounding.
    torch.testing.assert_close(fused[0], two[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused[1], two[1], rtol=1e-6, atol=1e-6)
    assert_matches_reference(*fused, q, k, v, causal=causal, scale=0.125)


def test_fused_combine_leaves_its_counters_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = LaunchSpy(triton_decode._split_kv_kernel)
    monkeypatch.setattr(triton_decode, "_split_kv_kernel", spy)
    monkeypatch.setattr(triton_decode, "_COUNTERS", {})
    q, k, v = make_inputs(3, 4, 2, 1, 300, 32, F32)
    first = decode_forward(q, k, v, causal=False, scale=0.2, num_splits=3)
    (counters,) = triton_decode._COUNTERS.values()
    assert counters.numel() >= 3 * 2 and not counters.any()
    # A second call reuses them: had they not been reset, no split would find itself last.
    second = decode_forward(q, k, v, causal=False, scale=0.2, num_splits=3)
    assert [launch["FUSED"] for launch in spy.launches] == [True, True]
    assert spy.launches[1]["Counters"] is counters and not counters.any()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert_matches_reference(*second, q, k, v, causal=False, scale=0.2)
    # One split stores its result directly: no counters, nothing to combine.
    decode_forward(q, k, v, causal=False, scale=0.2, num_splits=1)
    assert not spy.launches[2]["FUSED"] and spy.launches[2]["Counters"] is None


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-launch"])
def test_split_count_does_not_change_the_result(fused: bool) -> None:
    q, k, v = make_inputs(1, 4, 1, 4, 700, 64, F32)
    outs = [decode_forward(q, k, v, causal=True, scale=0.125, num_splits=s, fused_combine=fused)
            for s in (1, 2, 7)]
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


def test_choose_num_splits_scales_within_its_bounds() -> None:
    # Batch 1, 8 KV heads: 66 splits wanted, 64 at most at 32768 keys, 2 at 1024.
    assert [choose_num_splits(1, 8, 32768, 132, s) for s in (0.5, 1.0, 2.0)] == [32, 64, 64]
    assert [choose_num_splits(1, 8, 1024, 132, s) for s in (0.5, 1.0, 2.0)] == [1, 2, 2]
    assert [choose_num_splits(16, 8, 8192, 132, s) for s in (0.5, 1.0, 2.0)] == [3, 5, 10]


@pytest.mark.parametrize(("b", "h", "hkv", "n", "nk", "d", "dtype", "page", "window", "count"), [
    (1, 32, 8, 1, 1024, 128, BF16, None, None, 4),  # 1 or 2 splits, 64- or 128-key tiles
    (1, 32, 8, 1, 32768, 128, BF16, None, None, 4),  # 32 or 64 splits
    (16, 32, 8, 1, 8192, 128, BF16, None, None, 6),
    (16, 32, 8, 16, 8192, 128, BF16, None, None, 3),  # 64 rows: 64-key tiles only
    (1, 32, 8, 1, 32768, 128, BF16, 16, None, 4), (1, 32, 8, 1, 32768, 128, BF16, 256, None, 4),
    (1, 32, 8, 1, 32768, 128, BF16, 64, None, 4),  # 128 keys shrink to the page: 6 stages
    (1, 32, 8, 1, 32768, 128, BF16, None, 4096, 4),  # 4 or 8 splits of the window
    (1, 8, 8, 1, 4096, 256, BF16, None, None, 2), (1, 8, 2, 1, 4096, 128, F32, None, None, 2),
    (1, 8, 2, 1, 4096, 32, F16, None, None, 2)])
def test_tuning_candidates_are_valid_distinct_launches(b, h, hkv, n, nk, d, dtype, page,
                                                       window, count) -> None:
    q = torch.empty(b, h, n, d, dtype=dtype)
    candidates = decode_candidates(q, hkv, nk, page, window)
    block_m = max(16, h // hkv * n)
    assert len(candidates) == count <= 6
    assert candidates[0] == triton_decode.default_config(d, dtype, block_m, page is not None,
                                                         False)
    plans = [triton_decode._plan(q, hkv, nk, page, window, None, c, False) for c in candidates]
    assert len(set(plans)) == len(plans)
    read = nk if window is None else n + window
    for config, plan in zip(candidates, plans):
        assert isinstance(config, DecodeConfig) and config.split_scale in SPLIT_SCALES
        assert 1 <= plan.num_splits <= max(1, read // MIN_SPLIT_KEYS)
        assert plan.split_len % plan.block_n == 0 and plan.num_splits * plan.split_len >= read
        assert plan.num_stages >= 1 and plan.block_n in (32, 64, 128)
        # 128-key tiles only where they compile without spills (triton_decode_configs).
        assert plan.block_n != 128 or block_m == 16 or d <= 32


def test_decode_tuning_key_names_the_shape_class() -> None:
    key = tuning_key("H200", 128, BF16, "tf32", rows=4, programs=8, kv_len=32768)
    assert key == (f"triton_decode.fwd|H200|triton {__import__('triton').__version__}|D128|"
                   "bfloat16|rows16|BH8|Nk32768")
    assert tuning_key("H200", 128, BF16, "tf32", rows=16, programs=7, kv_len=30000) == key
    assert tuning_key("H200", 128, BF16, "tf32", rows=4, programs=8, kv_len=4097, window=4096,
                      softcap=50.0, seqlens=True, page_size=16, gather=True) == (
        key.replace("Nk32768", "Nk8192") + "|W4096|softcap|seqlens|page16|gather")
    assert tuning_key("H200", 64, F32, "ieee", rows=1, programs=1, kv_len=300).endswith("|ieee")


def test_prepare_does_not_tune_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    from flashbench.measure import tuning

    def refuse(*_args, **_kwargs):
        raise AssertionError("tuned without a GPU")

    monkeypatch.setattr(tuning, "tune", refuse)
    q, k, v = make_inputs(1, 4, 2, 1, 600, 32, F32)
    assert triton_decode.tuned_config(q, k, v, causal=False, scale=0.2) == (None, 0.0)
    out = triton_flash.prepare(q, k, v, causal=False, scale=0.2)()
    ref, _ = reference(q, k, v, causal=False, scale=0.2)
    assert relative_error(out.cpu(), ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
@pytest.mark.parametrize(("b", "nk"), [(1, 1024), (1, 32768), (16, 8192)])
def test_gpu_every_tuning_candidate_within_twice_sdpa(b: int, nk: int) -> None:
    # What the tuner may pick, combined in one launch or two: all as accurate as SDPA's kernel.
    q, k, v = make_inputs(b, 32, 8, 1, nk, 128, BF16, device="cuda", seed=nk)
    scale = 1.0 / math.sqrt(128)
    ref, _, sdpa_err = reference_and_sdpa_error(q, k, v, causal=False, scale=scale)
    for config in decode_candidates(q, 8, nk, None, None):
        for fused in (True, False):
            out, _ = decode_forward(q, k, v, causal=False, scale=scale, config=config,
                                    fused_combine=fused)
            err = relative_error(out, ref)
            assert err <= 2 * sdpa_err, f"{config}, fused {fused}: {err:.3e} vs {sdpa_err:.3e}"


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="checks the compiled kernel, not the interpreter")
def test_gpu_fused_combine_reads_this_launchs_partials() -> None:
    # Calls queued back to back on two inputs in turn, so that the partials' buffer holds the
    # other input's partials from the call before: a last split that read a partial before
    # its store was visible (an ordering bug) would give a result off its input's, which is
    # otherwise bit for bit the same every call (the combine's order is fixed).
    _, k, v = make_inputs(1, 32, 8, 1, 32768, 128, BF16, device="cuda")
    qs = [make_inputs(1, 32, 8, 1, 1, 128, BF16, device="cuda", seed=s)[0] for s in (1, 2)]
    outs = [decode_forward(qs[i % 2], k, v, causal=False, scale=0.1)[0] for i in range(400)]
    for i, out in enumerate(outs):
        assert torch.equal(out, outs[i % 2]), f"call {i} differs"


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
    ref, ref_lse, sdpa_err = reference_and_sdpa_error(q, k, v, causal=causal, scale=scale)
    out, lse = decode_forward(q, k, v, causal=causal, scale=scale)
    err = relative_error(out, ref)
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
